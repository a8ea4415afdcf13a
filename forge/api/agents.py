"""Routes for node agents and secrets housekeeping.

- ``POST /api/v1/nodes/{name}/token`` (admin): mint a node token, returned once.
- ``GET /api/v1/instances/{name}/secrets`` (that instance's node, or admin): the only place a
  secret value leaves the server, decrypted from the Secret named by ``spec.secret``.
- ``GET /api/v1/instances/{name}/gitcredential`` (that instance's node, or admin): the token of
  the RepoCredential that applies to the Instance's ``spec.repo`` (``owner/repo`` over
  ``owner``), for the agent's fetch; else, with a GitHub App, an installation token for the
  repository; 404 when none applies.
- ``POST /api/v1/instances/{name}/logs`` (that instance's node, or admin): ship log lines.
- ``POST /api/v1/secrets/rotate-key`` (admin): re-encrypt every sealed value.
"""

from __future__ import annotations

import logging
from typing import Literal

import falcon
from pydantic import Field, ValidationError

from forge.api import auth
from forge.api.body import read_object, send
from forge.api.context import ApiContext
from forge.errors import Invalid, NotFound, Unavailable, pydantic_errors
from forge.events import EventRecorder
from forge.gitauth import USERNAME, open_token, select_credential
from forge.github.client import GithubError
from forge.models import App, Instance, Model, Node, RepoCredential, Secret, is_dns_name

log = logging.getLogger(__name__)


class LogEntry(Model):
    offset: int = Field(ge=0)
    time: str = Field(min_length=1, max_length=64)
    line: str = Field(max_length=65536)


class LogBatch(Model):
    source: Literal["build", "app"]
    entries: list[LogEntry] = Field(max_length=10000)


def load_instance(ctx: ApiContext, req: falcon.Request, name: str, what: str) -> Instance:
    p = auth.principal(req)
    inst = ctx.store.get(Instance, name)
    if not p.admin and not auth.instance_on_node(inst, p.node or ""):
        raise auth.forbid(p, f"{what} of Instance {name} (it is not bound to this node)")
    return inst


class NodeTokenResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        if not is_dns_name(name):
            raise Invalid(
                f"{name!r} is not a valid node name", [{"path": "name", "message": "not a DNS name"}]
            )
        token = auth.mint_node_token(self.ctx.store, name)
        log.info("minted a node token for %s", name)
        resp.set_header("Cache-Control", "no-store")
        send(resp, {"token": token}, 201)


class InstanceSecretsResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        inst = load_instance(self.ctx, req, name, "read secrets")
        env: dict[str, str] = {}
        if inst.spec.secret:
            secret = self.ctx.store.get(Secret, inst.spec.secret)
            env = self.ctx.sealer.open_values("Secret", secret.name, secret.spec.data)
        resp.set_header("Cache-Control", "no-store")
        send(resp, {"env": env})


class AgentEventRequest(Model):
    type: Literal["Normal", "Warning"]
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]{0,63}$")
    message: str = Field(max_length=1024)


class AgentEventResource:
    """``POST /api/v1/{instances,nodes}/NAME/events``: what an agent saw happen (a restart, an
    OOM kill, a health-check restart, an orphan swept) recorded as an Event on that record —
    merged, counted and rate-limited like the controllers' own. Only for the node that runs it."""

    def __init__(self, ctx: ApiContext, kind: Literal["Instance", "Node"]) -> None:
        self.ctx, self.kind = ctx, kind

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        p = auth.principal(req)
        obj: Instance | Node
        if self.kind == "Instance":
            obj = load_instance(self.ctx, req, name, "record an Event")
        else:
            if not p.admin and p.node != name:
                raise auth.forbid(p, f"record an Event on Node {name}")
            obj = self.ctx.store.get(Node, name)
        try:
            body = AgentEventRequest.model_validate(read_object(req))
        except ValidationError as exc:
            raise Invalid.from_errors(pydantic_errors(exc)) from None
        source = f"agent/{p.node}" if p.node else "admin"
        EventRecorder(self.ctx.store, self.ctx.clock, source=source).record(
            obj, body.type, body.reason, body.message
        )
        send(resp, {"recorded": True}, 201)


class InstanceGitCredentialResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        inst = load_instance(self.ctx, req, name, "read the git credential")
        repo = inst.spec.repo
        creds: list[RepoCredential] = self.ctx.store.list(RepoCredential)[0]
        cred = select_credential(creds, repo) if repo else None
        token = open_token(self.ctx.sealer.keyring, cred)
        source = cred.metadata.name if cred is not None else ""
        if token is None and repo and self.ctx.github_app is not None:
            token, source = self._installation_token(repo), "of the GitHub App"
        if token is None:
            raise NotFound(f"no RepoCredential applies to {repo or 'the repository of Instance ' + name}")
        log.info("handed the git credential %s for %s to %s", source, repo, auth.principal(req))
        resp.set_header("Cache-Control", "no-store")
        send(resp, {"username": USERNAME, "token": token})

    def _installation_token(self, repo: str) -> str | None:
        """The App's installation token for ``repo``; None when the App is not installed there."""
        app = self.ctx.github_app
        assert app is not None
        try:
            return app.token_for(repo)[1]
        except GithubError as exc:
            if exc.code == 404:
                return None
            raise Unavailable(f"GitHub did not hand out a token for {repo}: {exc.message}") from None


class InstanceLogsResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        inst = load_instance(self.ctx, req, name, "post logs")
        try:
            batch = LogBatch.model_validate(read_object(req))
        except ValidationError as exc:
            raise Invalid.from_errors(pydantic_errors(exc), "log batch") from None
        entries = [(e.offset, e.time, e.line) for e in batch.entries]
        n = (
            self.ctx.store.append_logs(inst.name, inst.spec.app, inst.spec.deployment, batch.source, entries)
            if entries
            else 0
        )
        send(resp, {"accepted": n})


class RotateKeyResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth.require_admin(req)
        result = self.ctx.sealer.rotate_all(self.ctx.store)
        log.info("secret key rotated")
        send(resp, {"rotated": result if isinstance(result, int | dict) else True})


class NodeStorageResource:
    """``GET /api/v1/nodes/NAME/storage``: the apps whose persistent storage lives on that node.
    Its agent deletes the storage of every other app (a deleted one) it finds on disk."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        p = auth.principal(req)
        if not p.admin and p.node != name:
            raise auth.forbid(p, f"read the storage list of Node {name}")
        apps = [
            a.metadata.name
            for a in self.ctx.store.list(App)[0]
            if isinstance(a, App) and a.status.storage_node == name
        ]
        send(resp, {"apps": sorted(apps)})


class NodeAppsResource:
    """``GET /api/v1/nodes/NAME/apps?names=a,b``: which of the named Apps still exist. The node's
    agent asks about the apps it holds files of (releases, storage, a uid); the files of an app
    that is gone are deleted and its uid is never handed out again."""

    MAX_NAMES = 1000

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        p = auth.principal(req)
        if not p.admin and p.node != name:
            raise auth.forbid(p, f"ask about the apps of Node {name}")
        names = {n for n in (req.get_param("names") or "").split(",") if n}
        if len(names) > self.MAX_NAMES:
            raise Invalid(
                f"at most {self.MAX_NAMES} names per request",
                [{"path": "names", "message": f"more than {self.MAX_NAMES} names"}],
            )
        apps = {a.metadata.name for a in self.ctx.store.list(App)[0]}
        send(resp, {"apps": sorted(names & apps)})
