"""The agent's work queue: deduplication, one worker per key, timers on a fake clock."""

from __future__ import annotations

from forge.clock import FakeClock
from forge.workqueue import WorkQueue


def test_duplicate_adds_merge() -> None:
    """A key added twice before it is processed runs once."""
    q = WorkQueue(FakeClock())
    q.add("a")
    q.add("a")
    q.add("b")
    assert [q.get(0), q.get(0), q.get(0)] == ["a", "b", None]


def test_key_readded_while_processing_runs_again_after_done() -> None:
    """A key added while in progress is not handed to a second worker, but runs again after done."""
    q = WorkQueue(FakeClock())
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")
    assert q.get(0) is None
    q.done("a")
    assert q.get(0) == "a"


def test_timers_fire_when_due_and_earliest_wins() -> None:
    """add_after fires at its due time; an earlier timer for the same key replaces a later one."""
    clock = FakeClock()
    q = WorkQueue(clock)
    q.add_after("probe", 10)
    q.add_after("probe", 3)
    q.add_after("probe", 8)
    assert q.get(0) is None
    clock.advance(3)
    assert q.get(0) == "probe"
    q.done("probe")
    clock.advance(10)
    assert q.get(0) is None, "the superseded timers must not fire again"


def test_shutdown_releases_waiters() -> None:
    """After shutdown get returns None and adds are ignored."""
    q = WorkQueue(FakeClock())
    q.shutdown()
    q.add("a")
    assert q.get() is None and len(q) == 0
