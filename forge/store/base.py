"""Store interfaces shared by every backend, and ``open_store(url)``.

The shape is kine's: a narrow **records** interface every backend provides, with the
revision semantics written once (``forge.store.records``) and only SQL left to the backend;
**logs** and **metric marks** are interfaces of their own, each with a SQLite and a
PostgreSQL implementation. ``Store`` is the three together, which is what callers hold.

Record semantics (the conformance suite in tests/store pins them down):

- One global revision, strictly increasing across all kinds; every write (create, update,
  update_status, delete) takes the next revision, which becomes the record's
  ``metadata.resourceVersion``. Revisions commit in order: a reader that sees revision N sees
  every revision below it.
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
- ``get``/``list`` take a kind name or a model class; given the class they return that type
  (``store.get(Deployment, "hello-1")`` is a ``Deployment``). Code that knows the kind passes the
  class, so its reads are typed; the name form serves code that handles any kind (the generic
  records API, watch, gc).
- Returned objects are fresh copies: callers may mutate them freely.
- A backend that cannot reach its database raises ``Unavailable`` naming the store (never
  its password).
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, overload, runtime_checkable

from forge.appmetrics import RequestSample
from forge.errors import Invalid
from forge.models import Resource
from forge.series import RequestPoint, UsagePoint, UsageSample

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
R = TypeVar("R", bound=Resource)


@dataclass(frozen=True)
class Fence:
    """What every write of a leader carries: the Lease it leads by and the generation
    (``spec.transitions``) it acquired. A store with a fence set checks it inside each write's
    transaction — the Lease must still name this holder at this generation — so a deposed leader
    that wakes up late (paused, partitioned) cannot write: its writes fail ``Fenced``."""

    lease: str
    holder: str
    generation: int


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
            "id": self.id,
            "time": self.time,
            "instance": self.instance,
            "deployment": self.deployment,
            "source": self.source,
            "line": self.line,
        }


@runtime_checkable
class RecordStore(Protocol):
    """What a records backend provides: revisioned reads, compare-and-swap writes, watch,
    compaction."""

    fence: Fence | None  # a leader's fence, checked inside every write (None: no check)

    @overload
    def get(self, kind: type[R], name: str) -> R: ...
    @overload
    def get(self, kind: str, name: str) -> Resource: ...

    @overload
    def list(self, kind: type[R], selector: dict[str, str] | None = None) -> tuple[list[R], int]: ...
    @overload
    def list(self, kind: str, selector: dict[str, str] | None = None) -> tuple[list[Resource], int]: ...

    def create(self, obj: R) -> R: ...

    def update(self, obj: R, force: bool = False) -> R: ...

    def update_status(self, obj: R) -> R: ...

    def delete(
        self, kind: str | type[Resource], name: str, resource_version: int | None = None
    ) -> Resource: ...

    def watch(self, kind: str | None, since: int, timeout: float = 10.0) -> builtins.list[WatchEvent]: ...

    def revision(self) -> int: ...

    def compacted_revision(self) -> int: ...

    def compact(self, keep: int = 10_000) -> int: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class LogStore(Protocol):
    """Shipped build and app output: idempotent appends, reads resumable by id, follow."""

    def append_logs(
        self, instance: str, app: str, deployment: str, source: str, entries: list[tuple[int, str, str]]
    ) -> int: ...

    def read_logs(
        self,
        app: str,
        deployment: str | None = None,
        source: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        since_time: float | str | None = None,
    ) -> list[LogLine]: ...

    def wait_logs(self, after_id: int, timeout: float = 10.0) -> bool: ...

    def prune_logs(self, before_time: float | str) -> int: ...

    def delete_app_logs(self, app: str) -> int: ...


@runtime_checkable
class MarkStore(Protocol):
    """Metric marks: "record uid reached label of metric", idempotent, never deleted, so
    counts per label are monotonic (the API's counters are computed from them)."""

    def mark(self, metric: str, uid: str, label: str, value: float | None = None) -> bool: ...

    def tally(self, metric: str) -> dict[str, int]: ...

    def observations(self, metric: str, label: str) -> list[float]: ...


@runtime_checkable
class SeriesStore(Protocol):
    """Per-app time series (``forge.series``): additive points at 10 s and 5 min, batches
    counted once per (source, id), bounded by age."""

    def add_requests(self, source: str, batch_id: str, samples: list[RequestSample]) -> bool: ...

    def add_usage(self, source: str, batch_id: str, samples: list[tuple[str, UsageSample]]) -> bool: ...

    def read_requests(self, app: str, step: int, since: int, until: int) -> list[RequestPoint]: ...

    def read_usage(self, app: str, step: int, since: int, until: int) -> list[UsagePoint]: ...

    def read_app_usage(self, app: str, step: int, since: int, until: int) -> list[UsagePoint]: ...

    def prune_series(self, now: float | None = None) -> int: ...

    def delete_app_series(self, app: str) -> int: ...


@runtime_checkable
class Store(RecordStore, LogStore, MarkStore, SeriesStore, Protocol):
    """Records, logs, marks and time series of one install: what the API, controllers and CLI hold."""


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


# user:password@ up to the last "@" (an unescaped "@" in a password must not leak its tail).
_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*):.*@(?=[^@]*$)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&]*")


def redact_url(url: str) -> str:
    """The store URL as it may appear in logs and errors: any password replaced by ``***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\g<head>:***@", url))


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class LogsAndMarks:
    """A store's log, mark and series methods, handed to its ``logs``, ``marks`` and ``series``
    parts (every backend composes a records store with a LogStore, a MarkStore and a
    SeriesStore of its own dialect)."""

    logs: Any
    marks: Any
    series: Any

    @property
    def keep_lines_per_app(self) -> int:
        return int(self.logs.keep_lines_per_app)

    @keep_lines_per_app.setter
    def keep_lines_per_app(self, value: int) -> None:
        self.logs.keep_lines_per_app = value

    def append_logs(
        self, instance: str, app: str, deployment: str, source: str, entries: list[tuple[int, str, str]]
    ) -> int:
        return int(self.logs.append_logs(instance, app, deployment, source, entries))

    def read_logs(
        self,
        app: str,
        deployment: str | None = None,
        source: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        since_time: float | str | None = None,
    ) -> list[LogLine]:
        return list(self.logs.read_logs(app, deployment, source, after_id, limit, since_time))

    def wait_logs(self, after_id: int, timeout: float = 10.0) -> bool:
        return bool(self.logs.wait_logs(after_id, timeout))

    def last_log_id(self) -> int:
        return int(self.logs.last_log_id())

    def prune_logs(self, before_time: float | str) -> int:
        return int(self.logs.prune_logs(before_time))

    def delete_app_logs(self, app: str) -> int:
        return int(self.logs.delete_app_logs(app))

    def mark(self, metric: str, uid: str, label: str, value: float | None = None) -> bool:
        return bool(self.marks.mark(metric, uid, label, value))

    def tally(self, metric: str) -> dict[str, int]:
        return dict(self.marks.tally(metric))

    def observations(self, metric: str, label: str) -> list[float]:
        return list(self.marks.observations(metric, label))

    def add_requests(self, source: str, batch_id: str, samples: list[RequestSample]) -> bool:
        return bool(self.series.add_requests(source, batch_id, samples))

    def add_usage(self, source: str, batch_id: str, samples: list[tuple[str, UsageSample]]) -> bool:
        return bool(self.series.add_usage(source, batch_id, samples))

    def read_requests(self, app: str, step: int, since: int, until: int) -> list[RequestPoint]:
        return list(self.series.read_requests(app, step, since, until))

    def read_usage(self, app: str, step: int, since: int, until: int) -> list[UsagePoint]:
        return list(self.series.read_usage(app, step, since, until))

    def read_app_usage(self, app: str, step: int, since: int, until: int) -> list[UsagePoint]:
        return list(self.series.read_app_usage(app, step, since, until))

    def prune_series(self, now: float | None = None) -> int:
        return int(self.series.prune_series(now))

    def delete_app_series(self, app: str) -> int:
        return int(self.series.delete_app_series(app))
