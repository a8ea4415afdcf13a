"""Test helper process: ``migrate_race.py URL`` connects, waits for a line on stdin (the start
gun), runs the PostgreSQL store's migrations and prints how many steps it applied. The first
step starts with a 0.3 s sleep so the racers' steps surely overlap: without the advisory lock
both would read "version 0" and both create the tables."""

from __future__ import annotations

import sys

import psycopg

from forge.clock import SystemClock
from forge.store.migrations import Migration
from forge.store.pg_migrations import MIGRATIONS, migrate

FIRST = MIGRATIONS[0]
SLOW = (Migration(FIRST.version, FIRST.name, ("SELECT pg_sleep(0.3)", *FIRST.statements)), *MIGRATIONS[1:])


def main(argv: list[str]) -> None:
    with psycopg.connect(argv[1], autocommit=True) as conn:
        sys.stdin.readline()
        _version, applied = migrate(conn, SystemClock(), SLOW)
        print(applied, flush=True)


if __name__ == "__main__":
    main(sys.argv)
