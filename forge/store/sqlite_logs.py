"""Shipped log lines (build and app output), in a SQLite database of their own.

Not in the records database: a log flood (an app printing 100 MB) must never grow, lock or
slow the file the controllers and the API's records live in. ``forge-logs.db`` sits beside
``forge.db`` with its own WAL, its own write lock and a per-app retention: each App keeps its
newest ``keep_lines_per_app`` lines (older ones are pruned as new ones arrive). SQLite has one
writer at a time, so ids become visible in id order. Rules shared with every backend are in
``forge.store.logrows``.
"""

from __future__ import annotations

import os
from typing import Any

from forge.clock import Clock
from forge.store.base import LogLine
from forge.store.logrows import KEEP_LINES_PER_APP, log_rows, time_ms
from forge.store.sqlite_db import SqliteDb

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instance TEXT NOT NULL,
        app TEXT NOT NULL,
        deployment TEXT NOT NULL,
        source TEXT NOT NULL,
        offset INTEGER NOT NULL,
        time INTEGER NOT NULL,
        time_text TEXT NOT NULL,
        line TEXT NOT NULL,
        UNIQUE (instance, source, offset)
    )""",
    "CREATE INDEX IF NOT EXISTS logs_app_id ON logs (app, id)",
    "CREATE INDEX IF NOT EXISTS logs_time ON logs (time)",
)
COLUMNS = "id, instance, app, deployment, source, offset, time, time_text, line"


def logs_path(records_path: str) -> str:
    """``forge.db`` → ``forge-logs.db`` (the logs' own file, beside the records)."""
    root, ext = os.path.splitext(records_path)
    return f"{root}-logs{ext or '.db'}"


class SqliteLogStore:
    def __init__(self, db: SqliteDb, clock: Clock, keep_lines_per_app: int = KEEP_LINES_PER_APP) -> None:
        self._db = db
        self.clock = clock
        self.keep_lines_per_app = keep_lines_per_app

    def prepare(self) -> None:
        with self._db.conn() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            for stmt in SCHEMA:
                conn.execute(stmt)

    def append_logs(
        self, instance: str, app: str, deployment: str, source: str, entries: list[tuple[int, str, str]]
    ) -> int:
        """Store lines not stored before; returns how many were new (duplicates are skipped)."""
        rows = log_rows(self.clock, instance, app, deployment, source, entries)
        if not rows:
            return 0
        with self._db.write() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO logs (instance, app, deployment, source, offset, time, time_text, line) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            added = conn.total_changes - before
            if added:
                # Retention per app: everything older than its newest N lines goes (one indexed
                # DELETE; a flood of one app never pushes out another app's lines).
                conn.execute(
                    "DELETE FROM logs WHERE app = ? AND id <= (SELECT id FROM logs WHERE app = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (app, app, self.keep_lines_per_app),
                )
            return added

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
        sql = "SELECT id, time_text, instance, deployment, source, line FROM logs WHERE app = ? AND id > ?"
        args: list[Any] = [app, after_id]
        if deployment:
            sql += " AND deployment = ?"
            args.append(deployment)
        if source:
            sql += " AND source = ?"
            args.append(source)
        if since_time is not None:
            sql += " AND time >= ?"
            args.append(time_ms(since_time))
        sql += " ORDER BY id LIMIT ?"
        args.append(max(0, limit))
        with self._db.read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [LogLine(*r) for r in rows]

    def wait_logs(self, after_id: int, timeout: float = 10.0) -> bool:
        """Block until some line with id > ``after_id`` exists (any app) or ``timeout`` passes."""
        return self._db.wait_for(lambda: self.last_log_id() > after_id, timeout)

    def last_log_id(self) -> int:
        with self._db.read() as conn:
            row = conn.execute("SELECT MAX(id) FROM logs").fetchone()
        return int(row[0] or 0)

    def prune_logs(self, before_time: float | str) -> int:
        """Delete lines older than ``before_time``; returns how many went."""
        with self._db.write() as conn:
            return int(conn.execute("DELETE FROM logs WHERE time < ?", (time_ms(before_time),)).rowcount)

    def delete_app_logs(self, app: str) -> int:
        """Delete every line of ``app`` (the App was deleted); returns how many went."""
        with self._db.write() as conn:
            return int(conn.execute("DELETE FROM logs WHERE app = ?", (app,)).rowcount)

    # ------------------------------------------------------------------ migrate-store

    def dump(self) -> list[tuple[Any, ...]]:
        with self._db.read() as conn:
            return conn.execute(f"SELECT {COLUMNS} FROM logs ORDER BY id").fetchall()

    def load(self, rows: list[tuple[Any, ...]]) -> None:
        with self._db.write() as conn:
            conn.executemany(f"INSERT INTO logs ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def clear(self) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM logs")
