"""Per-app time series (request and usage points) in a SQLite database of their own.

``forge-metrics.db`` sits beside ``forge.db`` (as ``forge-logs.db`` does): every proxy and
every agent adds points every 10 s, and those writes must never queue behind, or hold up,
the records' write lock. Size is bounded by time: points older than their resolution's
retention and batch ids older than theirs are deleted by the writes themselves, at most once
a minute (``PRUNE_EVERY_SECONDS``). What both backends share is in ``forge.store.seriesrows``.
"""

from __future__ import annotations

import os
from typing import Any

from forge.appmetrics import RequestSample
from forge.clock import Clock
from forge.series import RequestPoint, UsagePoint, UsageSample
from forge.store import seriesrows as rows
from forge.store.sqlite_db import SqliteDb

TABLES = ("req_points", "usage_points", "series_batches")


def series_path(records_path: str) -> str:
    """``forge.db`` → ``forge-metrics.db``."""
    root, ext = os.path.splitext(records_path)
    return f"{root}-metrics{ext or '.db'}"


class SqliteSeriesStore:
    def __init__(self, db: SqliteDb, clock: Clock) -> None:
        self._db = db
        self.clock = clock
        self._pruned = float("-inf")  # monotonic time of the last prune by this process

    def prepare(self) -> None:
        with self._db.conn() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            for stmt in rows.schema("REAL"):
                conn.execute(stmt)

    def add_requests(self, source: str, batch_id: str, samples: list[RequestSample]) -> bool:
        """Add a batch of request samples; False (nothing added) when ``source`` sent
        ``batch_id`` before."""
        now = self.clock.now()
        return self._add(source, batch_id, rows.upsert_requests("?"), rows.request_rows(samples, now), now)

    def add_usage(self, source: str, batch_id: str, samples: list[tuple[str, UsageSample]]) -> bool:
        """Add a batch of ``(app, usage sample)``; False when ``source`` sent ``batch_id`` before."""
        now = self.clock.now()
        return self._add(source, batch_id, rows.upsert_usage("?", "max"), rows.usage_rows(samples, now), now)

    def _add(self, source: str, batch_id: str, sql: str, values: list[tuple[Any, ...]], now: float) -> bool:
        with self._db.write(set()) as conn:  # nobody waits on points
            if conn.execute(rows.claim_batch("?"), (source, batch_id, int(now))).rowcount != 1:
                return False
            conn.executemany(sql, values)
        self._maybe_prune(now)
        return True

    def read_requests(self, app: str, step: int, since: int, until: int) -> list[RequestPoint]:
        """Request points of ``app`` at resolution ``step`` with since ≤ at ≤ until, oldest first."""
        with self._db.read() as conn:
            got = conn.execute(rows.select_requests("?"), (app, step, since, until)).fetchall()
        return [rows.request_point(r) for r in got]

    def read_usage(self, app: str, step: int, since: int, until: int) -> list[UsagePoint]:
        """Usage points of ``app``'s Instances at resolution ``step``, oldest first."""
        with self._db.read() as conn:
            got = conn.execute(rows.select_usage("?"), (app, step, since, until)).fetchall()
        return [rows.usage_point(r) for r in got]

    def read_app_usage(self, app: str, step: int, since: int, until: int) -> list[UsagePoint]:
        """Usage of all of ``app``'s Instances together, one point per ``at`` (``instance`` "")."""
        with self._db.read() as conn:
            got = conn.execute(rows.select_app_usage("?"), (app, step, since, until)).fetchall()
        return [rows.usage_point(r) for r in got]

    def _maybe_prune(self, now: float) -> None:
        mono = self.clock.monotonic()
        if mono - self._pruned >= rows.PRUNE_EVERY_SECONDS:
            self._pruned = mono
            self.prune_series(now)

    def prune_series(self, now: float | None = None) -> int:
        """Delete points past their retention and batch ids past theirs; returns rows deleted."""
        now = self.clock.now() if now is None else now
        gone = 0
        with self._db.write(set()) as conn:
            for table, step, oldest in rows.prune_cutoffs(now):
                gone += conn.execute(f"DELETE FROM {table} WHERE step = ? AND t < ?", (step, oldest)).rowcount
            gone += conn.execute("DELETE FROM series_batches WHERE t < ?", (rows.batch_cutoff(now),)).rowcount
        return gone

    def delete_app_series(self, app: str) -> int:
        """Delete every point of ``app`` (the App was deleted); returns how many went."""
        with self._db.write(set()) as conn:
            return sum(conn.execute(f"DELETE FROM {t} WHERE app = ?", (app,)).rowcount for t in TABLES[:2])

    # ------------------------------------------------------------------ migrate-store

    def dump(self) -> list[tuple[Any, ...]]:
        """Every row as (table, *columns), in key order."""
        out: list[tuple[Any, ...]] = []
        with self._db.read() as conn:
            for table in TABLES:
                out += [(table, *r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3")]
        return out

    def load(self, dumped: list[tuple[Any, ...]]) -> None:
        with self._db.write(set()) as conn:
            for row in dumped:
                conn.execute(f"INSERT INTO {row[0]} VALUES ({', '.join('?' * (len(row) - 1))})", row[1:])

    def clear(self) -> None:
        with self._db.write(set()) as conn:
            for table in TABLES:
                conn.execute(f"DELETE FROM {table}")
