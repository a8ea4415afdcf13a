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


def test_watch_back_off_resets_on_the_first_event(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After API outages the instance watch waits 0.5, 1, 2, 4 s …; the first event of a watch
    that works again resets it, so the next outage starts from 0.5 s (client-go's reflector)."""
    import threading

    from forge import errors
    from forge.client import ForgeClient
    from forge.clock import FakeClock
    from forge.nodeagent.agent import Agent

    class Stop(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(float(timeout or 0))
            if len(self.waits) >= 7:
                self.set()
            return self.is_set()

    script = ["down", "down", "down", "event-then-down", "down", "down", "down", "down"]

    class Client(ForgeClient):
        def list(self, plural, selector=None):  # type: ignore[no-untyped-def,override]
            return [], 1

        def watch(self, plural, resource_version, selector=None, timeout_seconds=300):  # type: ignore[no-untyped-def,override]
            step = script.pop(0) if script else "down"
            if step == "event-then-down":
                yield "BOOKMARK", {"metadata": {"resourceVersion": "5"}}
            raise errors.Unavailable("API down")

    stop = Stop()
    agent = Agent(Client("http://127.0.0.1:9", "t"), "n1", tmp_path / "agent", "127.0.0.1", None, "dev",
                  "file:///nowhere/{full_name}.git", stop, FakeClock(), driver=None, network=None)
    try:
        agent._watch_loop()
    finally:
        agent.client.close()
    assert stop.waits == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0, 4.0]


def test_without_nftables_dev_shares_the_host_network_and_production_refuses(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No root or no nftables: a dev agent records network=host (and says what is missing);
    FORGE_MODE=production refuses to run apps without their own network."""
    import threading

    import pytest

    from forge import errors
    from forge.client import ForgeClient
    from forge.clock import FakeClock
    from forge.nodeagent import agent as agent_mod

    monkeypatch.setattr(agent_mod, "nft_available", lambda: "no CAP_NET_ADMIN (test)")
    a = agent_mod.Agent(ForgeClient("http://127.0.0.1:9", "t"), "n1", tmp_path / "agent", "127.0.0.1", None, "dev",
                        "file:///nowhere/{full_name}.git", threading.Event(), FakeClock(), driver=None)
    try:
        assert a.network is None and a.isolation.network == "host"
        assert any("network namespaces" in m for m in a.isolation.missing)
        with pytest.raises(errors.Unavailable, match="own network"):
            a._own_network("production", "", (), ())
    finally:
        a.client.close()
