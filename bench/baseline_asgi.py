"""The ceiling of the service's stack: a Falcon ASGI POST that reads the body and answers 200, on the same
gunicorn + uvicorn worker class the service uses (uvloop, httptools). Nothing the service does is here."""

from typing import Any, ClassVar

import falcon.asgi
from uvicorn_worker import UvicornWorker


class Nothing:
    """Reads the body and answers 200."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await req.stream.read()
        resp.media = {"status": "accepted"}


class Worker(UvicornWorker):  # type: ignore[misc]
    """The service's event loop and HTTP parser."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "uvloop", "http": "httptools", "lifespan": "off"}


app = falcon.asgi.App()
app.add_route("/v1/callbacks/viber", Nothing())
