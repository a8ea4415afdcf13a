"""``GET /api/v1/apps/{name}/logs``: build and app output as NDJSON.

Query: ``deployment=APP-N``, ``source=build|app``, ``since=10m|2h|ISO-time``, ``tail=N`` (the
last N lines), ``follow=true`` (keep streaming new lines for up to ``timeoutSeconds``, default
600, at most 3600), ``probes=false`` (leave out the lines of the agent's health checks,
``forge.probes``; ``tail`` then counts the others). Lines are
``{"id","time","instance","deployment","source","line"}``; while following, an empty line goes out every few seconds so a client that left is noticed.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from typing import Any

import falcon

from forge.api import auth
from forge.api.body import dumps, q_bool, q_int
from forge.api.context import ApiContext
from forge.clock import iso, parse_iso
from forge.errors import BadRequest, NotFound
from forge.models import App, Deployment, is_dns_label
from forge.probes import is_probe_line

PAGE = 1000
DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None, now: float) -> str | None:
    if not text:
        return None
    m = DURATION.match(text.strip())
    if m:
        return iso(now - int(m.group(1)) * UNIT[m.group(2)])
    try:
        return iso(parse_iso(text.strip()))
    except ValueError:
        raise BadRequest(
            f"since={text!r} is neither a duration (10m, 2h) nor an ISO time",
            [{"path": "since", "message": "not a duration or time"}],
        ) from None


def _line(rec: Any) -> bytes:
    return (
        dumps(
            {
                "id": rec.id,
                "time": rec.time,
                "instance": rec.instance,
                "deployment": rec.deployment,
                "source": rec.source,
                "line": rec.line,
            }
        )
        + b"\n"
    )


class AppLogsResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        self.ctx.store.get(App, name)
        source = req.get_param("source") or None
        if source not in (None, "build", "app"):
            raise BadRequest(
                "source must be build or app", [{"path": "source", "message": "must be build or app"}]
            )
        instance = req.get_param("instance") or None
        if instance is not None and not is_dns_label(instance):
            raise BadRequest(
                "instance must be an Instance name", [{"path": "instance", "message": "not a name"}]
            )
        deployment = req.get_param("deployment") or None
        if deployment is not None and not is_dns_label(deployment):
            raise BadRequest(
                "deployment must be a release name like APP-N",
                [{"path": "deployment", "message": "not a release name"}],
            )
        since = parse_since(req.get_param("since"), self.ctx.clock.now())
        tail = q_int(req, "tail", None, 0, 100_000)
        follow = q_bool(req, "follow")
        timeout = q_int(req, "timeoutSeconds", 600, 1, 3600) or 600
        # probes=false: leave out the lines that record the agent's health checks
        # (``forge.probes``); each line is judged by its own release's health path.
        hide = req.get_param("probes") is not None and not q_bool(req, "probes")
        filters: dict[str, Any] = {"deployment": deployment, "source": source, "instance": instance}
        filters["probe_paths"] = {} if hide else None
        resp.content_type = "application/x-ndjson"
        resp.set_header("Cache-Control", "no-store")
        body = self._stream(name, filters, since, tail, follow, self.ctx.stream_seconds(float(timeout)))
        resp.stream = self.ctx.open_stream(body) if follow else body

    def _read(self, app: str, filters: dict[str, Any], after: int, since: str | None) -> list[Any]:
        """One page (by id) of the app's lines; an ``instance`` filter and the hiding of a run's
        stdin apply to what is yielded, so ``len(page) < PAGE`` still means "no more"."""
        return self.ctx.store.read_logs(
            app,
            deployment=filters["deployment"],
            source=filters["source"],
            after_id=after,
            limit=PAGE,
            since_time=since,
        )

    def _shown(self, page: list[Any], filters: dict[str, Any]) -> list[Any]:
        inst = filters.get("instance")
        shown = [r for r in page if r.source != "stdin" and (inst is None or r.instance == inst)]
        paths = filters.get("probe_paths")
        if paths is None:
            return shown
        return [
            r for r in shown if r.source != "app" or not is_probe_line(r.line, self._health_path(paths, r))
        ]

    def _health_path(self, paths: dict[str, str | None], rec: Any) -> str | None:
        """The health path of the line's release (read once per stream and release)."""
        if rec.deployment not in paths:
            try:
                manifest = self.ctx.store.get(Deployment, rec.deployment).status.manifest
            except NotFound:
                manifest = None
            paths[rec.deployment] = manifest.health.path if manifest is not None else "/"
        return paths[rec.deployment]

    def _stream(
        self,
        app: str,
        filters: dict[str, Any],
        since: str | None,
        tail: int | None,
        follow: bool,
        timeout: float,
    ) -> Iterator[bytes]:
        clock, store = self.ctx.clock, self.ctx.store
        deadline = clock.monotonic() + timeout
        after = 0
        keep: deque[Any] | None = deque(maxlen=tail) if tail is not None else None
        while True:
            page = self._read(app, filters, after, since)
            if page:
                after = page[-1].id
                if keep is None:
                    yield b"".join(_line(r) for r in self._shown(page, filters))
                else:
                    keep.extend(self._shown(page, filters))
            if len(page) < PAGE:
                break
        if keep:
            yield b"".join(_line(r) for r in keep)
        elif follow and after == 0:
            yield b"\n"  # nothing yet: send the headers now so the client knows it is following
        # wait_logs wakes on any app's lines; ``seen`` is the global cursor, ``after`` ours.
        seen = after
        quiet = 0.0
        while follow:
            remaining = deadline - clock.monotonic()
            if remaining <= 0 or self.ctx.closing.is_set():
                return
            step = self.ctx.wait_slice(min(remaining, self.ctx.heartbeat_seconds))
            if not store.wait_logs(seen, step):
                quiet += step
                if quiet >= self.ctx.heartbeat_seconds:
                    quiet = 0.0
                    yield b"\n"
                continue
            quiet = 0.0
            seen = max(seen, self._last_id())
            page = self._read(app, filters, after, None)
            while page:
                after = page[-1].id
                yield b"".join(_line(r) for r in self._shown(page, filters))
                page = self._read(app, filters, after, None) if len(page) == PAGE else []
            seen = max(seen, after)

    def _last_id(self) -> int:
        last = getattr(self.ctx.store, "last_log_id", None)
        return int(last()) if callable(last) else 0
