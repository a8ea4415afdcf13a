"""The embedded store backend: records, revisions and the change log in one SQLite file.

WAL mode (readers never block the writer), ``synchronous=FULL`` (a write that returned
survives a crash), a busy timeout for the processes sharing the file (gunicorn workers,
``forge controllers``). Semantics are those of ``forge.store.base``, written once in
``forge.store.records``; this module holds SQLite's SQL only.

Every write runs in one ``BEGIN IMMEDIATE`` transaction that takes the next global
revision from ``counters``, writes the record and appends the change to ``changes`` (the
watch log), so revisions are gap-free and committed in order: a reader that sees revision N
sees every revision below it. Log lines live in ``forge-logs.db`` beside the records
(``SqliteLogStore``); metric marks in the records file (``SqliteMarkStore``); per-app time
series in ``forge-metrics.db`` (``SqliteSeriesStore``).
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload

from forge.clock import Clock, SystemClock
from forge.errors import Gone, Invalid
from forge.models import LABEL_KEY, LABEL_NODE, Resource, parse_record
from forge.store import records
from forge.store.base import EventType, Fence, LogsAndMarks, WatchEvent, selector_matches
from forge.store.migrations import migrate
from forge.store.records import AUTO_COMPACT_KEEP, WATCH_LIMIT, resolve_kind
from forge.store.sqlite_db import SqliteDb
from forge.store.sqlite_logs import SqliteLogStore, logs_path
from forge.store.sqlite_marks import SqliteMarkStore
from forge.store.sqlite_series import SqliteSeriesStore, series_path

R = TypeVar("R", bound=Resource)

__all__ = ["AUTO_COMPACT_KEEP", "WATCH_LIMIT", "SqliteStore", "resolve_kind"]

RECORD_COLUMNS = "kind, name, uid, revision, generation, created, updated, labels, data"


def node_topic(kind: str, node: str) -> str:
    """The wake-up topic of ``kind`` records labelled with one node: a node agent's watch waits
    on its own, so a write wakes one agent's stream instead of all of them."""
    return f"{kind}/{LABEL_NODE}={node}"


CHANGE_COLUMNS = "revision, kind, name, type, time, data"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _SqliteTx:
    """``records.RecordTx`` over one ``BEGIN IMMEDIATE`` transaction; ``kinds`` collects the
    kinds it logged a change of (whose watchers the commit wakes)."""

    def __init__(self, conn: sqlite3.Connection, kinds: set[str] | None = None) -> None:
        self.conn = conn
        self.kinds: set[str] = set() if kinds is None else kinds

    def row(self, kind: str, name: str) -> tuple[dict[str, Any], int] | None:
        row = self.conn.execute(
            "SELECT data, created FROM records WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        return None if row is None else (json.loads(row[0]), int(row[1]))

    def counter(self, name: str) -> int:
        return int(self.conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def next_revision(self) -> int:
        row = self.conn.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value"
        ).fetchone()
        return int(row[0])

    def put(self, kind: str, obj: Resource, created: int, updated: int, insert: bool) -> None:
        m = obj.metadata
        data, labels = _json(obj.dump()), _json(m.labels)
        if insert:
            self.conn.execute(
                f"INSERT INTO records ({RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, m.name, m.uid, m.resource_version, m.generation, created, updated, labels, data),
            )
        else:
            self.conn.execute(
                "UPDATE records SET revision = ?, generation = ?, updated = ?, labels = ?, data = ? "
                "WHERE kind = ? AND name = ?",
                (m.resource_version, m.generation, updated, labels, data, kind, m.name),
            )

    def remove(self, kind: str, name: str) -> None:
        self.conn.execute("DELETE FROM records WHERE kind = ? AND name = ?", (kind, name))

    def log(self, rev: int, type_: EventType, obj: Resource, now: int) -> None:
        self.kinds.add(obj.KIND)
        node = obj.metadata.labels.get(LABEL_NODE)
        if node is not None:
            self.kinds.add(node_topic(obj.KIND, node))
        self.conn.execute(
            f"INSERT INTO changes ({CHANGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (rev, obj.KIND, obj.metadata.name, type_, now, _json(obj.dump())),
        )

    def drop_changes(self, upto: int) -> None:
        self.conn.execute("DELETE FROM changes WHERE revision <= ?", (upto,))
        self.conn.execute("UPDATE counters SET value = ? WHERE name = 'compacted'", (upto,))


class SqliteStore(LogsAndMarks):
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
        self.fence: Fence | None = None  # set by a leader: every write checks it (see base.Fence)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._tailed: int | None = None  # the revision up to which the tailer reported kinds
        self._db = SqliteDb(
            path, busy_timeout=busy_timeout, poll_seconds=poll_seconds, changed_topics=self._changed_kinds
        )
        with self._db.conn() as conn:
            try:
                conn.execute("PRAGMA journal_mode = WAL")  # persistent in the file
                self.schema_version = migrate(conn, self.clock)
            except sqlite3.Error as exc:
                self._db.close()
                raise Invalid(f"store {path}: cannot prepare the database: {exc}") from exc
        self.logs_path = logs_path(path)
        self._logs = SqliteDb(self.logs_path, busy_timeout=busy_timeout, poll_seconds=poll_seconds)
        self.logs = SqliteLogStore(self._logs, self.clock)
        self.marks = SqliteMarkStore(self._db)
        self.series_path = series_path(path)
        self._series = SqliteDb(self.series_path, busy_timeout=busy_timeout, poll_seconds=poll_seconds)
        self.series = SqliteSeriesStore(self._series, self.clock)
        try:
            self.logs.prepare()
            self.series.prepare()
        except sqlite3.Error as exc:
            self._db.close()
            self._logs.close()
            self._series.close()
            raise Invalid(f"store {path}: cannot prepare the logs or metrics database: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    @property
    def url(self) -> str:
        return f"sqlite:///{os.path.abspath(self.path).lstrip('/')}"

    # ------------------------------------------------------------------ reads

    @overload
    def get(self, kind: type[R], name: str) -> R: ...
    @overload
    def get(self, kind: str, name: str) -> Resource: ...

    def get(self, kind: str | type[Resource], name: str) -> Resource:
        kind = resolve_kind(kind)
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT data FROM records WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
        if row is None:
            raise records.not_found(kind, name)
        return parse_record(json.loads(row[0]), kind)

    @overload
    def list(self, kind: type[R], selector: dict[str, str] | None = None) -> tuple[list[R], int]: ...
    @overload
    def list(self, kind: str, selector: dict[str, str] | None = None) -> tuple[list[Resource], int]: ...

    def list(
        self, kind: str | type[Resource], selector: dict[str, str] | None = None
    ) -> tuple[list[Any], int]:
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
            rev = _SqliteTx(conn).counter("revision")
        items = [parse_record(json.loads(r[0]), kind) for r in rows]
        return [o for o in items if selector_matches(o.metadata.labels, selector)], rev

    def revision(self) -> int:
        with self._db.read() as conn:
            return _SqliteTx(conn).counter("revision")

    def compacted_revision(self) -> int:
        with self._db.read() as conn:
            return _SqliteTx(conn).counter("compacted")

    def ping(self) -> None:
        with self._db.read() as conn:
            conn.execute("SELECT 1").fetchone()

    def _changed_kinds(self, conn: sqlite3.Connection) -> set[str] | None:
        """The tailer's question after another connection committed: the kinds changed since it
        last asked (None — wake every watcher — on its first question or across a compaction)."""
        since = self._tailed
        tx = _SqliteTx(conn)
        self._tailed = tx.counter("revision")
        if since is None or since < tx.counter("compacted"):
            return None
        rows = conn.execute(
            "SELECT DISTINCT kind, json_extract(data, ?) FROM changes WHERE revision > ? AND revision <= ?",
            (f'$.metadata.labels."{LABEL_NODE}"', since, self._tailed),
        ).fetchall()
        return {str(r[0]) for r in rows} | {
            node_topic(str(r[0]), str(r[1])) for r in rows if r[1] is not None
        }

    # ------------------------------------------------------------------ writes

    @contextmanager
    def _write(self) -> Iterator[_SqliteTx]:
        kinds: set[str] = set()
        with self._db.write(kinds) as conn:
            yield _SqliteTx(conn, kinds)

    def create(self, obj: R) -> R:
        now, now_iso = self._now()
        with self._write() as tx:
            return records.create(tx, obj, now, now_iso, self.auto_compact_keep, self.fence)

    def update(self, obj: R, force: bool = False) -> R:
        now, now_iso = self._now()
        with self._write() as tx:
            return records.update(tx, obj, force, now, now_iso, self.auto_compact_keep, self.fence)

    def update_status(self, obj: R) -> R:
        now, now_iso = self._now()
        with self._write() as tx:
            return records.update_status(tx, obj, now, now_iso, self.auto_compact_keep, self.fence)

    def delete(self, kind: str | type[Resource], name: str, resource_version: int | None = None) -> Resource:
        """Remove a record; ``resource_version`` None or 0 means unconditional."""
        kind = resolve_kind(kind)
        now, _ = self._now()
        with self._write() as tx:
            return records.delete(tx, kind, name, resource_version, now, self.auto_compact_keep, self.fence)

    # ------------------------------------------------------------------ watch and compaction

    def watch(
        self, kind: str | None, since: int, timeout: float = 10.0, limit: int = WATCH_LIMIT
    ) -> builtins.list[WatchEvent]:
        """Changes with revision > ``since`` (oldest first, at most ``limit``), blocking up to
        ``timeout`` seconds while there are none; ``Gone`` when ``since`` was compacted away."""
        kind = resolve_kind(kind) if kind else None
        sql = "SELECT revision, type, kind, data FROM changes WHERE revision > ?"
        sql += " AND kind = ?" if kind else ""
        sql += " ORDER BY revision LIMIT ?"
        args: tuple[Any, ...] = (since, kind, limit) if kind else (since, limit)

        def check() -> list[tuple[int, EventType, str, str]]:
            with self._db.read() as conn:
                compacted = _SqliteTx(conn).counter("compacted")
                if since < compacted:
                    raise Gone(records.gone_message(since, compacted))
                return conn.execute(sql, args).fetchall()

        rows = self._db.wait_for(check, timeout, topic=kind)
        return [WatchEvent(type=t, object=parse_record(json.loads(d), k), revision=r) for r, t, k, d in rows]

    def watch_selected(
        self, kind: str, since: int, timeout: float, selector: dict[str, str], limit: int = WATCH_LIMIT
    ) -> tuple[builtins.list[WatchEvent], int]:
        """``watch`` of the changes whose record matches ``selector``, filtered inside SQLite, and
        the revision the scan reached (a watcher resumes from there, past the changes it was not
        shown). 200 node agents watching their own Instances parse only their own changes, and
        with a ``forge.dev/node`` selector only that node's changes wake the watcher."""
        kind = resolve_kind(kind)
        match, match_args = "1", []
        for key, value in selector.items():
            if LABEL_KEY.match(key):  # as in list: the Python check below covers any other key
                match += " AND json_extract(data, ?) = ?"
                match_args += [f'$.metadata.labels."{key}"', value]
        sql = (
            f"SELECT revision, type, CASE WHEN {match} THEN data END FROM changes "
            "WHERE kind = ? AND revision > ? ORDER BY revision LIMIT ?"
        )
        reached = since

        def check() -> list[tuple[int, EventType, str]]:
            nonlocal reached
            with self._db.read() as conn:
                compacted = _SqliteTx(conn).counter("compacted")
                if reached < compacted:
                    raise Gone(records.gone_message(reached, compacted))
                rows = conn.execute(sql, (*match_args, kind, reached, limit)).fetchall()
            if rows:
                reached = max(reached, int(rows[-1][0]))
            return [r for r in rows if r[2] is not None]

        node = selector.get(LABEL_NODE)
        rows = self._db.wait_for(check, timeout, topic=kind if node is None else node_topic(kind, node))
        events = [
            WatchEvent(type=t, object=parse_record(json.loads(d), kind), revision=r) for r, t, d in rows
        ]
        return [e for e in events if selector_matches(e.object.metadata.labels, selector)], reached

    def compact(self, keep: int = 10_000) -> int:
        """Drop all but the newest ``keep`` changes; returns the compacted revision."""
        with self._write() as tx:
            out = records.compact(tx, keep)
        self._db.notify()  # watchers behind the new floor learn it (Gone) now
        return out

    def waiting(self) -> int:
        """How many watch/wait_logs callers are blocked right now."""
        return self._db.waiting() + self._logs.waiting()

    def wake_waiters(self) -> None:
        """Every blocked watch/wait_logs call returns now, as if it timed out (a server ending
        its streams)."""
        self._db.interrupt()
        self._logs.interrupt()

    def close(self) -> None:
        self._db.close()
        self._logs.close()
        self._series.close()

    # ------------------------------------------------------------------ migrate-store

    def dump_records(
        self,
    ) -> tuple[dict[str, int], builtins.list[tuple[Any, ...]], builtins.list[tuple[Any, ...]]]:
        """Counters, record rows and change rows, read in one snapshot (``forge.store.transfer``)."""
        with self._db.read() as conn:
            tx = _SqliteTx(conn)
            counters = {name: tx.counter(name) for name in ("revision", "compacted")}
            recs = conn.execute(f"SELECT {RECORD_COLUMNS} FROM records ORDER BY revision").fetchall()
            changes = conn.execute(f"SELECT {CHANGE_COLUMNS} FROM changes ORDER BY revision").fetchall()
        return counters, recs, changes

    def load_records(
        self,
        counters: dict[str, int],
        recs: builtins.list[tuple[Any, ...]],
        changes: builtins.list[tuple[Any, ...]],
    ) -> None:
        with self._db.write() as conn:
            conn.executemany(
                f"INSERT INTO records ({RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", recs
            )
            conn.executemany(f"INSERT INTO changes ({CHANGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", changes)
            for name, value in counters.items():
                conn.execute("UPDATE counters SET value = ? WHERE name = ?", (value, name))

    def clear_records(self) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM records")
            conn.execute("DELETE FROM changes")
            conn.execute("UPDATE counters SET value = 0")

    def _now(self) -> tuple[int, str]:
        now = self.clock.now()
        return int(now * 1000), self.clock.now_iso()
