"""The embedded store backend: records, revisions and the change log in one SQLite file.

WAL mode (readers never block the writer), ``synchronous=FULL`` (a write that returned
survives a crash), a busy timeout for the processes sharing the file (gunicorn workers,
``forge controllers``). Semantics are those of ``forge.store.base``; the conformance suite
in tests/store pins them.

Every write runs in one ``BEGIN IMMEDIATE`` transaction that takes the next global
revision from ``counters``, writes the record and appends the change to ``changes`` (the
watch log), so revisions are gap-free and committed in order: a reader that sees revision N
sees every revision below it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from typing import Any

from forge.clock import Clock, SystemClock
from forge.errors import AlreadyExists, Conflict, Gone, Invalid, NotFound
from forge.models import LABEL_KEY, Resource, kind_class, parse_record
from forge.store.base import EventType, WatchEvent, selector_matches
from forge.store.migrations import migrate
from forge.store.sqlite_db import SqliteDb
from forge.store.sqlite_logs import SCHEMA as LOGS_SCHEMA
from forge.store.sqlite_logs import SqliteLogs, logs_path
from forge.store.sqlite_marks import SqliteMarks

WATCH_LIMIT = 1000  # events per watch call; callers re-watch from the last revision
AUTO_COMPACT_KEEP = 100_000  # compact when the log holds twice this many changes


def _kinds_since(conn: sqlite3.Connection, last: int | None) -> tuple[int, set[str] | None]:
    """The tailer's question: kinds changed after revision ``last`` (None: first look, unknown)."""
    if last is None:
        row = conn.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()
        return int(row[0]), None
    rows = conn.execute("SELECT revision, kind FROM changes WHERE revision > ? ORDER BY revision", (last,)).fetchall()
    if not rows:
        return last, set()
    return int(rows[-1][0]), {str(r[1]) for r in rows}


def resolve_kind(kind: str) -> str:
    try:
        return kind_class(kind).KIND
    except KeyError:
        raise Invalid(f"unknown kind {kind!r}", [{"path": "kind", "message": f"unknown kind {kind!r}"}]) from None


class SqliteStore(SqliteLogs, SqliteMarks):
    def __init__(
        self,
        path: str,
        clock: Clock | None = None,
        *,
        busy_timeout: float = 10.0,
        poll_seconds: float = 0.01,
        auto_compact_keep: int = AUTO_COMPACT_KEEP,
    ) -> None:
        self.path = path
        self.clock = clock or SystemClock()
        self.auto_compact_keep = auto_compact_keep
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._db = SqliteDb(path, busy_timeout=busy_timeout, poll_seconds=poll_seconds, tags_since=_kinds_since)
        with self._db.conn() as conn:
            try:
                conn.execute("PRAGMA journal_mode = WAL")  # persistent in the file
                self.schema_version = migrate(conn, self.clock)
            except sqlite3.Error as exc:
                self._db.close()
                raise Invalid(f"store {path}: cannot prepare the database: {exc}") from exc
        self.logs_path = logs_path(path)
        self._logs = SqliteDb(self.logs_path, busy_timeout=busy_timeout, poll_seconds=poll_seconds)
        with self._logs.conn() as conn:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                for stmt in LOGS_SCHEMA:
                    conn.execute(stmt)
            except sqlite3.Error as exc:
                self._db.close()
                self._logs.close()
                raise Invalid(f"store {self.logs_path}: cannot prepare the logs database: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # ------------------------------------------------------------------ reads

    def get(self, kind: str, name: str) -> Resource:
        kind = resolve_kind(kind)
        with self._db.read() as conn:
            row = conn.execute("SELECT data FROM records WHERE kind = ? AND name = ?", (kind, name)).fetchone()
        if row is None:
            raise NotFound(f"{kind} {name!r} not found")
        return parse_record(json.loads(row[0]), kind)

    def list(self, kind: str, selector: dict[str, str] | None = None) -> tuple[list[Resource], int]:
        kind = resolve_kind(kind)
        sql = "SELECT data FROM records WHERE kind = ?"
        args: list[Any] = [kind]
        for key, value in (selector or {}).items():
            # json_extract filters inside SQLite for keys that are valid label keys (no quote
            # can break the path); the Python check below keeps the result exact for the rest.
            if LABEL_KEY.match(key):
                sql += " AND json_extract(labels, ?) = ?"
                args += [f'$."{key}"', value]
        sql += " ORDER BY name"
        with self._db.read() as conn:
            rows = conn.execute(sql, args).fetchall()
            rev = self._counter(conn, "revision")
        items = [parse_record(json.loads(r[0]), kind) for r in rows]
        return [o for o in items if selector_matches(o.metadata.labels, selector)], rev

    def revision(self) -> int:
        with self._db.read() as conn:
            return self._counter(conn, "revision")

    def compacted_revision(self) -> int:
        with self._db.read() as conn:
            return self._counter(conn, "compacted")

    def ping(self) -> None:
        with self._db.read() as conn:
            conn.execute("SELECT 1").fetchone()

    # ------------------------------------------------------------------ writes

    def create(self, obj: Resource) -> Resource:
        kind = resolve_kind(obj.KIND or obj.kind)
        data = obj.dump()
        name = data["metadata"]["name"]
        now, now_iso = self._now()
        with self._db.write({kind}) as conn:
            if self._row(conn, kind, name) is not None:
                raise AlreadyExists(f"{kind} {name!r} already exists")
            rev = self._next_revision(conn)
            meta = data["metadata"]
            meta.update(uid=str(uuid.uuid4()), resourceVersion=rev, generation=1, createdAt=now_iso, updatedAt=now_iso)
            out = parse_record(data, kind)
            self._put(conn, kind, out, now, now, insert=True)
            self._log(conn, rev, "ADDED", out, now)
        return out

    def update(self, obj: Resource, force: bool = False) -> Resource:
        kind = resolve_kind(obj.KIND or obj.kind)
        new = obj.dump()
        now, now_iso = self._now()
        with self._db.write({kind}) as conn:
            cur, created = self._current(conn, kind, obj.metadata.name)
            expected = obj.metadata.resource_version
            if not (force and expected == 0):
                self._check_version(kind, cur, expected)
            # Normalise through the model so defaults added since it was stored don't read
            # as a spec change.
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
            rev = self._next_revision(conn)
            meta.update(resourceVersion=rev, updatedAt=now_iso)
            data["metadata"] = meta
            out = parse_record(data, kind)
            self._put(conn, kind, out, created, now, insert=False)
            self._log(conn, rev, "MODIFIED", out, now)
        return out

    def update_status(self, obj: Resource) -> Resource:
        kind = resolve_kind(obj.KIND or obj.kind)
        new = obj.dump()
        now, now_iso = self._now()
        with self._db.write({kind}) as conn:
            cur, created = self._current(conn, kind, obj.metadata.name)
            self._check_version(kind, cur, obj.metadata.resource_version)
            data = dict(cur)
            data["status"] = new.get("status")
            if data["status"] is None:
                data.pop("status")
            rev = self._next_revision(conn)
            data["metadata"] = dict(cur["metadata"], resourceVersion=rev, updatedAt=now_iso)
            out = parse_record(data, kind)
            self._put(conn, kind, out, created, now, insert=False)
            self._log(conn, rev, "MODIFIED", out, now)
        return out

    def delete(self, kind: str, name: str, resource_version: int | None = None) -> Resource:
        """Remove a record; ``resource_version`` None or 0 means unconditional."""
        kind = resolve_kind(kind)
        now, _ = self._now()
        with self._db.write({kind}) as conn:
            cur, _created = self._current(conn, kind, name)
            if resource_version:
                self._check_version(kind, cur, resource_version)
            rev = self._next_revision(conn)
            cur["metadata"]["resourceVersion"] = rev
            out = parse_record(cur, kind)
            conn.execute("DELETE FROM records WHERE kind = ? AND name = ?", (kind, name))
            self._log(conn, rev, "DELETED", out, now)
        return out

    # ------------------------------------------------------------------ watch and compaction

    def watch(
        self, kind: str | None, since: int, timeout: float = 10.0, limit: int = WATCH_LIMIT
    ) -> list[WatchEvent]:
        """Changes with revision > ``since`` (oldest first, at most ``limit``), blocking up to
        ``timeout`` seconds while there are none; ``Gone`` when ``since`` was compacted away."""
        kind = resolve_kind(kind) if kind else None
        sql = "SELECT revision, type, kind, data FROM changes WHERE revision > ?"
        sql += " AND kind = ?" if kind else ""
        sql += " ORDER BY revision LIMIT ?"
        args: tuple[Any, ...] = (since, kind, limit) if kind else (since, limit)

        def check() -> list[tuple[int, str, str, str]]:
            with self._db.read() as conn:
                compacted = self._counter(conn, "compacted")
                if since < compacted:
                    raise Gone(
                        f"revision {since} is older than the oldest kept ({compacted}); list again and "
                        "watch from the list's revision"
                    )
                return conn.execute(sql, args).fetchall()

        rows = self._db.wait_for(check, timeout, tag=kind)
        return [WatchEvent(type=t, object=parse_record(json.loads(d), k), revision=r) for r, t, k, d in rows]

    def compact(self, keep: int = 10_000) -> int:
        """Drop all but the newest ``keep`` changes; returns the compacted revision."""
        with self._db.write() as conn:
            return self._compact(conn, keep)

    def waiting(self) -> int:
        """How many watch/wait_logs callers are blocked right now."""
        return self._db.waiting() + self._logs.waiting()

    def close(self) -> None:
        self._db.close()
        self._logs.close()

    # ------------------------------------------------------------------ helpers

    def _now(self) -> tuple[int, str]:
        now = self.clock.now()
        return int(now * 1000), self.clock.now_iso()

    @staticmethod
    def _counter(conn: sqlite3.Connection, name: str) -> int:
        return int(conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def _next_revision(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value").fetchone()
        rev = int(row[0])
        if self.auto_compact_keep and rev - self._counter(conn, "compacted") > 2 * self.auto_compact_keep:
            self._compact(conn, self.auto_compact_keep, rev)
        return rev

    def _compact(self, conn: sqlite3.Connection, keep: int, rev: int | None = None) -> int:
        rev = self._counter(conn, "revision") if rev is None else rev
        compacted = self._counter(conn, "compacted")
        target = max(compacted, rev - max(0, keep))
        if target > compacted:
            conn.execute("DELETE FROM changes WHERE revision <= ?", (target,))
            conn.execute("UPDATE counters SET value = ? WHERE name = 'compacted'", (target,))
        return target

    @staticmethod
    def _row(conn: sqlite3.Connection, kind: str, name: str) -> tuple[str, int] | None:
        row = conn.execute("SELECT data, created FROM records WHERE kind = ? AND name = ?", (kind, name)).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def _current(self, conn: sqlite3.Connection, kind: str, name: str) -> tuple[dict[str, Any], int]:
        row = self._row(conn, kind, name)
        if row is None:
            raise NotFound(f"{kind} {name!r} not found")
        return json.loads(row[0]), row[1]

    @staticmethod
    def _check_version(kind: str, cur: dict[str, Any], expected: int) -> None:
        stored = int(cur["metadata"]["resourceVersion"])
        if expected != stored:
            name = cur["metadata"]["name"]
            raise Conflict(
                f"{kind} {name!r} was modified: resourceVersion {expected} is stale (current {stored}); "
                "read it again and retry",
                [{"path": "metadata.resourceVersion", "message": f"expected {stored}, got {expected}"}],
            )

    @staticmethod
    def _put(conn: sqlite3.Connection, kind: str, obj: Resource, created: int, updated: int, insert: bool) -> None:
        m = obj.metadata
        data = json.dumps(obj.dump(), separators=(",", ":"))
        labels = json.dumps(m.labels, separators=(",", ":"))
        if insert:
            conn.execute(
                "INSERT INTO records (kind, name, uid, revision, generation, created, updated, labels, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, m.name, m.uid, m.resource_version, m.generation, created, updated, labels, data),
            )
        else:
            conn.execute(
                "UPDATE records SET revision = ?, generation = ?, updated = ?, labels = ?, data = ? "
                "WHERE kind = ? AND name = ?",
                (m.resource_version, m.generation, updated, labels, data, kind, m.name),
            )

    @staticmethod
    def _log(conn: sqlite3.Connection, rev: int, type_: EventType, obj: Resource, now: int) -> None:
        conn.execute(
            "INSERT INTO changes (revision, kind, name, type, time, data) VALUES (?, ?, ?, ?, ?, ?)",
            (rev, obj.KIND, obj.metadata.name, type_, now, json.dumps(obj.dump(), separators=(",", ":"))),
        )
