"""The ingress baseline: a Falcon POST endpoint that does nothing, for gunicorn's default sync worker."""

import falcon


class Nothing:
    """Reads the body and answers 200."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.bounded_stream.read()
        resp.media = {"status": "accepted"}


app = falcon.App()
app.add_route("/v1/callbacks/viber", Nothing())
