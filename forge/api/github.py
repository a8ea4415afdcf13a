"""``/api/v1/github/...``: the GitHub App ``forge github connect`` creates (admin only).

- ``POST /api/v1/github/connect`` ``{"code"}`` → 201 ``{"appId","slug","htmlUrl","owner"}``: the
  server exchanges the manifest flow's code with GitHub (``FORGE_GITHUB_API_URL``) and stores the
  App's key and webhook secret sealed (``forge.github.connect``). Restart the controllers and the
  API to act as the App.
- ``GET /api/v1/github/app`` → the same public fields; 404 before a connect.
"""

from __future__ import annotations

import logging

import falcon

from forge.api.body import read_object, send
from forge.api.context import ApiContext
from forge.errors import Invalid, NotFound
from forge.github.auth import stored_app
from forge.github.connect import exchange_code, public_view, store_app

log = logging.getLogger(__name__)


class GithubConnectResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_object(req)
        code = body.get("code")
        if not isinstance(code, str) or set(body) - {"code"}:
            raise Invalid('body must be {"code": ...}', [{"path": "code", "message": "a string is required"}])
        made = exchange_code(self.ctx.config.github_api_url, code, self.ctx.clock)
        app = store_app(self.ctx.store, self.ctx.sealer.keyring.encrypt, made)
        log.info("connected GitHub App %s (id %s)", app.spec.slug, app.spec.app_id)
        resp.status = falcon.HTTP_201
        send(resp, public_view(app))


class GithubAppResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        app = stored_app(self.ctx.store)
        if app is None:
            raise NotFound("no GitHub App is connected (forge github connect)")
        send(resp, public_view(app))
