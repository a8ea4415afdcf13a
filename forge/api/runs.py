"""One-off commands against the live release (``forge run``) and their stdin.

``POST /api/v1/apps/NAME/runs`` writes a one-shot Instance ``APP-run-XXXXXX`` of the live
release — its code, config, secrets and resource limits — and the scheduler and an agent do the
rest, like any Instance; its output is the Instance's logs, its end ``status.phase``
(Succeeded/Failed) and ``status.exitCode``. With ``interactive`` the process's stdin is a pipe
its agent feeds from ``POST /api/v1/instances/NAME/stdin`` (the caller's chunks, kept in the log
store under the ``stdin`` source, which ``/logs`` never shows) through
``GET /api/v1/instances/NAME/stdin`` (its node only).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import shlex
from typing import Any, Final

import falcon
from pydantic import Field, ValidationError, model_validator

from forge import instancespec as ds
from forge.api import auth
from forge.api.agents import load_instance
from forge.api.body import q_int, read_object, send
from forge.api.context import ApiContext
from forge.api.records import render
from forge.errors import BadRequest, Conflict, Invalid, NotFound, pydantic_errors
from forge.models import App, Deployment, Instance, Model, OneShot, Secret

STDIN_SOURCE: Final[str] = "stdin"
EOF_MARK: Final[str] = "!eof"  # a chunk that closes stdin (base64 never contains "!")
MAX_CHUNK: Final[int] = 8 * 1024  # base64 of it fits one stored log line (16 KiB)


class RunRequest(Model):
    command: str | None = Field(default=None, min_length=1, max_length=4096)
    argv: list[str] | None = Field(default=None, min_length=1, max_length=256)
    interactive: bool = False
    timeout_seconds: float = Field(default=3600.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _one(self) -> RunRequest:
        if (self.command is None) == (self.argv is None):
            raise ValueError("give exactly one of command (a shell string) or argv (a list)")
        return self

    def shell(self) -> str:
        text = self.command if self.command is not None else shlex.join(self.argv or [])
        if len(text) > 4096 or "\x00" in text:
            raise Invalid(
                "command must be at most 4096 characters without NUL bytes",
                [{"path": "command", "message": "too long or has NUL bytes"}],
            )
        return text


class StdinChunk(Model):
    offset: int = Field(ge=0)  # bytes of stdin sent before this chunk: a retried POST is not doubled
    data: str = Field(default="", max_length=MAX_CHUNK * 2)  # base64
    eof: bool = False


class AppRunsResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        try:
            body = RunRequest.model_validate(read_object(req))
        except ValidationError as exc:
            raise Invalid.from_errors(pydantic_errors(exc), "run request") from None
        store = self.ctx.store
        app: App = store.get(App, name)
        live = app.status.live_deployment
        if not live:
            raise Conflict(f"app {name!r} has no live release to run a command in; deploy it first")
        dep: Deployment = store.get(Deployment, live)
        if dep.status.manifest is None:
            raise Conflict(f"{live} has no manifest yet")
        try:
            secret: Secret | None = store.get(Secret, name)
        except NotFound:
            secret = None
        cfg = ds.effective_config(app, dep, secret)
        oneshot = OneShot(
            type="run",
            command=body.shell(),
            timeout_seconds=body.timeout_seconds,
            interactive=body.interactive,
        )
        run_name = f"{name}-run-{secrets.token_hex(3)}"
        inst = ds.oneshot_instance(app, dep, cfg, secret, run_name, oneshot)
        created = store.create(inst)
        send(resp, render(created), 201)


class InstanceStdinResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def _interactive(self, req: falcon.Request, name: str, what: str) -> Instance:
        inst = load_instance(self.ctx, req, name, what)
        if inst.spec.oneshot is None or not inst.spec.oneshot.interactive:
            raise Conflict(f"Instance {name} is not an interactive run (forge run -i)")
        return inst

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        inst = self._interactive(req, name, "write stdin")
        try:
            chunk = StdinChunk.model_validate(read_object(req))
        except ValidationError as exc:
            raise Invalid.from_errors(pydantic_errors(exc), "stdin chunk") from None
        try:
            raw = base64.b64decode(chunk.data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("data must be base64", [{"path": "data", "message": "not base64"}]) from None
        if len(raw) > MAX_CHUNK:
            raise BadRequest(f"a stdin chunk is at most {MAX_CHUNK} bytes")
        entries = []
        now = self.ctx.clock.now_iso()
        if raw:
            entries.append((chunk.offset, now, chunk.data))
        if chunk.eof:
            entries.append((chunk.offset + len(raw), now, EOF_MARK))
        n = (
            self.ctx.store.append_logs(inst.name, inst.spec.app, inst.spec.deployment, STDIN_SOURCE, entries)
            if entries
            else 0
        )
        send(resp, {"accepted": n})

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        inst = self._interactive(req, name, "read stdin")
        after = q_int(req, "after", 0, 0, 2**62) or 0
        wait = q_int(req, "waitSeconds", 0, 0, 30) or 0
        chunks = self._read(inst, after)
        if not chunks and wait:
            seen = after
            deadline = self.ctx.clock.monotonic() + self.ctx.stream_seconds(float(wait))
            while not chunks and self.ctx.clock.monotonic() < deadline and not self.ctx.closing.is_set():
                step = self.ctx.wait_slice(max(0.0, deadline - self.ctx.clock.monotonic()))
                if self.ctx.store.wait_logs(seen, step):
                    chunks = self._read(inst, after)
                    last = getattr(self.ctx.store, "last_log_id", None)
                    seen = int(last()) if callable(last) else seen
        resp.set_header("Cache-Control", "no-store")
        send(resp, {"chunks": chunks})

    def _read(self, inst: Instance, after: int) -> list[dict[str, Any]]:
        out = []
        while True:
            page = self.ctx.store.read_logs(
                inst.spec.app,
                deployment=inst.spec.deployment,
                source=STDIN_SOURCE,
                after_id=after,
                limit=1000,
            )
            out += [
                {"id": r.id, "data": "" if r.line == EOF_MARK else r.line, "eof": r.line == EOF_MARK}
                for r in page
                if r.instance == inst.name
            ]
            if len(page) < 1000:
                return out
            after = page[-1].id
