"""Versioned schema of the PostgreSQL store, applied once under an advisory lock.

Every process that opens the store runs ``migrate``: it takes a session-level advisory lock
(so two servers starting at once apply each step exactly once — the second waits, then finds
nothing to do), creates the ``schema_migrations`` history if missing, and applies every step
newer than the database's version, each in its own transaction together with its history
row. A crash mid-step leaves the previous version intact. New steps are appended to
``MIGRATIONS``; shipped steps are never edited.

Tables mirror the SQLite store (times are integer milliseconds, ``data`` is the record's
JSON text, kept byte-for-byte so ``forge migrate-store`` copies exactly); labels are
``jsonb`` so selectors filter in the database. ``NOTIFY`` is sent by statement triggers on
the change log and the log lines, so every writer — migrate-store included — wakes watchers.
"""

from __future__ import annotations

from typing import Any

import psycopg

from forge.clock import Clock
from forge.errors import Unavailable
from forge.store.migrations import Migration
from forge.store.seriesrows import schema as series_schema

MIGRATE_LOCK = 0x666F7267655F6D  # "forge_m": the advisory lock key of schema migrations
CHANGES_CHANNEL = "forge_changes"
LOGS_CHANNEL = "forge_logs"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "records, change log, counters, marks, logs",
        (
            # One row per counter: 'revision' (the global revision) and 'compacted'. Writers
            # lock the 'revision' row first, which serialises them: revisions commit in order.
            """CREATE TABLE counters (
                name TEXT PRIMARY KEY,
                value BIGINT NOT NULL
            )""",
            "INSERT INTO counters (name, value) VALUES ('revision', 0), ('compacted', 0)",
            """CREATE TABLE records (
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                uid TEXT NOT NULL,
                revision BIGINT NOT NULL,
                generation BIGINT NOT NULL,
                created BIGINT NOT NULL,
                updated BIGINT NOT NULL,
                labels JSONB NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (kind, name)
            )""",
            """CREATE TABLE changes (
                revision BIGINT PRIMARY KEY,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                type TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
                time BIGINT NOT NULL,
                data TEXT NOT NULL
            )""",
            "CREATE INDEX changes_kind_revision ON changes (kind, revision)",
            f"""CREATE FUNCTION forge_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_notify('{CHANGES_CHANNEL}', ''); RETURN NULL; END $$""",
            """CREATE TRIGGER changes_notify AFTER INSERT ON changes
                FOR EACH STATEMENT EXECUTE FUNCTION forge_notify_changes()""",
            """CREATE TABLE marks (
                metric TEXT NOT NULL,
                uid TEXT NOT NULL,
                label TEXT NOT NULL,
                value DOUBLE PRECISION NULL,
                PRIMARY KEY (metric, uid, label)
            )""",
            """CREATE TABLE logs (
                id BIGSERIAL PRIMARY KEY,
                instance TEXT NOT NULL,
                app TEXT NOT NULL,
                deployment TEXT NOT NULL,
                source TEXT NOT NULL,
                "offset" BIGINT NOT NULL,
                time BIGINT NOT NULL,
                time_text TEXT NOT NULL,
                line TEXT NOT NULL,
                UNIQUE (instance, source, "offset")
            )""",
            "CREATE INDEX logs_app_id ON logs (app, id)",
            "CREATE INDEX logs_time ON logs (time)",
            f"""CREATE FUNCTION forge_notify_logs() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_notify('{LOGS_CHANNEL}', ''); RETURN NULL; END $$""",
            """CREATE TRIGGER logs_notify AFTER INSERT ON logs
                FOR EACH STATEMENT EXECUTE FUNCTION forge_notify_logs()""",
        ),
    ),
    Migration(
        2, "per-app time series: request and usage points, batch ids", series_schema("DOUBLE PRECISION")
    ),
)

LATEST: int = MIGRATIONS[-1].version

HISTORY = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied BIGINT NOT NULL
)"""


def schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(
    conn: psycopg.Connection[Any], clock: Clock, migrations: tuple[Migration, ...] = MIGRATIONS
) -> tuple[int, int]:
    """Apply every step newer than the database's version under the advisory lock; returns
    (version reached, steps applied by this call). ``conn`` must be in autocommit mode."""
    known = migrations[-1].version if migrations else 0
    applied = 0
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
    try:
        conn.execute(HISTORY)
        for step in migrations:
            with conn.transaction():
                current = schema_version(conn)
                if current > known:
                    raise Unavailable(
                        f"store schema version {current} is newer than this Forge knows ({known}); "
                        "upgrade Forge instead of opening the database with an older one"
                    )
                if current >= step.version:
                    continue
                if current != step.version - 1:
                    raise Unavailable(f"store schema version {current} cannot step to {step.version}")
                for sql in step.statements:
                    conn.execute(sql.encode())  # bytes: no client-side placeholder parsing of $$ bodies
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied) VALUES (%s, %s, %s)",
                    (step.version, step.name, int(clock.now() * 1000)),
                )
                applied += 1
        return schema_version(conn), applied
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
