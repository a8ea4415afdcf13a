"""Events are history for people: merged by (object, type, reason, message) with a count.

No controller decides anything from Events. Recording never fails the caller's reconcile:
an Event lost to a conflict is retried once and then dropped with a log line.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Literal

from forge.clock import Clock
from forge.errors import AlreadyExists, Conflict, NotFound
from forge.models import Event, EventSpec, ObjectMeta, ObjectRef, Resource
from forge.store.base import Store
from forge.textsafe import printable_lines

log = logging.getLogger(__name__)

RATE_PER_OBJECT = 30  # events per object per minute before further ones are dropped


def event_name(obj_kind: str, obj_name: str, type_: str, reason: str, message: str) -> str:
    digest = hashlib.sha256(f"{obj_kind}\0{obj_name}\0{type_}\0{reason}\0{message}".encode()).hexdigest()[:12]
    base = obj_name[: 253 - 13]
    return f"{base}.{digest}"


class EventRecorder:
    def __init__(self, store: Store, clock: Clock, source: str) -> None:
        self.store, self.clock, self.source = store, clock, source
        self._window: dict[str, list[float]] = {}

    def _allowed(self, key: str) -> bool:
        now = self.clock.monotonic()
        times = [t for t in self._window.get(key, []) if now - t < 60.0]
        if len(times) >= RATE_PER_OBJECT:
            self._window[key] = times
            return False
        times.append(now)
        self._window[key] = times
        return True

    def record(
        self, obj: Resource, type_: Literal["Normal", "Warning"], reason: str, message: str
    ) -> Event | None:
        kind, name = obj.KIND or obj.kind, obj.metadata.name
        # Messages quote app output (build tails): no control characters, but their line breaks
        # stay so they print as text (the CLI indents the continuation lines).
        message = printable_lines(message)
        if not self._allowed(f"{kind}/{name}"):
            log.info("event rate limit hit for %s/%s, dropping %s", kind, name, reason)
            return None
        ev_name = event_name(kind, name, type_, reason, message)
        now = self.clock.now_iso()
        for _ in range(2):
            try:
                cur = self.store.get(Event, ev_name)
            except NotFound:
                labels = {"forge.dev/kind": kind.lower()}
                if len(name) <= 63:
                    labels["forge.dev/object"] = name
                app = obj.metadata.labels.get("forge.dev/app") or (name if kind == "App" else None)
                if app:
                    labels["forge.dev/app"] = app
                ev = Event(
                    metadata=ObjectMeta(name=ev_name, labels=labels),
                    spec=EventSpec(
                        involved_object=ObjectRef(kind=kind, name=name, uid=obj.metadata.uid),
                        type=type_,
                        reason=reason,
                        message=message[:4096],
                        count=1,
                        first_time=now,
                        last_time=now,
                        source=self.source,
                    ),
                )
                try:
                    return self.store.create(ev)
                except AlreadyExists:
                    continue
            cur.spec.count += 1
            cur.spec.last_time = now
            try:
                return self.store.update(cur)
            except (Conflict, NotFound):
                continue
        log.warning("could not record event %s for %s/%s", reason, kind, name)
        return None
