"""routee-callbacks: Routee's Viber delivery-status callbacks, stored and served over gRPC.

Its packages, top to bottom (each imports only those below it; ``make lint`` checks it): ``cli``, ``runtime``,
then ``api`` and ``reconcile`` beside ``http_ingress``, then ``log``, ``store``, ``routee``, ``config`` and
``monitoring``, and ``domain``.
"""
