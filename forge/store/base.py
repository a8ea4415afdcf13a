"""Store interface shared by every backend.

Semantics (the conformance suite in tests/store pins them down):

- One global revision, strictly increasing across all kinds; every write (create, update,
  update_status, delete) takes the next revision, which becomes the record's
  ``metadata.resourceVersion``.
- ``create`` assigns uid, resourceVersion, generation=1, createdAt/updatedAt; it raises
  ``AlreadyExists`` when the name is taken within the kind.
- ``update`` writes spec, metadata.labels, metadata.ownerRef, metadata.deletionTimestamp;
  it keeps the stored status. ``update_status`` writes status only. Both require
  ``obj.metadata.resourceVersion`` to equal the stored one (``Conflict`` otherwise; 0 means
  "unconditional" for update only when ``force=True``). ``generation`` bumps only when spec
  changed.
- ``delete`` removes the record (``NotFound`` if missing, ``Conflict`` if a given
  resourceVersion is stale) and returns it as it was, with the delete's revision.
- ``watch(kind, since, timeout)`` returns the change events with revision > since for that
  kind (kind None = all), blocking up to ``timeout`` seconds when there are none yet; raises
  ``Gone`` when ``since`` is older than the oldest revision compaction kept.
- Returned objects are fresh copies: callers may mutate them freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from forge.errors import Invalid
from forge.models import Resource

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    object: Resource
    revision: int


@dataclass(frozen=True)
class LogLine:
    """One shipped log line; ``id`` orders lines across every instance of the store."""

    id: int
    time: str
    instance: str
    deployment: str
    source: str
    line: str

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id, "time": self.time, "instance": self.instance,
            "deployment": self.deployment, "source": self.source, "line": self.line,
        }


@runtime_checkable
class Store(Protocol):
    def get(self, kind: str, name: str) -> Resource: ...

    def list(self, kind: str, selector: dict[str, str] | None = None) -> tuple[list[Resource], int]: ...

    def create(self, obj: Resource) -> Resource: ...

    def update(self, obj: Resource, force: bool = False) -> Resource: ...

    def update_status(self, obj: Resource) -> Resource: ...

    def delete(self, kind: str, name: str, resource_version: int | None = None) -> Resource: ...

    def watch(self, kind: str | None, since: int, timeout: float = 10.0) -> list[WatchEvent]: ...

    def revision(self) -> int: ...

    def compacted_revision(self) -> int: ...

    def compact(self, keep: int = 10_000) -> int: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def append_logs(
        self, instance: str, app: str, deployment: str, source: str, entries: list[tuple[int, str, str]]
    ) -> int: ...

    def read_logs(
        self, app: str, deployment: str | None = None, source: str | None = None, after_id: int = 0,
        limit: int = 1000, since_time: float | str | None = None,
    ) -> list[LogLine]: ...

    def wait_logs(self, after_id: int, timeout: float = 10.0) -> bool: ...

    def prune_logs(self, before_time: float | str) -> int: ...

    # Metric marks: "record uid reached label of metric", idempotent, never deleted, so
    # counts per label are monotonic (the API's counters are computed from them).
    def mark(self, metric: str, uid: str, label: str, value: float | None = None) -> bool: ...

    def tally(self, metric: str) -> dict[str, int]: ...

    def observations(self, metric: str, label: str) -> list[float]: ...


def parse_selector(text: str | None) -> dict[str, str]:
    """``a=b,c=d`` (``==`` accepted) → dict; ``Invalid`` naming the bad term."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for term in text.split(","):
        term = term.strip()
        if not term:
            continue
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or not key.strip():
            raise Invalid(
                f"labelSelector term {term!r} must be key=value",
                [{"path": "labelSelector", "message": f"bad term {term!r}"}],
            )
        out[key.strip()] = value.strip()
    return out


def selector_matches(labels: dict[str, str], selector: dict[str, str] | None) -> bool:
    return not selector or all(labels.get(k) == v for k, v in selector.items())


def open_store(url: str) -> Store:
    """``sqlite:///abs/path.db`` (or a bare path) → SqliteStore; ``postgresql://`` later."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        raise Invalid(f"store URL {url.split('@')[-1]!r}: the PostgreSQL backend is not built yet")
    from forge.store.sqlite import SqliteStore

    path = url[len("sqlite://"):] if url.startswith("sqlite://") else url
    if path.startswith("/") and url.startswith("sqlite:///"):
        path = path[1:] if path.startswith("//") else path
    return SqliteStore(path)
