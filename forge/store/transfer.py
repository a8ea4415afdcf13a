"""``forge migrate-store``: copy one store into another, exactly, and prove it.

Every record is copied with its revision, uid, resourceVersion, generation and timestamps
(the stored JSON text byte for byte), together with the change log, the revision and
compaction counters, the log lines (with their ids), the metric marks and the per-app time
series (points and remembered batch ids). The target must be
empty unless ``overwrite`` is given (then its contents are replaced). After the copy both
stores are read back and compared: counts, counters, every record's revision and the change
log must match, or ``Unavailable`` says what differs.

Copy a stopped install: the source is read in one snapshot, but writes made after it are
not carried over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from forge.errors import Conflict, Unavailable
from forge.store.base import Store

Rows = list[tuple[Any, ...]]


class _Table(Protocol):
    def dump(self) -> Rows: ...

    def load(self, rows: Rows) -> None: ...

    def clear(self) -> None: ...


class Transferable(Store, Protocol):
    """What both backends offer for a copy (besides the Store interface)."""

    @property
    def url(self) -> str: ...

    logs: Any
    marks: Any
    series: Any

    def dump_records(self) -> tuple[dict[str, int], Rows, Rows]: ...

    def load_records(self, counters: dict[str, int], recs: Rows, changes: Rows) -> None: ...

    def clear_records(self) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    counters: dict[str, int]
    records: Rows
    changes: Rows
    logs: Rows
    marks: Rows
    series: Rows

    @classmethod
    def of(cls, store: Transferable) -> Snapshot:
        counters, recs, changes = store.dump_records()
        return cls(
            {k: counters.get(k, 0) for k in ("revision", "compacted")},
            recs,
            changes,
            store.logs.dump(),
            store.marks.dump(),
            store.series.dump(),
        )

    def normalised(self) -> Snapshot:
        """Rows in a backend-neutral form (labels parsed: jsonb prints them its own way)."""
        recs = [(*r[:7], json.loads(r[7]), r[8]) for r in self.records]
        return Snapshot(
            self.counters,
            sorted(recs, key=lambda r: (r[0], r[1])),
            sorted(self.changes),
            sorted(self.logs),
            sorted(self.marks, key=lambda r: (r[0], r[1], r[2])),
            sorted(self.series, key=lambda r: tuple(str(v) for v in r[:5])),
        )

    def summary(self) -> str:
        return (
            f"{len(self.records)} records (revision {self.counters['revision']}, compacted "
            f"{self.counters['compacted']}), {len(self.changes)} changes, {len(self.logs)} log lines, "
            f"{len(self.marks)} marks, {len(self.series)} time-series rows"
        )


def is_empty(store: Transferable) -> bool:
    return (
        store.revision() == 0
        and store.logs.last_log_id() == 0
        and not store.marks.dump()
        and not store.series.dump()
    )


def copy_store(source: Transferable, target: Transferable, overwrite: bool = False) -> Snapshot:
    """Copy ``source`` into ``target`` and verify; returns what was copied."""
    if not is_empty(target):
        if not overwrite:
            raise Conflict(
                f"target store {target.url} is not empty (revision {target.revision()}); "
                "refusing to overwrite it (--overwrite replaces its contents)"
            )
        target.clear_records()
        target.logs.clear()
        target.marks.clear()
        target.series.clear()
    snap = Snapshot.of(source)
    target.load_records(snap.counters, snap.records, snap.changes)
    target.logs.load(snap.logs)
    target.marks.load(snap.marks)
    target.series.load(snap.series)
    verify(snap, Snapshot.of(target), target.url)
    return snap


def verify(want: Snapshot, got: Snapshot, where: str) -> None:
    a, b = want.normalised(), got.normalised()
    problems = []
    if a.counters != b.counters:
        problems.append(f"counters {b.counters} instead of {a.counters}")
    for what, x, y in (
        ("records", a.records, b.records),
        ("changes", a.changes, b.changes),
        ("log lines", a.logs, b.logs),
        ("marks", a.marks, b.marks),
        ("time-series rows", a.series, b.series),
    ):
        if len(x) != len(y):
            problems.append(f"{len(y)} {what} instead of {len(x)}")
        elif x != y:
            bad = next(i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q)
            problems.append(f"{what} differ (first at {x[bad][:2]})")
    if problems:
        raise Unavailable(f"copy to {where} did not verify: " + "; ".join(problems))
