"""The web dashboard: static files from ``forge/ui`` (plain HTML/JS, no build step).

Served without auth — the page holds no data; it signs in with the admin token and every
API call it makes carries that token. Only the files listed here are served.
"""

from __future__ import annotations

from importlib import resources

import falcon

FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class UiResource:
    auth = False

    def __init__(self) -> None:
        root = resources.files("forge") / "ui"
        self.files = {name: (root / name).read_bytes() for name in FILES}

    def on_get(self, req: falcon.Request, resp: falcon.Response, filename: str = "index.html") -> None:
        if filename not in self.files:
            raise falcon.HTTPNotFound()
        resp.data = self.files[filename]
        resp.content_type = FILES[filename]
        for k, v in SECURITY_HEADERS.items():
            resp.set_header(k, v)

    def on_get_index(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.on_get(req, resp)
