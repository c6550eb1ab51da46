"""What operators watch: the Prometheus metrics (``catalog`` lists them, ``metrics`` records them) and the log
lines' format (``logs``).

It may import ``service.domain``.
"""
