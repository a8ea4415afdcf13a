"""The web dashboard: static files from ``forge/ui`` (plain HTML/JS, no build step).

Served without auth — the page holds no data; it signs in with the admin token (typed, or
traded once for the code of the sign-in link ``forge up`` prints: ``forge.signin``) and every
API call it makes carries that token. Only the files listed here are served (the vendored chart
library when ``make setup`` installed it).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import falcon
from pydantic import Field, ValidationError

from forge import signin
from forge.api.body import read_object, send
from forge.api.context import ApiContext
from forge.errors import Invalid, Unauthorized, pydantic_errors
from forge.models import Model

FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The chart library ``make setup`` vendors from npm (uplot) into ``forge/ui/vendor`` (gitignored):
# served when it is there; without it the page says why it shows no graphs.
VENDOR = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class SignInRequest(Model):
    code: str = Field(min_length=1, max_length=200)


class SignInResource:
    """``POST /api/v1/ui/signin {"code"}`` → ``{"token"}``: a one-time link's code for the admin token."""

    auth = False

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            body = SignInRequest.model_validate(read_object(req))
        except ValidationError as exc:
            raise Invalid.from_errors(pydantic_errors(exc)) from None
        if not self.ctx.config.admin_token:
            raise Unauthorized("this API has no admin token to sign in with")
        signin.redeem(Path(self.ctx.config.data_dir), body.code, self.ctx.clock)
        send(resp, {"token": self.ctx.config.admin_token}, 200)


class UiResource:
    auth = False

    def __init__(self) -> None:
        root = resources.files("forge") / "ui"
        self.files = {name: ((root / name).read_bytes(), ctype) for name, ctype in FILES.items()}
        for name, ctype in VENDOR.items():
            path = root / "vendor" / name
            if path.is_file():
                self.files[name] = (path.read_bytes(), ctype)

    def on_get(self, req: falcon.Request, resp: falcon.Response, filename: str = "index.html") -> None:
        if filename not in self.files:
            raise falcon.HTTPNotFound()
        resp.data, resp.content_type = self.files[filename]
        for k, v in SECURITY_HEADERS.items():
            resp.set_header(k, v)

    def on_get_index(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.on_get(req, resp)
