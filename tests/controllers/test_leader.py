"""Leader election over one store with a FakeClock: exactly one leader, takeover after expiry."""

from __future__ import annotations

import pytest

from forge.controllers.leader import LEASE_NAME, LeaderElector


class Elector:
    """An elector plus a log of its callbacks."""

    def __init__(self, store, clock, identity: str) -> None:
        self.log: list[str] = []
        self.e = LeaderElector(store, clock, identity, lambda: self.log.append("start"),
                               lambda: self.log.append("stop"), duration_seconds=15)


@pytest.fixture
def pair(store, clock):
    return Elector(store, clock, "cp-a"), Elector(store, clock, "cp-b")


def test_exactly_one_leads(store, clock, pair) -> None:
    """Two electors racing on one store: one leads, the other waits; renewals keep it so."""
    a, b = pair
    for _ in range(5):
        a.e.step(), b.e.step()
        assert [a.e.leading, b.e.leading].count(True) == 1
        clock.advance(5)
    assert a.log == ["start"] and b.log == []
    assert store.get("Lease", LEASE_NAME).spec.holder == "cp-a"


def test_takeover_after_leader_stops_renewing(store, clock, pair) -> None:
    """When the leader goes quiet, the other takes over only after a full lease duration."""
    a, b = pair
    a.e.step()
    b.e.step()  # b observes a's lease now
    clock.advance(14)
    assert not b.e.step()
    clock.advance(1)
    assert b.e.step() and b.log == ["start"]
    lease = store.get("Lease", LEASE_NAME)
    assert (lease.spec.holder, lease.spec.transitions) == ("cp-b", 1)
    # the old leader wakes up: its renewal is refused and it stops acting at once
    assert not a.e.step()
    assert a.log == ["start", "stop"]


def test_renew_time_written_by_leader_is_not_trusted(store, clock, pair) -> None:
    """A lease whose renewTime looks ancient still counts as fresh while its version moves."""
    a, b = pair
    a.e.step()
    lease = store.get("Lease", LEASE_NAME)
    lease.spec.renew_time = "2001-01-01T00:00:00.000Z"
    store.update(lease)
    assert not b.e.step()
    clock.advance(10)
    a.e.step()
    clock.advance(10)
    assert not b.e.step()  # a renewed 10 s ago by b's own observation


def test_release_hands_over_immediately(store, clock, pair) -> None:
    """stop() on the leader releases the lease so the other acquires without waiting."""
    a, b = pair
    a.e.step()
    b.e.step()
    a.e.stop()
    assert a.log == ["start", "stop"]
    assert b.e.step() and b.log == ["start"]


def test_leader_steps_down_when_store_fails_past_deadline(store, clock, pair) -> None:
    """A leader that cannot reach the store keeps leading only until its renew deadline."""
    a, _ = pair
    a.e.step()
    store.close()
    clock.advance(5)
    assert a.e.step() and a.log == ["start"]  # 5 s < 10 s deadline
    clock.advance(6)
    assert not a.e.step() and a.log == ["start", "stop"]


def test_a_leader_paused_past_its_lease_cannot_write(tmp_path, clock) -> None:
    """Two controllers processes (two store handles on one database): a is paused past its lease,
    b takes over; a's in-flight write — prepared before the pause — is refused by the fence."""
    from forge.errors import Fenced
    from forge.models import App, AppSpec, ObjectMeta
    from forge.store.sqlite import SqliteStore

    path = str(tmp_path / "forge.db")
    store_a, store_b = SqliteStore(path, clock=clock), SqliteStore(path, clock=clock)
    try:
        a = LeaderElector(store_a, clock, "cp-a", lambda: None, lambda: None, duration_seconds=15, fence_store=store_a)
        b = LeaderElector(store_b, clock, "cp-b", lambda: None, lambda: None, duration_seconds=15, fence_store=store_b)
        assert a.step() and not b.step()
        assert store_a.fence is not None and store_a.fence.generation == 0
        app = store_a.create(App(metadata=ObjectMeta(name="hello"), spec=AppSpec(repo="acme/hello")))
        app.spec.replicas = 5  # a reconcile of a's, about to write ... then a is paused (SIGSTOP)
        clock.advance(16)
        assert b.step() and store_b.fence.generation == 1  # type: ignore[union-attr]
        with pytest.raises(Fenced):
            store_a.update(app)  # a resumes: its write carries generation 0 and is refused
        assert store_b.get(App, "hello").spec.replicas == 1
        assert not a.step()  # and its election round tells it it no longer leads
        store_b.update(store_b.get(App, "hello"))  # the new leader writes
    finally:
        store_a.close()
        store_b.close()


# ---------------------------------------------------------------------- a dead predecessor here

from forge.models import HolderProcess  # noqa: E402
from forge.processid import LocalProcesses, gone  # noqa: E402


class Host:
    """One machine's process table (``forge.processid.Processes``) for electors in one test."""

    def __init__(self, name: str = "h1", boot: str = "boot-1", machine: str = "m-1") -> None:
        self.name, self.boot, self.machine = name, boot, machine
        self.running: set[tuple[int, int]] = set()

    def start(self, pid: int, ticks: int) -> HostProcess:
        self.running.add((pid, ticks))
        return HostProcess(self, pid, ticks)


class HostProcess:
    def __init__(self, host: Host, pid: int, ticks: int) -> None:
        self.host, self.pid, self.ticks = host, pid, ticks

    def me(self) -> HolderProcess:
        h = self.host
        return HolderProcess(
            host=h.name,
            machine_id=h.machine,
            boot_id=h.boot,
            pid_namespace="ns1",
            pid=self.pid,
            start_ticks=self.ticks,
        )

    def alive(self, pid: int, ticks: int | None) -> bool:
        return any(p == pid and (ticks is None or t == ticks) for p, t in self.host.running)

    def kill(self) -> None:
        self.host.running.discard((self.pid, self.ticks))


def elector(store, clock, identity: str, proc: HostProcess | None) -> LeaderElector:
    return LeaderElector(
        store, clock, identity, lambda: None, lambda: None, duration_seconds=15, processes=proc
    )


@pytest.mark.parametrize("how", ["kill-9", "pid-reused", "rebooted"])
def test_restart_on_the_same_machine_takes_the_lease_at_once(store, clock, how: str) -> None:
    """forge up killed and started again (its pid gone, or reused by another process, or the
    machine rebooted): the new process leads in its first round, not a lease later (sim seed 2
    of up-restart waited out its own dead predecessor's lease)."""
    host = Host()
    old = host.start(100, 5000)
    first = elector(store, clock, "h1-100-aaaaaa", old)
    assert first.step()
    assert store.get("Lease", LEASE_NAME).spec.holder_process.pid == 100
    old.kill()
    if how == "pid-reused":
        host.start(100, 9999)  # another process got the pid
    if how == "rebooted":
        host.boot, host.running = "boot-2", set()
    clock.advance(1)
    new = elector(store, clock, "h1-200-bbbbbb", host.start(200, 7000))
    assert new.step() and new.leading
    lease = store.get("Lease", LEASE_NAME)
    assert (lease.spec.holder, lease.spec.transitions, lease.spec.holder_process.pid) == (
        "h1-200-bbbbbb",
        1,
        200,
    )


@pytest.mark.parametrize(
    "how", ["alive", "another-machine", "same-name-other-machine", "other-pid-namespace", "no-holder-process"]
)
def test_a_holder_not_provably_gone_is_waited_out(store, clock, how: str) -> None:
    """A live holder (running, or SIGSTOP-ed: not dead), one on another machine (even one of the
    same hostname), one whose pids this process cannot see, or a Lease that names no process:
    the contender waits the whole lease, as before."""
    host = Host()
    old = host.start(100, 5000)
    first = elector(store, clock, "h1-100-aaaaaa", None if how == "no-holder-process" else old)
    assert first.step()
    if how != "alive":
        old.kill()
    other = {
        "another-machine": Host("h2", "boot-9", "m-9"),
        "same-name-other-machine": Host("h1", "boot-9", "m-9"),
    }.get(how, host)
    proc = other.start(200, 7000)
    if how == "other-pid-namespace":
        proc.me = lambda: HolderProcess(
            host="h1", machine_id="m-1", boot_id="boot-1", pid_namespace="ns2", pid=200, start_ticks=7000
        )  # type: ignore[method-assign]
    second = elector(store, clock, "x-200-bbbbbb", proc)
    assert not second.step()
    clock.advance(14)
    assert not second.step()
    clock.advance(1)
    assert second.step()  # the lease ran out by its own observation


def test_local_processes_prove_a_dead_child_gone() -> None:
    """LocalProcesses on this machine: a running child is alive; once it exited, it is gone."""
    import subprocess
    import sys

    local = LocalProcesses()
    me = local.me()
    assert me.boot_id and me.pid > 0 and me.start_ticks is not None
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        from forge.nodeagent.supervisor import process_start_ticks

        ticks = process_start_ticks(child.pid)
        holder = me.model_copy(update={"pid": child.pid, "start_ticks": ticks})
        assert gone(holder, me, local) is None
    finally:
        child.communicate(b"", timeout=30)
    assert gone(holder, me, local) == f"process {child.pid} on {me.host} has exited"
    assert gone(me, me, local) is None  # this very process
