"""The running service: the process model (gunicorn master, workers, the writer process: ``process``) and the
composition root that builds each process's object graph (``wiring``).

It may import everything but ``service.cli``.
"""
