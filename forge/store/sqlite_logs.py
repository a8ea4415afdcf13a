"""Shipped log lines (build and app output), in a SQLite database of their own.

Not in the records database: a log flood (an app printing 100 MB) must never grow, lock or
slow the file the controllers and the API's records live in. ``forge-logs.db`` sits beside
``forge.db`` with its own WAL, its own write lock and a per-app retention: each App keeps its
newest ``KEEP_LINES_PER_APP`` lines (older ones are pruned as new ones arrive).

Agents re-ship after an outage, so appends are idempotent on (instance, source, offset).
``id`` orders lines across instances and is what ``forge logs -f`` resumes from. Times
are kept twice: integer milliseconds for ordering and pruning, the agent's text for display.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from forge.clock import Clock, iso, parse_iso
from forge.errors import Invalid
from forge.store.base import LogLine

if TYPE_CHECKING:
    from forge.store.sqlite_db import SqliteDb

LOG_SOURCES: frozenset[str] = frozenset({"build", "app", "stdin"})  # stdin: an interactive run's input (never shown by /logs)
MAX_LINE = 16 * 1024  # characters kept of one line
KEEP_LINES_PER_APP = 50_000
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


def logs_path(records_path: str) -> str:
    """``forge.db`` → ``forge-logs.db`` (the logs' own file, beside the records)."""
    root, ext = os.path.splitext(records_path)
    return f"{root}-logs{ext or '.db'}"


def time_ms(value: float | str) -> int:
    """Epoch seconds or an RFC 3339 string → integer milliseconds."""
    if isinstance(value, str):
        try:
            return int(parse_iso(value) * 1000)
        except ValueError:
            raise Invalid(f"{value!r} is not an RFC 3339 time", [{"path": "time", "message": "bad time"}]) from None
    return int(value * 1000)


class SqliteLogs:
    _logs: SqliteDb
    clock: Clock
    keep_lines_per_app: int = KEEP_LINES_PER_APP

    def append_logs(
        self, instance: str, app: str, deployment: str, source: str, entries: list[tuple[int, str, str]]
    ) -> int:
        """Store lines not stored before; returns how many were new (duplicates are skipped)."""
        if source not in LOG_SOURCES:
            raise Invalid(f"log source {source!r} must be one of {sorted(LOG_SOURCES)}",
                          [{"path": "source", "message": "unknown source"}])
        rows = []
        for offset, when, line in entries:
            ms = time_ms(when) if when else int(self.clock.now() * 1000)
            rows.append((instance, app, deployment, source, int(offset), ms, when or iso(ms / 1000), line[:MAX_LINE]))
        if not rows:
            return 0
        with self._logs.write() as conn:
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
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)", (app, app, self.keep_lines_per_app))
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
        with self._logs.read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [LogLine(*r) for r in rows]

    def wait_logs(self, after_id: int, timeout: float = 10.0) -> bool:
        """Block until some line with id > ``after_id`` exists (any app) or ``timeout`` passes."""

        def check() -> bool:
            with self._logs.read() as conn:
                row = conn.execute("SELECT MAX(id) FROM logs").fetchone()
            return row[0] is not None and int(row[0]) > after_id

        return self._logs.wait_for(check, timeout)

    def last_log_id(self) -> int:
        with self._logs.read() as conn:
            row = conn.execute("SELECT MAX(id) FROM logs").fetchone()
        return int(row[0] or 0)

    def prune_logs(self, before_time: float | str) -> int:
        """Delete lines older than ``before_time``; returns how many went."""
        with self._logs.write() as conn:
            return conn.execute("DELETE FROM logs WHERE time < ?", (time_ms(before_time),)).rowcount
