"""``?watch=true`` NDJSON streams.

One JSON object per line: ``{"type": "ADDED|MODIFIED|DELETED", "object": {...}}``, and a
``{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": N}}}`` whenever nothing
else was written for ``heartbeat_seconds`` (< 5 s), so idle clients learn how far they are and
a client that left is noticed at the next write. The stream ends after ``timeoutSeconds``;
clients re-watch from the last resourceVersion they saw.

Without ``resourceVersion`` (or with 0) the stream first replays the current records as ADDED
and then follows changes. A compacted ``resourceVersion`` is answered with 410 before the stream
starts; if compaction overtakes a running stream it ends with one
``{"type": "ERROR", "object": {"error": "Gone", ...}}`` line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import falcon

from forge.api.body import dumps
from forge.api.context import ApiContext
from forge.errors import ForgeError, Gone
from forge.models import Resource
from forge.store.base import WatchEvent, selector_matches

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


def _line(type_: str, obj: dict[str, Any]) -> bytes:
    return dumps({"type": type_, "object": obj}) + b"\n"


def _bookmark(rv: int) -> bytes:
    return _line("BOOKMARK", {"metadata": {"resourceVersion": rv}})


def _watch(
    ctx: ApiContext, kind: str, selector: dict[str, str], since: int, timeout: float
) -> tuple[list[WatchEvent], int]:
    """Changes after ``since`` (those matching ``selector`` where the store can filter them
    itself) and the revision to resume from."""
    selected = getattr(ctx.store, "watch_selected", None)
    if selector and callable(selected):
        events, reached = selected(kind, since, timeout, selector)
        return list(events), int(reached)
    events = ctx.store.watch(kind, since, timeout=timeout)
    return events, max([since] + [ev.revision for ev in events])


def start_watch(
    ctx: ApiContext,
    resp: falcon.Response,
    kind: str,
    selector: dict[str, str],
    rv: int | None,
    timeout: float,
    render: Callable[[Resource], dict[str, Any]],
) -> None:
    """Check the revision (410 here, while a status can still be sent), then stream."""
    if rv:
        first, since = _watch(ctx, kind, selector, rv, 0)
    else:
        items, since = ctx.store.list(kind, selector or None)
        first = [WatchEvent("ADDED", o, o.metadata.resource_version) for o in items]
    resp.status = 200
    resp.content_type = NDJSON
    resp.set_header("Cache-Control", "no-store")
    resp.set_header("X-Accel-Buffering", "no")
    resp.stream = ctx.open_stream(_stream(ctx, kind, selector, since, first, timeout, render))


def _stream(
    ctx: ApiContext,
    kind: str,
    selector: dict[str, str],
    since: int,
    first: list[WatchEvent],
    timeout: float,
    render: Callable[[Resource], dict[str, Any]],
) -> Iterator[bytes]:
    clock = ctx.clock
    deadline = clock.monotonic() + timeout
    beat = ctx.heartbeat_seconds
    events = first
    last_out = clock.monotonic()
    yield _bookmark(since)
    while True:
        out = []
        for ev in events:
            since = max(since, ev.revision)
            if selector_matches(ev.object.metadata.labels, selector):
                out.append(_line(ev.type, render(ev.object)))
        now = clock.monotonic()
        if out:
            yield b"".join(out)
            last_out = now
        elif now - last_out >= beat:
            yield _bookmark(since)
            last_out = now
        remaining = deadline - now
        if remaining <= 0 or ctx.closing.is_set():
            return
        wait = ctx.wait_slice(max(0.05, min(remaining, beat - (now - last_out))))
        try:
            events, since = _watch(ctx, kind, selector, since, wait)
        except Gone as exc:
            yield _line("ERROR", exc.to_dict())
            return
        except ForgeError as exc:
            log.warning("watch on %s ended: %s", kind, exc.message)
            yield _line("ERROR", exc.to_dict())
            return
