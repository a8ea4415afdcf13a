"""PostgreSQL backend specifics: lost notifications, server restarts, lost commits, the
migration race, in-order revisions under concurrent writers, errors that never leak the password."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg  # noqa: TID251 - the test reaches into the database it checks
import pytest

from forge.clock import SystemClock
from forge.errors import Unavailable
from forge.store.factory import open_store
from forge.store.pg_migrations import LATEST, MIGRATIONS
from forge.store.postgres import PostgresStore
from tests.pgcluster import PgCluster
from tests.store.store_helpers import Background, app, wait_until

RACER = Path(__file__).with_name("migrate_race.py")


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:
    # A resync far longer than the tests: only notifications and listener reconnects can wake a watch.
    s = PostgresStore(pg_url, resync_seconds=120)
    yield s
    s.close()


def collect(store: PostgresStore, count: int, timeout: float = 60.0) -> Background:
    """A watcher thread re-watching from its last revision until it holds ``count`` events."""

    def run() -> list[int]:
        seen: list[int] = []
        clock = SystemClock()
        deadline = clock.monotonic() + timeout
        while len(seen) < count and clock.monotonic() < deadline:
            events = store.watch(None, seen[-1] if seen else 0, timeout=max(0.0, deadline - clock.monotonic()))
            seen += [e.revision for e in events]
        return seen

    call = Background(run)
    call.start()
    return call


def terminate(pg_url: str, pid: int) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)


def test_dropped_listener_loses_no_event(pg: PostgresStore, pg_url: str) -> None:
    """Writes made while the LISTEN connection is dead still reach a blocked watch (no resync
    to fall back on): the listener reconnects and everybody re-reads."""
    watcher = collect(pg, 40)
    wait_until(lambda: pg.waiting() > 0 and pg.listener_pid() is not None)
    for i in range(20):
        pg.create(app(f"a{i}"))
    wait_until(lambda: pg.revision() == 20 and pg.waiting() > 0)
    first = pg.listener_pid()
    assert first is not None
    terminate(pg_url, first)
    for i in range(20, 40):  # lands before the listener is back: these notifications are lost
        pg.create(app(f"a{i}"))
    # Well before the watch's own timeout (whose last re-read would find them anyway).
    assert watcher.value(10) == list(range(1, 41))
    assert pg.listener_pid() not in (None, first)


def test_revisions_reach_watchers_in_order_under_concurrent_writers(pg: PostgresStore) -> None:
    """Eight threads writing at once: a watcher sees every revision exactly once, in order (a
    sequence committing out of order would make it skip one)."""
    watcher = collect(pg, 200)

    def writer(k: int) -> None:
        for i in range(25):
            pg.create(app(f"w{k}-{i}"))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert watcher.value(60) == list(range(1, 201))


def test_restart_under_a_writing_client_loses_and_duplicates_nothing(
        pg_cluster: PgCluster, pg_url: str) -> None:
    """pg_ctl restart while another process writes: it rides the restart out (retrying), every
    acknowledged write is there exactly once, and revisions stay gap-free."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("writer.py")), pg_url, "r", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    acked: list[str] = []
    try:
        while len(acked) < 30:
            acked.append(proc.stdout.readline().strip())
        pg_cluster.pg_ctl("restart")
        after = len(acked)
        while len(acked) < after + 30:  # 30 more writes acknowledged once the server is back
            line = proc.stdout.readline()
            assert line, f"writer died: {proc.stderr.read()[-2000:]}"
            acked.append(line.strip())
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
    # It did meet the restart: a statement failed and was retried, or a COMMIT was cut off and
    # resolved (both are logged).
    assert "retrying" in stderr or "during COMMIT" in stderr, stderr
    assert len(set(acked)) == len(acked)
    store = PostgresStore(pg_url)
    try:
        items, rev = store.list("App")
        names = {o.metadata.name for o in items}
        assert set(acked) <= names and len(items) == rev  # one record per revision: nothing applied twice
        assert sorted(o.metadata.resource_version for o in items) == list(range(1, rev + 1))
    finally:
        store.close()


def test_commit_lost_with_the_connection_is_retried_once(pg: PostgresStore, pg_url: str) -> None:
    """The connection dies with COMMIT in flight: the store asks the server whether the write
    happened (it did not) and runs it again — one write, never two."""
    calls: list[int] = []

    def tx(conn: psycopg.Connection) -> None:
        calls.append(conn.info.backend_pid)
        conn.execute("INSERT INTO marks (metric, uid, label) VALUES ('m', 'u', 'l')")
        if len(calls) == 1:
            terminate(pg_url, conn.info.backend_pid)  # COMMIT is sent to a dead backend

    pg._db.write(tx)
    assert len(calls) == 2 and calls[0] != calls[1]
    assert pg.tally("m") == {"l": 1}


def test_two_processes_racing_the_migration(pg_url: str) -> None:
    """Two processes migrating a fresh database at the same instant both succeed; each step is
    applied exactly once (the advisory lock makes the second wait, then find nothing to do)."""
    procs = [subprocess.Popen([sys.executable, str(RACER), pg_url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert sorted(int(out) for out, _ in outs) == [0, LATEST]
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(m.version, m.name) for m in MIGRATIONS]


def test_open_store_selects_postgres_and_reopen_keeps_data(pg_url: str) -> None:
    """open_store(postgresql://…) opens the PostgreSQL backend; a second open migrates nothing."""
    first = open_store(pg_url)
    try:
        assert isinstance(first, PostgresStore) and first.migrated == LATEST
        first.create(app("hello"))
    finally:
        first.close()
    again = PostgresStore(pg_url)
    try:
        assert again.migrated == 0 and again.get("App", "hello").metadata.resource_version == 1
    finally:
        again.close()


def test_unreachable_store_is_unavailable_without_the_password(tmp_path: Path) -> None:
    """A database that stays down is Unavailable after the bounded retries, naming the store
    with its password redacted."""
    url = f"postgresql://forge:hunter2-secret@/forge?host={tmp_path}&port=1"
    with pytest.raises(Unavailable) as err:
        PostgresStore(url, retry_seconds=0.3)
    message = err.value.message
    assert "hunter2" not in message and "forge:***@" in message and "unreachable" in message


def test_closed_store_is_unavailable(pg_url: str) -> None:
    """Calls after close fail with Unavailable instead of reconnecting silently."""
    store = PostgresStore(pg_url)
    store.close()
    with pytest.raises(Unavailable, match="closed"):
        store.ping()


def test_missing_server_binaries_name_make_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without initdb/pg_ctl the cluster helper fails (the fixture turns it into a failure, not a
    skip) with a message saying to run make setup."""
    import tests.pgcluster as pgcluster

    monkeypatch.setattr(pgcluster.glob, "glob", lambda pattern: [])
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="make setup"):
        pgcluster.find_bin_dir()
