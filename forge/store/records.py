"""The record semantics every backend shares, written once over a backend's write transaction.

This is kine's split: the rules (metadata a create assigns, when generation bumps, the
compare-and-swap on resourceVersion, what a delete returns, when the change log is compacted)
live here; a backend only supplies a ``RecordTx`` — the handful of SQL statements of its
dialect, run inside one write transaction in which it holds the store's write serialisation
(SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the row lock on the revision counter).
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol, TypeVar, cast

from forge.errors import AlreadyExists, Conflict, Fenced, Invalid, NotFound
from forge.models import Resource, kind_class, parse_record
from forge.store.base import EventType, Fence

R = TypeVar("R", bound=Resource)

WATCH_LIMIT = 1000  # events per watch call; callers re-watch from the last revision
AUTO_COMPACT_KEEP = 100_000  # compact when the log holds twice this many changes


class RecordTx(Protocol):
    """One backend write transaction (serialised against every other writer of the store)."""

    def row(self, kind: str, name: str) -> tuple[dict[str, Any], int] | None:
        """The stored record (parsed JSON) and its created time in ms, or None."""

    def counter(self, name: str) -> int:
        """``revision`` or ``compacted``."""

    def next_revision(self) -> int:
        """Increment the global revision and return it."""

    def put(self, kind: str, obj: Resource, created: int, updated: int, insert: bool) -> None: ...

    def remove(self, kind: str, name: str) -> None: ...

    def log(self, rev: int, type_: EventType, obj: Resource, now: int) -> None:
        """Append a change to the watch log."""

    def drop_changes(self, upto: int) -> None:
        """Delete changes with revision <= upto and set the compacted counter to it."""


def resolve_kind(kind: str | type[Resource]) -> str:
    if isinstance(kind, type):
        return kind.KIND
    try:
        return kind_class(kind).KIND
    except KeyError:
        raise Invalid(
            f"unknown kind {kind!r}", [{"path": "kind", "message": f"unknown kind {kind!r}"}]
        ) from None


def object_kind(obj: Resource) -> str:
    return resolve_kind(obj.KIND or obj.kind)


def not_found(kind: str, name: str) -> NotFound:
    return NotFound(f"{kind} {name!r} not found")


def check_version(kind: str, cur: dict[str, Any], expected: int) -> None:
    stored = int(cur["metadata"]["resourceVersion"])
    if expected != stored:
        name = cur["metadata"]["name"]
        raise Conflict(
            f"{kind} {name!r} was modified: resourceVersion {expected} is stale (current {stored}); "
            "read it again and retry",
            [{"path": "metadata.resourceVersion", "message": f"expected {stored}, got {expected}"}],
        )


def gone_message(since: int, compacted: int) -> str:
    return (
        f"revision {since} is older than the oldest kept ({compacted}); list again and "
        "watch from the list's revision"
    )


def check_fence(tx: RecordTx, fence: Fence | None, kind: str, name: str) -> None:
    """Inside the write transaction: the writer still leads (see ``Fence``). Writes to the Lease
    itself are the election's own, guarded by its compare-and-swap instead."""
    if fence is None or (kind == "Lease" and name == fence.lease):
        return
    row = tx.row("Lease", fence.lease)
    spec = (row[0].get("spec") or {}) if row is not None else {}
    holder, generation = spec.get("holder", ""), int(spec.get("transitions", 0) or 0)
    if holder != fence.holder or generation != fence.generation:
        raise Fenced(
            f"{fence.holder} no longer leads (Lease {fence.lease} names {holder or 'nobody'} at "
            f"generation {generation}, this write carried generation {fence.generation}); not written"
        )


def _current(tx: RecordTx, kind: str, name: str) -> tuple[dict[str, Any], int]:
    row = tx.row(kind, name)
    if row is None:
        raise not_found(kind, name)
    return row


def next_revision(tx: RecordTx, auto_compact_keep: int) -> int:
    rev = tx.next_revision()
    if auto_compact_keep and rev - tx.counter("compacted") > 2 * auto_compact_keep:
        compact(tx, auto_compact_keep, rev)
    return rev


def compact(tx: RecordTx, keep: int, rev: int | None = None) -> int:
    """Drop all but the newest ``keep`` changes; returns the compacted revision (never lower)."""
    rev = tx.counter("revision") if rev is None else rev
    compacted = tx.counter("compacted")
    target = max(compacted, rev - max(0, keep))
    if target > compacted:
        tx.drop_changes(target)
    return target


def create(
    tx: RecordTx, obj: R, now: int, now_iso: str, auto_compact_keep: int, fence: Fence | None = None
) -> R:
    kind = object_kind(obj)
    data = obj.dump()
    name = data["metadata"]["name"]
    check_fence(tx, fence, kind, name)
    if tx.row(kind, name) is not None:
        raise AlreadyExists(f"{kind} {name!r} already exists")
    rev = next_revision(tx, auto_compact_keep)
    data["metadata"].update(
        uid=str(uuid.uuid4()), resourceVersion=rev, generation=1, createdAt=now_iso, updatedAt=now_iso
    )
    out = parse_record(data, kind)
    tx.put(kind, out, now, now, insert=True)
    tx.log(rev, "ADDED", out, now)
    return cast(R, out)  # parse_record(kind of obj) is obj's class


def update(
    tx: RecordTx,
    obj: R,
    force: bool,
    now: int,
    now_iso: str,
    auto_compact_keep: int,
    fence: Fence | None = None,
) -> R:
    kind = object_kind(obj)
    check_fence(tx, fence, kind, obj.metadata.name)
    new = obj.dump()
    cur, created = _current(tx, kind, obj.metadata.name)
    expected = obj.metadata.resource_version
    if not (force and expected == 0):
        check_version(kind, cur, expected)
    # Normalise through the model so defaults added since it was stored don't read as a
    # spec change.
    cur = parse_record(cur, kind).dump()
    data = dict(cur)
    meta = dict(cur["metadata"])
    if new.get("spec") != cur.get("spec"):
        meta["generation"] = int(meta.get("generation", 1)) + 1
    data["spec"] = new.get("spec")
    for key in ("labels", "ownerRef", "deletionTimestamp"):
        if key in new["metadata"]:
            meta[key] = new["metadata"][key]
        else:
            meta.pop(key, None)
    rev = next_revision(tx, auto_compact_keep)
    meta.update(resourceVersion=rev, updatedAt=now_iso)
    data["metadata"] = meta
    out = parse_record(data, kind)
    tx.put(kind, out, created, now, insert=False)
    tx.log(rev, "MODIFIED", out, now)
    return cast(R, out)


def update_status(
    tx: RecordTx, obj: R, now: int, now_iso: str, auto_compact_keep: int, fence: Fence | None = None
) -> R:
    kind = object_kind(obj)
    check_fence(tx, fence, kind, obj.metadata.name)
    new = obj.dump()
    cur, created = _current(tx, kind, obj.metadata.name)
    check_version(kind, cur, obj.metadata.resource_version)
    data = dict(cur)
    data["status"] = new.get("status")
    if data["status"] is None:
        data.pop("status")
    rev = next_revision(tx, auto_compact_keep)
    data["metadata"] = dict(cur["metadata"], resourceVersion=rev, updatedAt=now_iso)
    out = parse_record(data, kind)
    tx.put(kind, out, created, now, insert=False)
    tx.log(rev, "MODIFIED", out, now)
    return cast(R, out)


def delete(
    tx: RecordTx,
    kind: str,
    name: str,
    resource_version: int | None,
    now: int,
    auto_compact_keep: int,
    fence: Fence | None = None,
) -> Resource:
    """Remove a record; ``resource_version`` None or 0 means unconditional."""
    check_fence(tx, fence, kind, name)
    cur, _created = _current(tx, kind, name)
    if resource_version:
        check_version(kind, cur, resource_version)
    rev = next_revision(tx, auto_compact_keep)
    cur["metadata"]["resourceVersion"] = rev
    out = parse_record(cur, kind)
    tx.remove(kind, name)
    tx.log(rev, "DELETED", out, now)
    return out
