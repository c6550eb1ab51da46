"""The log in motion: bodies validated and kept (``ingest``, ``batch_writer``), the writer process and its
workers' side of the socket (``writer``, ``remote``, ``ipc``), and every committed entry followed in order
(``tail``, ``local``). It speaks ``Entry``; what a stream item looks like is the API's business.

It may import ``service.store``, ``service.routee``, ``service.config``, ``service.monitoring`` and
``service.domain``.
"""
