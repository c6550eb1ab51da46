"""HTTP ingress of routee-callbacks: the Falcon app that receives Routee's callbacks (``app``, ``resources``),
who may send them (``allowlist``), how connections are held (``connections``), readiness, the OpenAPI
document, and the one place errors become HTTP statuses (``errors``).

It may import ``service.log`` (the ``Ingest`` it hands bodies to) and everything below it; never the API or
reconciliation, its siblings.
"""
