"""What a proxy host knows of the records: Apps, Instances and Nodes, kept by watches through the API.

Like the node agent's Instance watch: each kind is listed, then watched from the list's
resourceVersion; a broken stream resumes from the last version seen, a 410 (compacted) relists.
A proxy that loses the API keeps what it has — the host map, the kernel map and the routes stay
as last applied, so traffic keeps flowing to the backends it knew — and catches up from the watch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar, cast

from pydantic import ValidationError

from forge import errors
from forge.client import ForgeClient
from forge.models import App, Instance, Node, Resource

log = logging.getLogger(__name__)

WATCH_TIMEOUT: Final[int] = 300  # seconds one stream lasts; the next resumes from its last version
MAX_BACKOFF: Final[float] = 5.0
KINDS: Final[dict[str, type[Resource]]] = {"apps": App, "instances": Instance, "nodes": Node}

R = TypeVar("R", bound=Resource)
Change = Callable[[Resource | None, Resource | None], None]  # (old, new); None: absent


class Records:
    """The cache: the newest version seen of each record, by kind and name, and Instances by App."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_kind: dict[type[Resource], dict[str, Resource]] = {k: {} for k in KINDS.values()}
        self._by_app: dict[str, dict[str, Instance]] = {}
        self.synced: dict[type[Resource], threading.Event] = {k: threading.Event() for k in KINDS.values()}

    def put(self, obj: Resource) -> tuple[Resource | None, bool]:
        """Store ``obj`` unless an equal or newer version is held; (the previous one, stored?)."""
        with self._lock:
            table = self._by_kind[type(obj)]
            old = table.get(obj.metadata.name)
            if old is not None and old.metadata.resource_version >= obj.metadata.resource_version:
                return old, False
            table[obj.metadata.name] = obj
            self._index(old, obj)
            return old, True

    def delete(self, kind: type[Resource], name: str) -> Resource | None:
        with self._lock:
            old = self._by_kind[kind].pop(name, None)
            self._index(old, None)
            return old

    def replace(
        self, kind: type[Resource], items: Iterable[Resource]
    ) -> list[tuple[Resource | None, Resource | None]]:
        """Every record of ``kind`` (a relist); the (old, new) pairs that differ."""
        fresh = {o.metadata.name: o for o in items}
        with self._lock:
            table = self._by_kind[kind]
            out: list[tuple[Resource | None, Resource | None]] = []
            for name in set(table) | set(fresh):
                old, new = table.get(name), fresh.get(name)
                if (
                    old is not None
                    and new is not None
                    and (old.metadata.resource_version == new.metadata.resource_version)
                ):
                    continue
                out.append((old, new))
                if new is None:
                    table.pop(name, None)
                else:
                    table[name] = new
                self._index(old, new)
        self.synced[kind].set()
        return out

    def _index(self, old: Resource | None, new: Resource | None) -> None:
        if isinstance(old, Instance):
            self._by_app.get(old.spec.app, {}).pop(old.metadata.name, None)
        if isinstance(new, Instance):
            self._by_app.setdefault(new.spec.app, {})[new.metadata.name] = new

    def all(self, kind: type[R]) -> list[R]:
        with self._lock:
            return [cast(R, r) for r in self._by_kind[kind].values()]  # the table holds only kind

    def get(self, kind: type[R], name: str) -> R | None:
        with self._lock:
            found = self._by_kind[kind].get(name)
            return cast(R, found) if found is not None else None  # the table holds only kind

    def instances_of(self, app: str) -> list[Instance]:
        with self._lock:
            return list(self._by_app.get(app, {}).values())

    def instances_on(self, node: str) -> list[Instance]:
        with self._lock:
            instances = [cast(Instance, r) for r in self._by_kind[Instance].values()]
        return [i for i in instances if i.spec.node == node]

    def is_synced(self) -> bool:
        return all(e.is_set() for e in self.synced.values())


class KindWatch:
    """One kind's list + watch loop through the API into ``records``; ``on_change`` per change."""

    def __init__(
        self,
        client: ForgeClient,
        plural: str,
        records: Records,
        on_change: Change,
        stop: threading.Event,
    ) -> None:
        self.client, self.plural, self.records = client, plural, records
        self.kind = KINDS[plural]
        self.on_change, self.stop = on_change, stop

    def _parse(self, obj: dict[str, Any]) -> Resource | None:
        try:
            return self.kind.model_validate(obj)
        except ValidationError as exc:
            log.warning("proxy: ignoring a %s it cannot read: %s", self.kind.__name__, exc)
            return None

    def _relist(self) -> int:
        items, rv = self.client.list(self.plural)
        parsed = [o for o in (self._parse(i) for i in items) if o is not None]
        for old, new in self.records.replace(self.kind, parsed):
            self.on_change(old, new)
        self.on_change(None, None)  # listed: the proxy starts reconciling once every kind is
        return rv

    def run(self) -> None:
        rv: int | None = None
        delay = 0.5
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                for typ, obj in self.client.watch(self.plural, rv, timeout_seconds=WATCH_TIMEOUT):
                    if self.stop.is_set():
                        return
                    delay = 0.5  # the API answers again: the next outage starts from a short back-off
                    rv = int(obj.get("metadata", {}).get("resourceVersion") or rv)
                    if typ == "BOOKMARK":
                        continue
                    if typ == "DELETED":
                        old = self.records.delete(self.kind, obj.get("metadata", {}).get("name", ""))
                        if old is not None:
                            self.on_change(old, None)
                        continue
                    parsed = self._parse(obj)
                    if parsed is None:
                        continue
                    old, stored = self.records.put(parsed)
                    if stored:
                        self.on_change(old, parsed)
            except errors.Gone:
                rv = None
            except errors.ForgeError as exc:
                log.warning("proxy: %s watch failed (%s); retrying in %.1fs", self.plural, exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            except (ValueError, KeyError, TypeError) as exc:  # a line it cannot read: start over
                log.error("proxy: %s watch read garbage (%s); relisting in %.1fs", self.plural, exc, delay)
                rv = None
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
