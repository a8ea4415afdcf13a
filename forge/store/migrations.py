"""Versioned schema of the SQLite store.

``PRAGMA user_version`` is the schema version; every step runs in its own ``BEGIN
IMMEDIATE`` transaction that also records itself in ``schema_migrations`` and moves
``user_version``, so a crash mid-migration leaves the previous version intact and two
processes opening a fresh file at once apply each step exactly once. New steps are appended
to ``MIGRATIONS``; shipped steps are never edited.

Times are integer milliseconds since the epoch so they order as numbers.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from forge.clock import Clock
from forge.errors import Unavailable


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "records, change log, counters",
        (
            """CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied INTEGER NOT NULL
            )""",
            # One row per counter: 'revision' (the global revision) and 'compacted'.
            """CREATE TABLE counters (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            )""",
            "INSERT INTO counters (name, value) VALUES ('revision', 0), ('compacted', 0)",
            """CREATE TABLE records (
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                uid TEXT NOT NULL,
                revision INTEGER NOT NULL,
                generation INTEGER NOT NULL,
                created INTEGER NOT NULL,
                updated INTEGER NOT NULL,
                labels TEXT NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (kind, name)
            ) WITHOUT ROWID""",
            # revision is the rowid: the watch tail is a range scan of the primary key.
            """CREATE TABLE changes (
                revision INTEGER PRIMARY KEY,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                type TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
                time INTEGER NOT NULL,
                data TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "shipped logs",
        (
            """CREATE TABLE logs (
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
            "CREATE INDEX logs_app_id ON logs (app, id)",
            "CREATE INDEX logs_time ON logs (time)",
        ),
    ),
    Migration(
        3,
        "metric marks",
        (
            # One row per (metric, record uid, label): "this record reached this label", with an
            # optional observed value. Rows are never deleted, so counts only grow.
            """CREATE TABLE marks (
                metric TEXT NOT NULL,
                uid TEXT NOT NULL,
                label TEXT NOT NULL,
                value REAL NULL,
                PRIMARY KEY (metric, uid, label)
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        4,
        "log lines move to their own database (forge-logs.db): a log flood never grows the records file",
        ("DROP TABLE IF EXISTS logs",),
    ),
    Migration(
        5,
        "watch of one kind: an index range scan, not a walk over every other kind's changes",
        ("CREATE INDEX changes_kind_revision ON changes (kind, revision)",),
    ),
)

LATEST: int = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, clock: Clock, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Apply every step newer than the file's version; returns the version reached.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    known = migrations[-1].version if migrations else 0
    for step in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)
            if current > known:
                raise Unavailable(
                    f"store schema version {current} is newer than this Forge knows ({known}); "
                    "upgrade Forge instead of opening the file with an older one"
                )
            if current >= step.version:
                conn.execute("ROLLBACK")
                continue
            if current != step.version - 1:
                raise Unavailable(f"store schema version {current} cannot step to {step.version}")
            for sql in step.statements:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                (step.version, step.name, int(clock.now() * 1000)),
            )
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return schema_version(conn)
