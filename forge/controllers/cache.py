"""The controllers' informer cache: one watch per kind feeds typed, indexed records in memory.

controller-runtime's informer cache, in Python. Without it every reconcile lists from the store
(a full table scan plus a JSON parse per row), so the work of one change grows with the cluster.

- **Fed by the runtime's watches.** Each cached kind is listed once when the runtime starts (and
  again when its watch is told ``Gone``); every watch event is applied *before* the controllers
  are woken for it, so a reconcile woken by a change reads at least that change.
- **Indexed** by name, by the values of the labels in ``INDEXED_LABELS``
  (``list(Instance, {forge.dev/app: "hello"})`` touches hello's Instances only) and by the
  fields in ``INDEXED_FIELDS`` (``scan_field(Instance, "spec.app", "hello")``: also the
  Instances nobody labelled, as controller-runtime's field indexers).
- **Reads are typed and copied**: ``get``/``list`` return fresh objects that callers may mutate,
  as the store's do. ``scan`` hands out the cache's own objects without a copy, for pure
  functions that only read (a scan over every App must not cost a copy of every App).
- **Writes go to the store** (resourceVersion compare-and-swap as ever). ``CachedStore``, the
  store as a cached controller sees it, also applies what each write returned, so a controller
  that writes and then reads sees its own write, never the version before it; a watch event
  older than what the cache holds is ignored. What another writer did and the watch has not
  delivered yet can still be stale: a write based on it fails ``Conflict`` and is requeued, as
  in controller-runtime.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, overload

from forge.appmetrics import RequestSample
from forge.models import LABEL_APP, LABEL_DEPLOYMENT, LABEL_NODE, Resource, kind_class
from forge.series import RequestPoint, UsagePoint, UsageSample
from forge.store.base import Fence, LogLine, Store, WatchEvent, selector_matches
from forge.store.records import not_found, resolve_kind

R = TypeVar("R", bound=Resource)

INDEXED_LABELS: tuple[str, ...] = (LABEL_APP, LABEL_DEPLOYMENT, LABEL_NODE)


def _spec_field(name: str) -> Callable[[Resource], str | None]:
    def value(obj: Resource) -> str | None:
        got = getattr(getattr(obj, "spec", None), name, None)
        return got if isinstance(got, str) and got else None

    return value


INDEXED_FIELDS: dict[str, Callable[[Resource], str | None]] = {
    "spec.app": _spec_field("app"),
    "spec.node": _spec_field("node"),
}


@dataclass
class _Entry:
    obj: Resource
    json: str  # what copies are made from: model_validate_json shares nothing with the cached object

    @property
    def revision(self) -> int:
        return self.obj.metadata.resource_version


@dataclass
class _Kind:
    entries: dict[str, _Entry] = field(default_factory=dict)
    index: dict[str, dict[str, set[str]]] = field(
        default_factory=lambda: {k: {} for k in (*INDEXED_LABELS, *INDEXED_FIELDS)}
    )
    deleted: dict[str, int] = field(default_factory=dict)  # name → revision of a delete ahead of the watch
    revision: int = 0  # the newest revision the watch delivered
    version: int = 0  # moves on every change held (InformerCache's tick: never repeats, even across a refill)

    def put(self, obj: Resource) -> None:
        name = obj.metadata.name
        old = self.entries.get(name)
        if old is not None:
            self._unindex(old.obj)
        self.entries[name] = _Entry(obj, obj.model_dump_json(by_alias=True, exclude_none=True))
        for key, value in _index_values(obj):
            self.index[key].setdefault(value, set()).add(name)

    def remove(self, name: str) -> None:
        old = self.entries.pop(name, None)
        if old is not None:
            self._unindex(old.obj)

    def _unindex(self, obj: Resource) -> None:
        for key, value in _index_values(obj):
            names = self.index[key].get(value)
            if names is not None:
                names.discard(obj.metadata.name)
                if not names:
                    del self.index[key][value]

    def select(self, selector: dict[str, str] | None) -> list[_Entry]:
        """Entries matching ``selector``, ordered by name (as the store lists them)."""
        names: Iterable[str] | None = None
        for key, value in (selector or {}).items():
            if key in INDEXED_LABELS:
                names = self.index[key].get(value, set())
                break
        if names is None:
            names = self.entries
        out = [self.entries[n] for n in sorted(names)]
        return [e for e in out if selector_matches(e.obj.metadata.labels, selector)] if selector else out


def _index_values(obj: Resource) -> list[tuple[str, str]]:
    out = [(k, v) for k in INDEXED_LABELS if (v := obj.metadata.labels.get(k)) is not None]
    return out + [(k, v) for k, get in INDEXED_FIELDS.items() if (v := get(obj)) is not None]


class InformerCache:
    """Records of the ``kinds`` the controllers watch, kept current by ``apply``."""

    def __init__(self, store: Store, kinds: Iterable[str]) -> None:
        self.store = store
        self.kinds = frozenset(resolve_kind(k) for k in kinds)
        self._lock = threading.Lock()
        self._data: dict[str, _Kind] = {k: _Kind() for k in self.kinds}
        self._tick = 0

    def __contains__(self, kind: object) -> bool:
        return kind in self.kinds

    def fill(self, kind: str) -> int:
        """(Re)list ``kind`` from the store; returns the revision its watch resumes from."""
        items, rev = self.store.list(kind)
        fresh = _Kind(revision=rev)
        for obj in items:
            fresh.put(obj)
        with self._lock:
            self._tick += 1
            fresh.version = self._tick
            self._data[kind] = fresh
        return rev

    def apply(self, ev: WatchEvent) -> None:
        """One watch event, in revision order per kind; older than what is held: ignored."""
        kind = ev.object.KIND
        with self._lock:
            data = self._data.get(kind)
            if data is None:
                return
            data.revision = max(data.revision, ev.revision)
            name = ev.object.metadata.name
            if data.deleted.get(name, -1) >= ev.revision:
                if ev.type == "DELETED":
                    data.deleted.pop(name, None)  # the watch caught up with the delete
                return
            cur = data.entries.get(name)
            if cur is not None and cur.revision >= ev.revision:
                return
            if ev.type == "DELETED":
                data.remove(name)
            else:
                data.put(ev.object)
            self._tick += 1
            data.version = self._tick

    def observe(self, obj: Resource, deleted: bool = False) -> None:
        """A write this process made (what the store returned): held at once, if newer."""
        with self._lock:
            data = self._data.get(obj.KIND)
            if data is None:
                return
            name, rev = obj.metadata.name, obj.metadata.resource_version
            cur = data.entries.get(name)
            if (cur is not None and cur.revision >= rev) or data.deleted.get(name, -1) >= rev:
                return
            if deleted:
                data.remove(name)
                if rev > data.revision:
                    data.deleted[name] = rev
            else:
                data.put(obj)
            self._tick += 1
            data.version = self._tick

    def version(self, kind: str | type[Resource]) -> int:
        """A number that moves whenever the held records of ``kind`` change (for memos)."""
        with self._lock:
            return self._data[resolve_kind(kind)].version

    # ------------------------------------------------------------------ reads

    @overload
    def get(self, kind: type[R], name: str) -> R: ...
    @overload
    def get(self, kind: str, name: str) -> Resource: ...

    def get(self, kind: str | type[Resource], name: str) -> Resource:
        k = resolve_kind(kind)
        with self._lock:
            entry = self._data[k].entries.get(name)
        if entry is None:
            raise not_found(k, name)
        return kind_class(k).model_validate_json(entry.json)

    @overload
    def list(self, kind: type[R], selector: dict[str, str] | None = None) -> tuple[list[R], int]: ...
    @overload
    def list(self, kind: str, selector: dict[str, str] | None = None) -> tuple[list[Resource], int]: ...

    def list(
        self, kind: str | type[Resource], selector: dict[str, str] | None = None
    ) -> tuple[list[Any], int]:
        k = resolve_kind(kind)
        cls = kind_class(k)
        with self._lock:
            data = self._data[k]
            entries, rev = data.select(selector), data.revision
        return [cls.model_validate_json(e.json) for e in entries], rev

    @overload
    def scan(self, kind: type[R], selector: dict[str, str] | None = None) -> builtins.list[R]: ...
    @overload
    def scan(self, kind: str, selector: dict[str, str] | None = None) -> builtins.list[Resource]: ...

    def scan(self, kind: str | type[Resource], selector: dict[str, str] | None = None) -> builtins.list[Any]:
        """The cache's own objects, no copies: for reading only (never mutate them)."""
        with self._lock:
            return [e.obj for e in self._data[resolve_kind(kind)].select(selector)]

    def scan_field(self, kind: type[R], field_name: str, value: str) -> builtins.list[R]:
        """Like ``scan``, of the records whose ``field_name`` (see ``INDEXED_FIELDS``) is ``value``."""
        with self._lock:
            data = self._data[resolve_kind(kind)]
            names = sorted(data.index[field_name].get(value, set()))
            return [cast(R, data.entries[n].obj) for n in names]


class CachedStore:
    """The store as a cached controller sees it: reads of cached kinds from the cache, writes to
    the store (and what they returned into the cache); everything else goes to the store."""

    def __init__(self, store: Store, cache: InformerCache) -> None:
        self.backend, self.cache = store, cache

    @property
    def fence(self) -> Fence | None:
        return self.backend.fence

    @fence.setter
    def fence(self, value: Fence | None) -> None:
        self.backend.fence = value

    @overload
    def get(self, kind: type[R], name: str) -> R: ...
    @overload
    def get(self, kind: str, name: str) -> Resource: ...

    def get(self, kind: str | type[Resource], name: str) -> Resource:
        if resolve_kind(kind) in self.cache:
            return self.cache.get(kind, name)
        return self.backend.get(kind, name)

    @overload
    def list(self, kind: type[R], selector: dict[str, str] | None = None) -> tuple[list[R], int]: ...
    @overload
    def list(self, kind: str, selector: dict[str, str] | None = None) -> tuple[list[Resource], int]: ...

    def list(
        self, kind: str | type[Resource], selector: dict[str, str] | None = None
    ) -> tuple[list[Any], int]:
        if resolve_kind(kind) in self.cache:
            return self.cache.list(kind, selector)
        return self.backend.list(kind, selector)

    def scan(self, kind: type[R], selector: dict[str, str] | None = None) -> builtins.list[R]:
        if resolve_kind(kind) in self.cache:
            return self.cache.scan(kind, selector)
        return self.backend.list(kind, selector)[0]

    def create(self, obj: R) -> R:
        out = self.backend.create(obj)
        self.cache.observe(out)
        return out

    def update(self, obj: R, force: bool = False) -> R:
        out = self.backend.update(obj, force)
        self.cache.observe(out)
        return out

    def update_status(self, obj: R) -> R:
        out = self.backend.update_status(obj)
        self.cache.observe(out)
        return out

    def delete(self, kind: str | type[Resource], name: str, resource_version: int | None = None) -> Resource:
        out = self.backend.delete(kind, name, resource_version)
        self.cache.observe(out, deleted=True)
        return out

    # ------------------------------------------------------------------ the rest: the store's own

    def watch(self, kind: str | None, since: int, timeout: float = 10.0) -> builtins.list[WatchEvent]:
        return self.backend.watch(kind, since, timeout)

    def revision(self) -> int:
        return self.backend.revision()

    def compacted_revision(self) -> int:
        return self.backend.compacted_revision()

    def compact(self, keep: int = 10_000) -> int:
        return self.backend.compact(keep)

    def ping(self) -> None:
        self.backend.ping()

    def close(self) -> None:
        """The runtime's view closes nothing: the store belongs to whoever opened it."""

    def append_logs(
        self,
        instance: str,
        app: str,
        deployment: str,
        source: str,
        entries: builtins.list[tuple[int, str, str]],
    ) -> int:
        return self.backend.append_logs(instance, app, deployment, source, entries)

    def read_logs(
        self,
        app: str,
        deployment: str | None = None,
        source: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        since_time: float | str | None = None,
    ) -> builtins.list[LogLine]:
        return self.backend.read_logs(app, deployment, source, after_id, limit, since_time)

    def wait_logs(self, after_id: int, timeout: float = 10.0) -> bool:
        return self.backend.wait_logs(after_id, timeout)

    def prune_logs(self, before_time: float | str) -> int:
        return self.backend.prune_logs(before_time)

    def delete_app_logs(self, app: str) -> int:
        return self.backend.delete_app_logs(app)

    def mark(self, metric: str, uid: str, label: str, value: float | None = None) -> bool:
        return self.backend.mark(metric, uid, label, value)

    def add_requests(self, source: str, batch_id: str, samples: builtins.list[RequestSample]) -> bool:
        return self.backend.add_requests(source, batch_id, samples)

    def add_usage(self, source: str, batch_id: str, samples: builtins.list[tuple[str, UsageSample]]) -> bool:
        return self.backend.add_usage(source, batch_id, samples)

    def read_requests(self, app: str, step: int, since: int, until: int) -> builtins.list[RequestPoint]:
        return self.backend.read_requests(app, step, since, until)

    def read_usage(self, app: str, step: int, since: int, until: int) -> builtins.list[UsagePoint]:
        return self.backend.read_usage(app, step, since, until)

    def read_app_usage(self, app: str, step: int, since: int, until: int) -> builtins.list[UsagePoint]:
        return self.backend.read_app_usage(app, step, since, until)

    def prune_series(self, now: float | None = None) -> int:
        return self.backend.prune_series(now)

    def delete_app_series(self, app: str) -> int:
        return self.backend.delete_app_series(app)

    def tally(self, metric: str) -> dict[str, int]:
        return self.backend.tally(metric)

    def observations(self, metric: str, label: str) -> builtins.list[float]:
        return self.backend.observations(metric, label)


def cache_version(store: Store, *kinds: type[Resource]) -> tuple[int, ...] | None:
    """Moves whenever the cached records of ``kinds`` change: a memo of a pure function of them
    stays valid while it does not. None on a plain store (no cache: recompute every time)."""
    if isinstance(store, CachedStore) and all(resolve_kind(k) in store.cache for k in kinds):
        return tuple(store.cache.version(k) for k in kinds)
    return None


def read_only_field(store: Store, kind: type[R], field_name: str, value: str) -> list[R]:
    """Every ``kind`` record whose ``field_name`` (``spec.app``, ``spec.node``) is ``value``, for
    reading only: from the cache's field index under the runtime, a filtered list otherwise."""
    if isinstance(store, CachedStore) and resolve_kind(kind) in store.cache:
        return store.cache.scan_field(kind, field_name, value)
    get = INDEXED_FIELDS[field_name]
    return [o for o in store.list(kind)[0] if get(o) == value]


def read_only(store: Store, kind: type[R], selector: dict[str, str] | None = None) -> list[R]:
    """Every ``kind`` record matching ``selector``, for a pure function that only reads them:
    the cache's own objects under the runtime (no copies), a fresh list from a plain store."""
    if isinstance(store, CachedStore):
        return store.scan(kind, selector)
    return store.list(kind, selector)[0]
