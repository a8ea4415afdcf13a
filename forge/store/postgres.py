"""The PostgreSQL store backend (``FORGE_STORE_URL=postgresql://…``), for several API servers
and controller managers sharing one store. Same semantics as SQLite (``forge.store.base``,
written once in ``forge.store.records``); this module holds PostgreSQL's SQL only.

**One global, strictly increasing revision, committed in order.** A plain sequence would not
do: two transactions can take revisions 5 and 6 and commit 6 first, and a watcher reading
``revision > 4`` in between would skip 5 for ever. Every record write therefore starts by
locking the single ``counters`` row ``revision`` (``SELECT … FOR UPDATE``) and increments it in
the same transaction: writers are serialised on that row lock, which PostgreSQL releases only
after the commit is visible, so a reader that sees revision N sees every revision below it.
The lock is taken before the record is read, so the compare-and-swap on ``resourceVersion``
reads the latest committed state (READ COMMITTED: each statement after the lock sees every
commit before it).

**Watch** reads the ``changes`` log (one statement: the compacted counter and the batch from
one snapshot) and blocks on ``LISTEN forge_changes`` (``forge.store.pg_db``): a notification is
a hint, the catch-up read is the truth, so a lost notification only delays an event until the
listener reconnects or the resync interval passes — it never loses one.

Reads run as single statements in autocommit (one snapshot each, no transaction round
trips). Connection loss and restarts are retried with bounded back-off; see ``PgDb``.
"""

from __future__ import annotations

import builtins
import json
from typing import Any, TypeVar, overload

import psycopg

from forge.clock import Clock, SystemClock
from forge.errors import Gone
from forge.models import Resource, parse_record
from forge.store import records
from forge.store.base import EventType, Fence, LogsAndMarks, WatchEvent, selector_matches
from forge.store.pg_db import RESYNC_SECONDS, RETRY_SECONDS, PgDb
from forge.store.pg_logs import PgLogStore, PgMarkStore
from forge.store.pg_migrations import CHANGES_CHANNEL, LOGS_CHANNEL, migrate
from forge.store.pg_series import PgSeriesStore
from forge.store.records import AUTO_COMPACT_KEEP, WATCH_LIMIT, resolve_kind

R = TypeVar("R", bound=Resource)
Conn = psycopg.Connection[Any]

RECORD_COLUMNS = "kind, name, uid, revision, generation, created, updated, labels, data"
CHANGE_COLUMNS = "revision, kind, name, type, time, data"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _PgTx:
    """``records.RecordTx`` over one transaction that holds the revision row lock."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        # The revision row lock serialises every writer; the counters read under it stay
        # true for the whole transaction (only this transaction can move them now).
        rows = conn.execute(
            "SELECT name, value FROM counters WHERE name IN ('revision', 'compacted') "
            "ORDER BY name FOR UPDATE"
        ).fetchall()
        self._counters = {str(n): int(v) for n, v in rows}

    def row(self, kind: str, name: str) -> tuple[dict[str, Any], int] | None:
        row = self.conn.execute(
            "SELECT data, created FROM records WHERE kind = %s AND name = %s", (kind, name)
        ).fetchone()
        return None if row is None else (json.loads(row[0]), int(row[1]))

    def counter(self, name: str) -> int:
        return self._counters[name]

    def next_revision(self) -> int:
        row = self.conn.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value"
        ).fetchone()
        assert row is not None
        self._counters["revision"] = int(row[0])
        return int(row[0])

    def put(self, kind: str, obj: Resource, created: int, updated: int, insert: bool) -> None:
        m = obj.metadata
        data, labels = _json(obj.dump()), _json(m.labels)
        if insert:
            self.conn.execute(
                f"INSERT INTO records ({RECORD_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)".encode(),
                (kind, m.name, m.uid, m.resource_version, m.generation, created, updated, labels, data),
            )
        else:
            self.conn.execute(
                "UPDATE records SET revision = %s, generation = %s, updated = %s, labels = %s::jsonb, data = %s "
                "WHERE kind = %s AND name = %s",
                (m.resource_version, m.generation, updated, labels, data, kind, m.name),
            )

    def remove(self, kind: str, name: str) -> None:
        self.conn.execute("DELETE FROM records WHERE kind = %s AND name = %s", (kind, name))

    def log(self, rev: int, type_: EventType, obj: Resource, now: int) -> None:
        self.conn.execute(
            f"INSERT INTO changes ({CHANGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)".encode(),
            (rev, obj.KIND, obj.metadata.name, type_, now, _json(obj.dump())),
        )

    def drop_changes(self, upto: int) -> None:
        self.conn.execute("DELETE FROM changes WHERE revision <= %s", (upto,))
        self.conn.execute("UPDATE counters SET value = %s WHERE name = 'compacted'", (upto,))
        self._counters["compacted"] = upto


class PostgresStore(LogsAndMarks):
    def __init__(
        self,
        url: str,
        clock: Clock | None = None,
        *,
        auto_compact_keep: int = AUTO_COMPACT_KEEP,
        retry_seconds: float = RETRY_SECONDS,
        resync_seconds: float = RESYNC_SECONDS,
        pool_size: int = 10,
    ) -> None:
        self.clock = clock or SystemClock()
        self.auto_compact_keep = auto_compact_keep
        self.fence: Fence | None = None  # set by a leader: every write checks it (see base.Fence)
        self._db = PgDb(
            url,
            channels=(CHANGES_CHANNEL, LOGS_CHANNEL),
            max_size=pool_size,
            retry_seconds=retry_seconds,
            resync_seconds=resync_seconds,
        )
        self.url = self._db.name  # redacted: safe to log
        try:
            self.schema_version, self.migrated = self._db.retrying(self._migrate)
        except BaseException:
            self._db.close()
            raise
        self.logs = PgLogStore(self._db, self.clock)
        self.marks = PgMarkStore(self._db)
        self.series = PgSeriesStore(self._db, self.clock)

    def _migrate(self) -> tuple[int, int]:
        with self._db.connect(application_name="forge-migrate") as conn:
            return migrate(conn, self.clock)

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    # ------------------------------------------------------------------ reads

    @overload
    def get(self, kind: type[R], name: str) -> R: ...
    @overload
    def get(self, kind: str, name: str) -> Resource: ...

    def get(self, kind: str | type[Resource], name: str) -> Resource:
        kind = resolve_kind(kind)
        row = self._db.read(
            lambda conn: conn.execute(
                "SELECT data FROM records WHERE kind = %s AND name = %s", (kind, name)
            ).fetchone()
        )
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
        # One statement, one snapshot: the revision is the one the items were read at (the
        # LEFT JOIN from the counter row answers a row even when no record matches).
        sql = "SELECT c.value, r.data FROM counters c LEFT JOIN records r ON r.kind = %s"
        args: list[Any] = [kind]
        for key, value in (selector or {}).items():
            sql += " AND r.labels ->> %s = %s"
            args += [key, value]
        sql += " WHERE c.name = 'revision' ORDER BY r.name"
        rows = self._db.read(lambda conn: conn.execute(sql.encode(), args).fetchall())
        rev = int(rows[0][0]) if rows else 0
        items = [parse_record(json.loads(data), kind) for _, data in rows if data is not None]
        return [o for o in items if selector_matches(o.metadata.labels, selector)], rev

    def _counter(self, name: str) -> int:
        row = self._db.read(
            lambda conn: conn.execute("SELECT value FROM counters WHERE name = %s", (name,)).fetchone()
        )
        return int(row[0]) if row else 0

    def revision(self) -> int:
        return self._counter("revision")

    def compacted_revision(self) -> int:
        return self._counter("compacted")

    def ping(self) -> None:
        self._db.read(lambda conn: conn.execute("SELECT 1").fetchone())

    # ------------------------------------------------------------------ writes

    def create(self, obj: R) -> R:
        now, now_iso = self._now()
        return self._db.write(
            lambda conn: records.create(_PgTx(conn), obj, now, now_iso, self.auto_compact_keep, self.fence)
        )

    def update(self, obj: R, force: bool = False) -> R:
        now, now_iso = self._now()
        return self._db.write(
            lambda conn: records.update(
                _PgTx(conn), obj, force, now, now_iso, self.auto_compact_keep, self.fence
            )
        )

    def update_status(self, obj: R) -> R:
        now, now_iso = self._now()
        return self._db.write(
            lambda conn: records.update_status(
                _PgTx(conn), obj, now, now_iso, self.auto_compact_keep, self.fence
            )
        )

    def delete(self, kind: str | type[Resource], name: str, resource_version: int | None = None) -> Resource:
        """Remove a record; ``resource_version`` None or 0 means unconditional."""
        kind = resolve_kind(kind)
        now, _ = self._now()
        return self._db.write(
            lambda conn: records.delete(
                _PgTx(conn), kind, name, resource_version, now, self.auto_compact_keep, self.fence
            )
        )

    # ------------------------------------------------------------------ watch and compaction

    def watch(
        self, kind: str | None, since: int, timeout: float = 10.0, limit: int = WATCH_LIMIT
    ) -> builtins.list[WatchEvent]:
        """Changes with revision > ``since`` (oldest first, at most ``limit``), blocking up to
        ``timeout`` seconds while there are none; ``Gone`` when ``since`` was compacted away."""
        kind = resolve_kind(kind) if kind else None
        sql = (
            "SELECT c.value, ch.revision, ch.type, ch.kind, ch.data FROM counters c LEFT JOIN LATERAL "
            "(SELECT revision, type, kind, data FROM changes WHERE revision > %s"
        )
        sql += " AND kind = %s" if kind else ""
        sql += " ORDER BY revision LIMIT %s) ch ON true WHERE c.name = 'compacted' ORDER BY ch.revision"
        args: tuple[Any, ...] = (since, kind, limit) if kind else (since, limit)

        def check() -> list[tuple[Any, ...]]:
            rows = self._db.read(lambda conn: conn.execute(sql.encode(), args).fetchall())
            compacted = int(rows[0][0]) if rows else 0
            if since < compacted:
                raise Gone(records.gone_message(since, compacted))
            return [r[1:] for r in rows if r[1] is not None]

        rows = self._db.wait_for(CHANGES_CHANNEL, check, timeout)
        return [
            WatchEvent(type=t, object=parse_record(json.loads(d), k), revision=int(r)) for r, t, k, d in rows
        ]

    def compact(self, keep: int = 10_000) -> int:
        """Drop all but the newest ``keep`` changes; returns the compacted revision."""
        return self._db.write(lambda conn: records.compact(_PgTx(conn), keep))

    def waiting(self) -> int:
        """How many watch/wait_logs callers are blocked right now."""
        return self._db.waiting()

    def listener_pid(self) -> int | None:
        return self._db.listener_pid()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ migrate-store

    def dump_records(
        self,
    ) -> tuple[dict[str, int], builtins.list[tuple[Any, ...]], builtins.list[tuple[Any, ...]]]:
        """Counters, record rows and change rows, read in one snapshot (``forge.store.transfer``)."""

        def tx(conn: Conn) -> tuple[dict[str, int], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                counters = {
                    str(n): int(v) for n, v in conn.execute("SELECT name, value FROM counters").fetchall()
                }
                recs = conn.execute(
                    "SELECT kind, name, uid, revision, generation, created, updated, labels::text, data "
                    "FROM records ORDER BY revision"
                ).fetchall()
                changes = conn.execute(
                    f"SELECT {CHANGE_COLUMNS} FROM changes ORDER BY revision".encode()
                ).fetchall()
            finally:
                if not conn.broken:
                    conn.execute("ROLLBACK")
            return counters, recs, changes

        return self._db.read(tx)

    def load_records(
        self,
        counters: dict[str, int],
        recs: builtins.list[tuple[Any, ...]],
        changes: builtins.list[tuple[Any, ...]],
    ) -> None:
        def tx(conn: Conn) -> None:
            _PgTx(conn)  # the revision lock: no store write interleaves with the copy
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO records ({RECORD_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)".encode(),
                    recs,
                )
                cur.executemany(
                    f"INSERT INTO changes ({CHANGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)".encode(),
                    changes,
                )
                cur.executemany(
                    "UPDATE counters SET value = %s WHERE name = %s", [(v, n) for n, v in counters.items()]
                )

        self._db.write(tx)

    def clear_records(self) -> None:
        def tx(conn: Conn) -> None:
            _PgTx(conn)
            conn.execute("DELETE FROM records")
            conn.execute("DELETE FROM changes")
            conn.execute("UPDATE counters SET value = 0")

        self._db.write(tx)

    def _now(self) -> tuple[int, str]:
        now = self.clock.now()
        return int(now * 1000), self.clock.now_iso()
