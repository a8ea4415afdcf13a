"""SQLite backend specifics: pragmas, versioned migrations, store URLs, automatic compaction."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from forge.clock import FakeClock
from forge.errors import Gone, Unavailable
from forge.store.factory import open_store
from forge.store.migrations import LATEST, MIGRATIONS, Migration, migrate, schema_version
from forge.store.sqlite import SqliteStore
from tests.store.store_helpers import app


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_file_is_wal_with_full_sync(tmp_path: Path) -> None:
    """The file is in WAL mode and store connections commit with synchronous=FULL and a busy timeout."""
    store = SqliteStore(str(tmp_path / "f.db"), busy_timeout=7.5)
    try:
        with store._db.conn() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7500
    finally:
        store.close()


def test_migrations_are_recorded(tmp_path: Path) -> None:
    """A new file is at the latest schema version with one history row per step."""
    SqliteStore(str(tmp_path / "f.db"), clock=FakeClock(1_800_000_000)).close()
    conn = raw(tmp_path / "f.db")
    assert schema_version(conn) == LATEST == len(MIGRATIONS)
    rows = conn.execute("SELECT version, name, applied FROM schema_migrations ORDER BY version").fetchall()
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert {a for _, _, a in rows} == {1_800_000_000_000}


def test_reopening_is_idempotent(tmp_path: Path) -> None:
    """Opening an existing file again applies nothing and keeps the data."""
    path = str(tmp_path / "f.db")
    first = SqliteStore(path)
    first.create(app("hello"))
    first.close()
    second = SqliteStore(path)
    try:
        assert second.get("App", "hello").metadata.resource_version == 1
        assert second.revision() == 1
    finally:
        second.close()
    conn = raw(tmp_path / "f.db")
    assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == LATEST


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer Forge (higher schema version) is refused, not downgraded."""
    path = tmp_path / "f.db"
    SqliteStore(str(path)).close()
    raw(path).execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(Unavailable, match="newer"):
        SqliteStore(str(path))


def test_failed_migration_step_rolls_back(tmp_path: Path) -> None:
    """A step that fails half-way leaves neither its tables nor its version behind."""
    conn = raw(tmp_path / "f.db")
    steps = MIGRATIONS + (Migration(LATEST + 1, "broken", ("CREATE TABLE extra (x INTEGER)", "NOT SQL")),)
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, FakeClock(), steps)
    assert schema_version(conn) == LATEST
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == LATEST


def test_later_step_applies_to_existing_file(tmp_path: Path) -> None:
    """Appending a step upgrades an existing file by exactly that step."""
    path = tmp_path / "f.db"
    SqliteStore(str(path)).close()
    conn = raw(path)
    steps = MIGRATIONS + (Migration(LATEST + 1, "extra", ("CREATE TABLE extra (x INTEGER)",)),)
    assert migrate(conn, FakeClock(), steps) == LATEST + 1
    assert migrate(conn, FakeClock(), steps) == LATEST + 1
    assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == LATEST + 1


@pytest.mark.parametrize(
    "form", ["sqlite:///{p}", "{p}"], ids=["url", "bare-path"]
)
def test_open_store_urls(tmp_path: Path, form: str) -> None:
    """open_store accepts sqlite:///ABS and a bare path, both reaching the same file."""
    path = tmp_path / "sub" / "f.db"
    store = open_store(form.format(p=path))
    try:
        assert isinstance(store, SqliteStore) and Path(store.path) == path
        store.ping()
    finally:
        store.close()
    assert path.exists()


def test_automatic_compaction_bounds_the_log(tmp_path: Path) -> None:
    """Once the log holds twice auto_compact_keep changes, a write compacts it down to keep."""
    store = SqliteStore(str(tmp_path / "f.db"), auto_compact_keep=3)
    try:
        for i in range(7):
            store.create(app(f"a{i}"))
        assert store.compacted_revision() == 4
        assert [e.revision for e in store.watch(None, 4, timeout=0)] == [5, 6, 7]
        with pytest.raises(Gone):
            store.watch(None, 3, timeout=0)
        with store._db.conn() as conn:
            assert conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0] == 3
    finally:
        store.close()


def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    """Calls after close fail with Unavailable instead of reopening silently."""
    store = SqliteStore(str(tmp_path / "f.db"))
    store.close()
    with pytest.raises(Unavailable):
        store.ping()


def test_forked_child_uses_its_own_connections(tmp_path: Path) -> None:
    """A store opened before fork (gunicorn preload) works in the child and the parent alike."""
    store = SqliteStore(str(tmp_path / "f.db"))
    try:
        store.create(app("before-fork"))
        pid = os.fork()
        if pid == 0:  # child: report through the exit code only
            code = 1
            try:
                store.create(app("in-child"))
                code = 0 if store.get("App", "before-fork").metadata.resource_version == 1 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [o.metadata.name for o in store.list("App")[0]] == ["before-fork", "in-child"]
    finally:
        store.close()


def test_defaults_missing_from_stored_json_are_not_a_spec_change(tmp_path: Path) -> None:
    """A record stored before a model gained a defaulted field keeps its generation on a no-op update."""
    path = tmp_path / "f.db"
    store = SqliteStore(str(path))
    try:
        obj = store.create(app("hello"))
        conn = raw(path)
        conn.execute("UPDATE records SET data = json_remove(data, '$.spec.autoDeploy') WHERE name = 'hello'")
        conn.close()
        assert store.update(obj).metadata.generation == 1
        obj = store.get("App", "hello")
        obj.spec.auto_deploy = False
        assert store.update(obj).metadata.generation == 2
    finally:
        store.close()
