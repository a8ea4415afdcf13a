"""Per-app time series in the PostgreSQL store (tables ``req_points``, ``usage_points`` and
``series_batches``, created by migration 2).

Every API host writes into, and reads from, these same tables, so two hosts behind one store
answer ``GET /apps/APP/metrics`` alike whichever of them a proxy or an agent reported to.
Points are additive upserts (``INSERT … ON CONFLICT DO UPDATE``: atomic per row under
concurrency) written in key order in one transaction with the batch id; a retried batch that
another host is committing at that moment waits on the batch id's row and then finds it taken.
Pruning is as SQLite's (``forge.store.seriesrows``).
"""

from __future__ import annotations

from typing import Any

import psycopg

from forge.appmetrics import RequestSample
from forge.clock import Clock
from forge.series import RequestPoint, UsagePoint, UsageSample
from forge.store import seriesrows as rows
from forge.store.pg_db import PgDb

TABLES = ("req_points", "usage_points", "series_batches")
Conn = psycopg.Connection[Any]


class PgSeriesStore:
    def __init__(self, db: PgDb, clock: Clock) -> None:
        self._db = db
        self.clock = clock
        self._pruned = float("-inf")

    def add_requests(self, source: str, batch_id: str, samples: list[RequestSample]) -> bool:
        """Add a batch of request samples; False (nothing added) when ``source`` sent
        ``batch_id`` before."""
        now = self.clock.now()
        return self._add(source, batch_id, rows.upsert_requests("%s"), rows.request_rows(samples, now), now)

    def add_usage(self, source: str, batch_id: str, samples: list[tuple[str, UsageSample]]) -> bool:
        """Add a batch of ``(app, usage sample)``; False when ``source`` sent ``batch_id`` before."""
        now = self.clock.now()
        sql = rows.upsert_usage("%s", "GREATEST")
        return self._add(source, batch_id, sql, rows.usage_rows(samples, now), now)

    def _add(self, source: str, batch_id: str, sql: str, values: list[tuple[Any, ...]], now: float) -> bool:
        def tx(conn: Conn) -> bool:
            if conn.execute(rows.claim_batch("%s"), (source, batch_id, int(now))).rowcount != 1:
                return False
            if values:
                with conn.cursor() as cur:
                    cur.executemany(sql.encode(), values)
            return True

        added = self._db.write(tx)
        if added:
            mono = self.clock.monotonic()
            if mono - self._pruned >= rows.PRUNE_EVERY_SECONDS:
                self._pruned = mono
                self.prune_series(now)
        return added

    def read_requests(self, app: str, step: int, since: int, until: int) -> list[RequestPoint]:
        """Request points of ``app`` at resolution ``step`` with since ≤ at ≤ until, oldest first."""
        sql = rows.select_requests("%s").encode()
        got = self._db.read(lambda conn: conn.execute(sql, (app, step, since, until)).fetchall())
        return [rows.request_point(r) for r in got]

    def read_usage(self, app: str, step: int, since: int, until: int) -> list[UsagePoint]:
        """Usage points of ``app``'s Instances at resolution ``step``, oldest first."""
        sql = rows.select_usage("%s").encode()
        got = self._db.read(lambda conn: conn.execute(sql, (app, step, since, until)).fetchall())
        return [rows.usage_point(r) for r in got]

    def read_app_usage(self, app: str, step: int, since: int, until: int) -> list[UsagePoint]:
        """Usage of all of ``app``'s Instances together, one point per ``at`` (``instance`` "")."""
        sql = rows.select_app_usage("%s").encode()
        got = self._db.read(lambda conn: conn.execute(sql, (app, step, since, until)).fetchall())
        return [rows.usage_point(r) for r in got]

    def prune_series(self, now: float | None = None) -> int:
        """Delete points past their retention and batch ids past theirs; returns rows deleted."""
        now = self.clock.now() if now is None else now

        def tx(conn: Conn) -> int:
            gone = 0
            for table, step, oldest in rows.prune_cutoffs(now):
                sql = f"DELETE FROM {table} WHERE step = %s AND t < %s".encode()
                gone += max(0, conn.execute(sql, (step, oldest)).rowcount)
            cut = rows.batch_cutoff(now)
            return gone + max(0, conn.execute("DELETE FROM series_batches WHERE t < %s", (cut,)).rowcount)

        return self._db.write(tx)

    def delete_app_series(self, app: str) -> int:
        """Delete every point of ``app`` (the App was deleted); returns how many went."""

        def tx(conn: Conn) -> int:
            return sum(
                max(0, conn.execute(f"DELETE FROM {t} WHERE app = %s".encode(), (app,)).rowcount)
                for t in TABLES[:2]
            )

        return self._db.write(tx)

    # ------------------------------------------------------------------ migrate-store

    def dump(self) -> list[tuple[Any, ...]]:
        """Every row as (table, *columns), in key order."""

        def read(conn: Conn) -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            for table in TABLES:
                got = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3".encode()).fetchall()
                out += [(table, *r) for r in got]
            return out

        return self._db.read(read)

    def load(self, dumped: list[tuple[Any, ...]]) -> None:
        def tx(conn: Conn) -> None:
            for row in dumped:
                marks = ", ".join(["%s"] * (len(row) - 1))
                conn.execute(f"INSERT INTO {row[0]} VALUES ({marks})".encode(), row[1:])

        self._db.write(tx)

    def clear(self) -> None:
        def tx(conn: Conn) -> None:
            for table in TABLES:
                conn.execute(f"DELETE FROM {table}".encode())

        self._db.write(tx)
