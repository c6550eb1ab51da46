"""What operators watch: the Prometheus metrics (``metrics``) and the log lines' format (``logs``).

It may import ``service.domain``.
"""
