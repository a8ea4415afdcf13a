"""Log lines and metric marks in the PostgreSQL store (tables ``logs`` and ``marks``).

Log ids come from a sequence, and sequence values can commit out of order: a follower that
read id 11 would never see an id 10 committed a moment later. Appends therefore take a
transaction-scoped advisory lock (``LOGS_LOCK``) so they commit one after another, in id
order — the same guarantee SQLite's single writer gives. The lock is the logs' own: a log
flood never queues behind, or holds up, record writes. Marks need no ordering.
"""

from __future__ import annotations

from typing import Any

import psycopg

from forge.clock import Clock
from forge.store.base import LogLine
from forge.store.logrows import KEEP_LINES_PER_APP, check_mark, log_rows, time_ms
from forge.store.pg_db import PgDb
from forge.store.pg_migrations import LOGS_CHANNEL

LOGS_LOCK = 0x666F7267655F6C  # "forge_l"
COLUMNS = 'id, instance, app, deployment, source, "offset", time, time_text, line'
Conn = psycopg.Connection[Any]


class PgLogStore:
    def __init__(self, db: PgDb, clock: Clock, keep_lines_per_app: int = KEEP_LINES_PER_APP) -> None:
        self._db = db
        self.clock = clock
        self.keep_lines_per_app = keep_lines_per_app

    def append_logs(
        self, instance: str, app: str, deployment: str, source: str, entries: list[tuple[int, str, str]]
    ) -> int:
        """Store lines not stored before; returns how many were new (duplicates are skipped)."""
        rows = log_rows(self.clock, instance, app, deployment, source, entries)
        if not rows:
            return 0
        columns = [list(c) for c in zip(*rows, strict=True)]

        def tx(conn: Conn) -> int:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOGS_LOCK,))
            cur = conn.execute(
                'INSERT INTO logs (instance, app, deployment, source, "offset", time, time_text, line) '
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], "
                "%s::bigint[], %s::text[], %s::text[]) ON CONFLICT DO NOTHING",
                columns,
            )
            added = max(0, cur.rowcount)
            if added:
                # Retention per app: everything older than its newest N lines goes.
                conn.execute(
                    "DELETE FROM logs WHERE app = %s AND id <= (SELECT id FROM logs WHERE app = %s "
                    "ORDER BY id DESC OFFSET %s LIMIT 1)",
                    (app, app, self.keep_lines_per_app),
                )
            return added

        return self._db.write(tx)

    def read_logs(
        self,
        app: str,
        deployment: str | None = None,
        source: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        since_time: float | str | None = None,
    ) -> list[LogLine]:
        """Lines of ``app`` with id > ``after_id`` (and time ≥ ``since_time``), oldest first."""
        sql = "SELECT id, time_text, instance, deployment, source, line FROM logs WHERE app = %s AND id > %s"
        args: list[Any] = [app, after_id]
        if deployment:
            sql += " AND deployment = %s"
            args.append(deployment)
        if source:
            sql += " AND source = %s"
            args.append(source)
        if since_time is not None:
            sql += " AND time >= %s"
            args.append(time_ms(since_time))
        sql += " ORDER BY id LIMIT %s"
        args.append(max(0, limit))
        rows = self._db.read(lambda conn: conn.execute(sql.encode(), args).fetchall())
        return [LogLine(*r) for r in rows]

    def wait_logs(self, after_id: int, timeout: float = 10.0) -> bool:
        """Block until some line with id > ``after_id`` exists (any app) or ``timeout`` passes."""
        return self._db.wait_for(LOGS_CHANNEL, lambda: self.last_log_id() > after_id, timeout)

    def last_log_id(self) -> int:
        row = self._db.read(lambda conn: conn.execute("SELECT MAX(id) FROM logs").fetchone())
        return int(row[0] or 0) if row else 0

    def prune_logs(self, before_time: float | str) -> int:
        """Delete lines older than ``before_time``; returns how many went."""
        cutoff = time_ms(before_time)
        return self._db.write(
            lambda conn: max(0, conn.execute("DELETE FROM logs WHERE time < %s", (cutoff,)).rowcount)
        )

    def delete_app_logs(self, app: str) -> int:
        """Delete every line of ``app`` (the App was deleted); returns how many went."""
        return self._db.write(
            lambda conn: max(0, conn.execute("DELETE FROM logs WHERE app = %s", (app,)).rowcount)
        )

    # ------------------------------------------------------------------ migrate-store

    def dump(self) -> list[tuple[Any, ...]]:
        return self._db.read(
            lambda conn: conn.execute(f"SELECT {COLUMNS} FROM logs ORDER BY id".encode()).fetchall()
        )

    def load(self, rows: list[tuple[Any, ...]]) -> None:
        def tx(conn: Conn) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO logs ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)".encode(), rows
                )
            # Explicit ids leave the sequence behind: move it past them.
            conn.execute(
                "SELECT setval(pg_get_serial_sequence('logs', 'id'), "
                "COALESCE((SELECT MAX(id) FROM logs), 0) + 1, false)"
            )

        self._db.write(tx)

    def clear(self) -> None:
        self._db.write(lambda conn: conn.execute("DELETE FROM logs"))


class PgMarkStore:
    def __init__(self, db: PgDb) -> None:
        self._db = db

    def mark(self, metric: str, uid: str, label: str, value: float | None = None) -> bool:
        """Record that ``uid`` reached ``label`` of ``metric``; True if it was not marked before."""
        check_mark(metric, uid)
        args = (metric, uid, label, None if value is None else float(value))
        return self._db.write(
            lambda conn: (
                conn.execute(
                    "INSERT INTO marks (metric, uid, label, value) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    args,
                ).rowcount
                == 1
            )
        )

    def tally(self, metric: str) -> dict[str, int]:
        """How many records reached each label of ``metric``."""
        rows = self._db.read(
            lambda conn: conn.execute(
                "SELECT label, COUNT(*) FROM marks WHERE metric = %s GROUP BY label ORDER BY label", (metric,)
            ).fetchall()
        )
        return {str(label): int(n) for label, n in rows}

    def observations(self, metric: str, label: str) -> list[float]:
        """The values marked for ``metric``/``label`` (marks without a value are left out)."""
        rows = self._db.read(
            lambda conn: conn.execute(
                "SELECT value FROM marks WHERE metric = %s AND label = %s AND value IS NOT NULL ORDER BY value",
                (metric, label),
            ).fetchall()
        )
        return [float(r[0]) for r in rows]

    # ------------------------------------------------------------------ migrate-store

    def dump(self) -> list[tuple[Any, ...]]:
        return self._db.read(
            lambda conn: conn.execute(
                "SELECT metric, uid, label, value FROM marks ORDER BY metric, uid, label"
            ).fetchall()
        )

    def load(self, rows: list[tuple[Any, ...]]) -> None:
        def tx(conn: Conn) -> None:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO marks (metric, uid, label, value) VALUES (%s, %s, %s, %s)", rows)

        self._db.write(tx)

    def clear(self) -> None:
        self._db.write(lambda conn: conn.execute("DELETE FROM marks"))
