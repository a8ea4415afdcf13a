"""Conformance: the shipped-log table — idempotent appends, filtered reads, follow, pruning."""

from __future__ import annotations

import pytest

from forge.clock import iso, parse_iso
from forge.errors import Invalid
from forge.store.base import LogLine, Store
from tests.store.store_helpers import Background, wait_until

T0 = parse_iso("2030-01-01T00:00:00.000Z")


def entries(start: int, n: int, prefix: str = "line") -> list[tuple[int, str, str]]:
    return [(i, iso(T0 + i), f"{prefix} {i}") for i in range(start, start + n)]


@pytest.fixture
def seeded(store: Store) -> Store:
    store.append_logs("hello-1-0", "hello", "hello-1", "build", entries(0, 2, "b1"))
    store.append_logs("hello-1-0", "hello", "hello-1", "app", entries(0, 3, "r1"))
    store.append_logs("hello-2-0", "hello", "hello-2", "app", entries(0, 2, "r2"))
    store.append_logs("other-1-0", "other", "other-1", "app", entries(0, 2, "o"))
    return store


def test_append_is_idempotent_on_instance_source_offset(store: Store) -> None:
    """Re-shipping the same offsets stores nothing twice; only new offsets count."""
    assert store.append_logs("hello-1-0", "hello", "hello-1", "app", entries(0, 3)) == 3
    assert store.append_logs("hello-1-0", "hello", "hello-1", "app", entries(1, 4)) == 2
    assert store.append_logs("hello-1-0", "hello", "hello-1", "build", entries(0, 1)) == 1
    lines = store.read_logs("hello", source="app")
    assert [ln.line for ln in lines] == [f"line {i}" for i in range(5)]


def test_read_returns_log_lines_in_id_order(seeded: Store) -> None:
    """read_logs gives LogLine records for the app only, ordered by id."""
    lines = seeded.read_logs("hello")
    assert all(isinstance(ln, LogLine) for ln in lines)
    assert [ln.id for ln in lines] == sorted(ln.id for ln in lines)
    assert [ln.line for ln in lines] == ["b1 0", "b1 1", "r1 0", "r1 1", "r1 2", "r2 0", "r2 1"]
    assert lines[0].to_dict() == {
        "id": lines[0].id, "time": iso(T0), "instance": "hello-1-0", "deployment": "hello-1",
        "source": "build", "line": "b1 0",
    }


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"deployment": "hello-2"}, ["r2 0", "r2 1"]),
        ({"source": "build"}, ["b1 0", "b1 1"]),
        ({"deployment": "hello-1", "source": "app"}, ["r1 0", "r1 1", "r1 2"]),
        ({"limit": 2}, ["b1 0", "b1 1"]),
        ({"since_time": iso(T0 + 1)}, ["b1 1", "r1 1", "r1 2", "r2 1"]),
        ({"since_time": T0 + 2}, ["r1 2"]),
    ],
    ids=["deployment", "source", "deployment-and-source", "limit", "since-iso", "since-epoch"],
)
def test_read_filters(seeded: Store, kwargs: dict, expected: list[str]) -> None:
    """deployment, source, limit and since_time narrow what read_logs returns."""
    assert [ln.line for ln in seeded.read_logs("hello", **kwargs)] == expected


def test_read_resumes_after_id(seeded: Store) -> None:
    """after_id continues exactly where the previous read stopped."""
    first = seeded.read_logs("hello", limit=3)
    rest = seeded.read_logs("hello", after_id=first[-1].id)
    assert [ln.line for ln in first + rest] == [ln.line for ln in seeded.read_logs("hello")]


def test_unknown_source_is_invalid(store: Store) -> None:
    """Only build and app are log sources."""
    with pytest.raises(Invalid, match="source"):
        store.append_logs("i", "hello", "hello-1", "stderr", entries(0, 1))


def test_wait_logs_times_out_false(seeded: Store) -> None:
    """wait_logs returns False when nothing newer arrives in time, True when it already exists."""
    last = seeded.read_logs("other")[-1].id
    assert seeded.wait_logs(last, timeout=0.05) is False
    assert seeded.wait_logs(0, timeout=0) is True


def test_wait_logs_wakes_on_append(store: Store) -> None:
    """A blocked wait_logs returns True as soon as another thread appends."""
    call = Background(lambda: store.wait_logs(0, timeout=10))
    call.start()
    wait_until(lambda: store.waiting() > 0)
    store.append_logs("hello-1-0", "hello", "hello-1", "app", entries(0, 1))
    assert call.value() is True


def test_delete_app_logs_drops_that_apps_lines_only(seeded: Store) -> None:
    """delete_app_logs (the App was deleted) removes every line of that app and no other's."""
    assert seeded.delete_app_logs("hello") == 7
    assert seeded.read_logs("hello") == [] and len(seeded.read_logs("other")) == 2
    assert seeded.delete_app_logs("hello") == 0


def test_prune_drops_only_older_lines(seeded: Store) -> None:
    """prune_logs deletes lines older than the cut-off and keeps the rest."""
    assert seeded.prune_logs(T0 + 1) == 4
    assert [ln.line for ln in seeded.read_logs("hello")] == ["b1 1", "r1 1", "r1 2", "r2 1"]
    assert seeded.prune_logs(iso(T0 + 1)) == 0


def test_logs_live_outside_the_records_database_with_per_app_retention(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A flood of one app's lines grows only forge-logs.db, keeps that app's newest lines, and
    leaves another app's lines and the records file alone."""
    import os

    from forge.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "forge.db"))
    try:
        store.keep_lines_per_app = 1000
        store.append_logs("quiet-1-0", "quiet", "quiet-1", "app", [(0, "", "a quiet line")])
        records_before = os.path.getsize(tmp_path / "forge.db")
        for batch in range(10):
            store.append_logs("loud-1-0", "loud", "loud-1", "app",
                              [(batch * 500 + i, "", "x" * 200) for i in range(500)])
        loud = store.read_logs("loud", limit=10_000)
        assert len(loud) == 1000 and loud[-1].line == "x" * 200
        assert [ln.line for ln in store.read_logs("quiet")] == ["a quiet line"]
        assert os.path.getsize(tmp_path / "forge.db") == records_before
        assert os.path.exists(tmp_path / "forge-logs.db")
        import sqlite3  # noqa: TID251 - looking inside the files is the point of this test

        with sqlite3.connect(tmp_path / "forge.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'logs'").fetchone()[0] == 0
    finally:
        store.close()
