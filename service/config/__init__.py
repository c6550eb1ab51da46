"""Settings: every option (``settings``), read from flags and the environment once, and the TLS material they
name (``tls``).

It may import ``service.domain``.
"""
