"""Metric marks in the SQLite records database: the persisted tally behind Forge's counters.

A mark says "the record with this uid reached this label of this metric" (for example
``forge_deployments_total`` / ``Live``), optionally with an observed value (a deploy's
push-to-live seconds). Marking is idempotent on (metric, uid, label) and rows are never
deleted, so a count per label only grows: it survives the gc deleting old records, and any
number of API processes scraping the same file report the same numbers.
"""

from __future__ import annotations

from typing import Any

from forge.store.logrows import check_mark
from forge.store.sqlite_db import SqliteDb


class SqliteMarkStore:
    def __init__(self, db: SqliteDb) -> None:
        self._db = db

    def mark(self, metric: str, uid: str, label: str, value: float | None = None) -> bool:
        """Record that ``uid`` reached ``label`` of ``metric``; True if it was not marked before.

        A second mark of the same (metric, uid, label) changes nothing, its value included.
        """
        check_mark(metric, uid)
        key = (metric, uid, label)
        with self._db.read() as conn:  # resyncs re-mark everything: keep the no-op case off the write lock
            if conn.execute("SELECT 1 FROM marks WHERE metric = ? AND uid = ? AND label = ?", key).fetchone():
                return False
        with self._db.write(set()) as conn:  # no watcher waits on marks
            cur = conn.execute(
                "INSERT OR IGNORE INTO marks (metric, uid, label, value) VALUES (?, ?, ?, ?)",
                (metric, uid, label, None if value is None else float(value)),
            )
            return cur.rowcount == 1

    def tally(self, metric: str) -> dict[str, int]:
        """How many records reached each label of ``metric``."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT label, COUNT(*) FROM marks WHERE metric = ? GROUP BY label ORDER BY label", (metric,)
            ).fetchall()
        return {str(label): int(n) for label, n in rows}

    def observations(self, metric: str, label: str) -> list[float]:
        """The values marked for ``metric``/``label`` (marks without a value are left out)."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT value FROM marks WHERE metric = ? AND label = ? AND value IS NOT NULL ORDER BY value",
                (metric, label),
            ).fetchall()
        return [float(r[0]) for r in rows]

    # ------------------------------------------------------------------ migrate-store

    def dump(self) -> list[tuple[Any, ...]]:
        with self._db.read() as conn:
            return conn.execute(
                "SELECT metric, uid, label, value FROM marks ORDER BY metric, uid, label"
            ).fetchall()

    def load(self, rows: list[tuple[Any, ...]]) -> None:
        with self._db.write(set()) as conn:  # no watcher waits on marks
            conn.executemany("INSERT INTO marks (metric, uid, label, value) VALUES (?, ?, ?, ?)", rows)

    def clear(self) -> None:
        with self._db.write(set()) as conn:  # no watcher waits on marks
            conn.execute("DELETE FROM marks")
