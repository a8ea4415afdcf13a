"""A drain on the node: its buffer bound, at-least-once across receiver outages and agent
restarts, where a new drain starts, and wake-ups on new lines — against a real TCP receiver on
loopback and logs written by the real segment writer."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from forge.clock import SystemClock
from forge.drains import parse_url
from forge.nodeagent.drains.buffer import DrainState, read_chunk
from forge.nodeagent.drains.notify import Notifier
from forge.nodeagent.drains.senders import DeliveryError, SyslogSender
from forge.nodeagent.drains.syslog import BOM, unframe
from forge.nodeagent.drains.worker import BATCH_BYTES, DrainWorker, backoff
from forge.nodeagent.logpump import SegmentLog

INST = "hello-1-0"


class Receiver:
    """A syslog-over-TCP receiver (octet counting) that can be stopped and started on one port."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.port = 0
        self.lock = threading.Lock()
        self.got = threading.Condition(self.lock)
        self.srv: socket.socket | None = None
        self.conns: list[socket.socket] = []

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        self.port = srv.getsockname()[1]
        srv.listen(8)
        self.srv = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        rest = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                msgs, rest = unframe(rest + data)
            except ValueError:  # not syslog (a TLS hello): hang up, as a receiver would
                conn.close()
                return
            with self.got:
                self.messages += msgs
                self.got.notify_all()

    def stop(self) -> None:
        if self.srv is not None:
            # shutdown first: a close alone leaves the listener alive under the blocked accept()
            try:
                self.srv.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.srv.close()
            self.srv = None
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns = []

    def texts(self) -> list[str]:
        with self.lock:
            return [m.split(BOM, 1)[1].decode() for m in self.messages]

    def wait_count(self, n: int, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        with self.got:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"received {len(self.messages)} of {n} messages")
                self.got.wait(left)
        return self.texts()


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def write_lines(
    logs: Path, lines: list[str], inst: str = INST, source: str = "app", cap: int = 4 * 2**20
) -> None:
    seg = SegmentLog(str(logs / inst), source, cap)
    try:
        seg.write("".join(f"{ln}\n" for ln in lines).encode())
    finally:
        seg.close()


def make_worker(
    tmp_path: Path,
    port: int,
    stop: threading.Event,
    instances: list[tuple[str, str, float | None]] | None = None,
    **kw: Any,
) -> DrainWorker:
    url = parse_url(f"syslog+tcp://127.0.0.1:{port}")
    clock = SystemClock()
    insts = instances if instances is not None else [(INST, "web", None)]
    return DrainWorker(
        "hello-abc",
        "hello",
        SyslogSender(url, clock, stop),
        "node-1",
        tmp_path / "logs",
        tmp_path / "drains" / "hello-abc.json",
        lambda: list(insts),
        clock,
        stop,
        **kw,
    )


def look(worker: DrainWorker) -> bool:
    """One round over every Instance, as after a wake-up that names none."""
    worker.wake()
    return worker.step()


def drive(worker: DrainWorker, until: int = 200) -> None:
    """Run rounds in the test's thread until nothing is pending (bounded)."""
    for _ in range(until):
        if not look(worker) and not worker.failures:
            return
    raise AssertionError("the drain never caught up")


def test_delivers_in_order_and_resumes_after_restart(tmp_path: Path, receiver: Receiver) -> None:
    """Every line once, in order, with APP-NAME/PROCID/MSGID; a new worker on the saved state sends
    only what came after (nothing again)."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    write_lines(logs, [f"line {i}" for i in range(500)])
    write_lines(logs, ["building…"], source="build")
    w = make_worker(tmp_path, receiver.port, stop)
    drive(w)
    got = receiver.wait_count(501)
    assert got[0] == "building…" and got[1:] == [f"line {i}" for i in range(500)]
    head = receiver.messages[1].split(BOM)[0].decode().split(" ")
    assert head[2:6] == ["node-1", "hello", INST, "web"] and receiver.messages[0].split(b" ")[5] == b"build"
    assert w.state.delivered == 501
    w.sender.close()

    write_lines(logs, [f"more {i}" for i in range(10)])
    w2 = make_worker(tmp_path, receiver.port, stop)
    drive(w2)
    got = receiver.wait_count(511)
    assert got[501:] == [f"more {i}" for i in range(10)] and len(got) == 511
    assert w2.state.delivered == 511
    w2.sender.close()


def test_receiver_down_then_up_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    """Lines written while the receiver is down fail with a back-off and a masked last error, the
    cursor stays, and once it is back every line arrives, in order (at least once)."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    write_lines(logs, [f"before {i}" for i in range(20)])
    w = make_worker(tmp_path, receiver.port, stop)
    drive(w)
    receiver.wait_count(20)
    receiver.stop()
    write_lines(logs, [f"during {i}" for i in range(300)])
    assert look(w) is False and w.failures >= 1
    # A dead connection may swallow one write before the reset shows: retry until it is seen.
    for _ in range(5):
        if w.failures and "127.0.0.1" in w.last_error:
            break
        look(w)
    assert w.failures >= 1 and w.retry_at > 0 and "127.0.0.1" in w.last_error
    pos_down = w.state.cursors[INST]["app"]
    receiver.start()
    drive(w)
    got = receiver.wait_count(320)
    expected = [f"before {i}" for i in range(20)] + [f"during {i}" for i in range(300)]
    firsts = list(dict.fromkeys(got))
    assert firsts == expected, "every line, in order of first arrival"
    assert w.state.cursors[INST]["app"] > pos_down and w.last_error == "" and w.failures == 0
    w.sender.close()


def test_crash_between_ack_and_save_resends_at_most_one_batch(tmp_path: Path, receiver: Receiver) -> None:
    """An agent that dies after the receiver acknowledged a batch but before the cursor was saved
    sends that batch again after the restart — and nothing more."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    write_lines(logs, [f"{i:06d} " + "x" * 200 for i in range(3000)])  # ~620 KiB: several batches
    w = make_worker(tmp_path, receiver.port, stop)
    assert look(w) is True  # one batch delivered and saved, more pending
    first = len(receiver.wait_count(1))

    class Crash(Exception):
        pass

    def crash(_path: Path) -> None:
        raise Crash

    w.state.save = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        w.round()  # the second batch reaches the receiver; the crash comes before the save
    w.sender.close()
    sent_twice = receiver.wait_count(first + 1)[first:]
    w2 = make_worker(tmp_path, receiver.port, stop)
    drive(w2)
    got = receiver.wait_count(3000 + len(sent_twice))
    assert list(dict.fromkeys(got)) == [f"{i:06d} " + "x" * 200 for i in range(3000)]
    dupes = len(got) - 3000
    assert 0 < dupes <= len(sent_twice) and dupes * 207 <= BATCH_BYTES + 207
    w2.sender.close()


def test_buffer_bound_drops_oldest_and_counts_exactly(tmp_path: Path) -> None:
    """A drain more than ``buffer_bytes`` behind skips to the newest lines that fit, counts exactly
    the lines it skipped and says so in a marker line first."""
    logs = tmp_path / "logs"
    lines = [f"{i:05d} " + "y" * 94 for i in range(5000)]  # 101 bytes each with the newline
    write_lines(logs, lines)
    bound = 64 * 1024
    chunk = read_chunk(logs / INST, "app", 0, 10 * 2**20, bound)
    kept = [t for _o, t in chunk.lines]
    assert chunk.skipped_lines + len(kept) == 5000
    assert kept == lines[chunk.skipped_lines :] and len(kept) * 101 <= bound
    assert chunk.lost_bytes == 0


def test_buffer_bound_through_the_worker(tmp_path: Path, receiver: Receiver) -> None:
    """The worker reports what its bound dropped, sends the marker, then the kept lines in order."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    w = make_worker(tmp_path, receiver.port, stop, buffer_bytes=32 * 1024)
    drive(w)  # state saved: the Instance's logs start at 0
    receiver.stop()
    lines = [f"{i:05d} " + "z" * 94 for i in range(2000)]
    write_lines(logs, lines)
    receiver.start()
    drive(w)
    got = receiver.wait_count(1 + 2000 - w.state.dropped)
    assert got[0].startswith(f"[forge] {w.state.dropped} log lines dropped") and w.state.dropped > 0
    assert got[1:] == lines[w.state.dropped :]
    w.sender.close()


def test_lines_deleted_by_the_writer_are_counted_in_bytes(tmp_path: Path, receiver: Receiver) -> None:
    """Bytes the writer's cap deleted before delivery are counted (droppedBytes) and marked."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    w = make_worker(tmp_path, receiver.port, stop, buffer_bytes=64 * 2**20)
    drive(w)
    lines = [f"{i:06d} " + "q" * 93 for i in range(30000)]  # 3 MB into a 1 MiB cap
    seg = SegmentLog(str(logs / INST), "app", 2**20)
    for i in range(0, len(lines), 1000):
        seg.write("".join(f"{ln}\n" for ln in lines[i : i + 1000]).encode())
    seg.close()
    drive(w)
    assert w.state.dropped_bytes > 0
    texts = receiver.texts()
    assert any(t.startswith(f"[forge] {w.state.dropped_bytes} bytes of log were deleted") for t in texts)
    assert texts[-1] == lines[-1]
    w.sender.close()


def test_new_drain_starts_at_the_end_for_older_instances(tmp_path: Path, receiver: Receiver) -> None:
    """A drain added while an Instance runs ships that Instance's new lines only; an Instance that
    starts after the drain was added is shipped from its first line."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    write_lines(logs, ["old history"])
    write_lines(logs, ["new instance's first line"], inst="hello-2-0")
    now = time.time()
    w = make_worker(
        tmp_path,
        receiver.port,
        stop,
        instances=[(INST, "web", now - 100), ("hello-2-0", "web", now + 1)],
        created=now,
    )
    drive(w)
    write_lines(logs, ["fresh"])
    drive(w)
    got = receiver.wait_count(2)
    assert sorted(got) == ["fresh", "new instance's first line"]
    w.sender.close()


def test_tls_to_an_untrusted_server_fails_with_a_clear_error(tmp_path: Path, receiver: Receiver) -> None:
    """A TLS drain to a receiver that does not speak TLS (or is untrusted) fails, cursor unmoved."""
    url = parse_url(f"syslog+tls://127.0.0.1:{receiver.port}")
    s = SyslogSender(url, SystemClock(), threading.Event())
    with pytest.raises(DeliveryError, match="TLS"):
        s.send([b"1 x"])


def test_backoff_doubles_with_jitter_and_caps() -> None:
    """0.5 s doubling to 10 s, each within ±20 %."""
    assert backoff(1, lambda: 0.5) == pytest.approx(0.5)
    assert backoff(4, lambda: 0.5) == pytest.approx(4.0)
    assert backoff(30, lambda: 1.0) == pytest.approx(12.0) and backoff(30, lambda: 0.0) == pytest.approx(8.0)


def test_worker_sleeps_until_new_lines_wake_it(tmp_path: Path, receiver: Receiver) -> None:
    """With the inotify notifier the worker has no timer while idle, and a line appended to the
    Instance's log reaches the receiver without anything else waking it."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    (logs / INST).mkdir(parents=True)
    w = make_worker(tmp_path, receiver.port, stop)
    notifier = Notifier(logs, lambda _inst: w.wake(), stop)
    notifier.start()
    w.start()
    try:
        write_lines(logs, ["hello"])
        assert receiver.wait_count(1) == ["hello"]
        assert w._wait() is None, "idle: no timer"
        write_lines(logs, ["again"], inst="hello-1-0")
        assert receiver.wait_count(2) == ["hello", "again"]
    finally:
        stop.set()
        w.close()
        notifier.close()


def test_state_file_round_trip(tmp_path: Path) -> None:
    """Cursors and counters survive a save and load; an unreadable file is a fresh start."""
    st = DrainState(cursors={"a-1-0": {"app": 10, "build": 3}}, delivered=5, dropped=2, dropped_bytes=7)
    st.save(tmp_path / "d.json")
    assert DrainState.load(tmp_path / "d.json") == st
    (tmp_path / "bad.json").write_text("{not json")
    assert DrainState.load(tmp_path / "bad.json") is None


def test_drain_heard_of_late_starts_where_the_logs_ended_at_its_creation(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The node hears of a drain after the app wrote more lines: those lines are sent all the
    same (the manager's marks say where the logs ended when the drain was created), the ones
    from well before are not."""
    from forge.nodeagent.drains.manager import DrainManager
    from forge.nodeagent.state import AgentState, InstanceState

    stop = threading.Event()
    logs = tmp_path / "logs"
    write_lines(logs, ["long ago"])
    state = AgentState(tmp_path / "agent-state.json")
    state.put(
        InstanceState(
            name=INST,
            app="hello",
            deployment="hello-1",
            cgroup="",
            release_dir="",
            started_time=time.time() - 100,
        )
    )
    mgr = DrainManager(None, "node-1", tmp_path, logs, state, lambda _i: "web", SystemClock(), stop)  # type: ignore[arg-type]
    mgr.mark(INST, force=True)
    created = time.time() + 0.01
    time.sleep(0.02)
    write_lines(logs, ["after the drain was added", "and more"])  # before the node heard of it
    mgr.mark(INST)  # within a second of the last mark: skipped, like a burst
    assert mgr.start_offsets(INST, created) is not None
    w = make_worker(
        tmp_path,
        receiver.port,
        stop,
        instances=[(INST, "web", time.time() - 100)],
        created=created,
        start_at=mgr.start_offsets,
    )
    drive(w)
    assert receiver.wait_count(2) == ["after the drain was added", "and more"]
    w.sender.close()
    shutil_rmtree(logs / INST)
    mgr.mark(INST)
    assert mgr.start_offsets(INST, created) is None, "marks of deleted logs are forgotten"


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_stopped_instance_logs_wait_for_the_drains_bounded(tmp_path: Path, receiver: Receiver) -> None:
    """A stopped Instance's logs stay while a drain still owes lines of it (the receiver is down),
    go once delivered, and go anyway after HOLD_SECONDS — what was left counted as dropped."""
    from forge.clock import FakeClock
    from forge.nodeagent.drains.manager import HOLD_SECONDS, DrainManager
    from forge.nodeagent.state import AgentState, InstanceState

    stop = threading.Event()
    logs = tmp_path / "logs"
    state = AgentState(tmp_path / "agent-state.json")
    state.put(InstanceState(name=INST, app="hello", deployment="hello-1", cgroup="", release_dir=""))
    clock = FakeClock()
    mgr = DrainManager(None, "node-1", tmp_path, logs, state, lambda _i: "web", clock, stop)  # type: ignore[arg-type]
    w = make_worker(tmp_path, receiver.port, stop)
    mgr.workers[w.name] = w
    write_lines(logs, ["one"])
    drive(w)
    receiver.wait_count(1)
    assert mgr.pending(INST) is False, "everything delivered: nothing to wait for"
    receiver.stop()
    write_lines(logs, ["two", "three"])  # 10 bytes the drain cannot deliver
    look(w)
    assert mgr.pending(INST) is True
    clock.advance(HOLD_SECONDS - 1)
    assert mgr.pending(INST) is True
    clock.advance(2)
    assert mgr.pending(INST) is False
    assert w.state.dropped_bytes == len("two\nthree\n") and INST not in w.state.cursors
    drive(w)  # the Instance is still listed until the agent forgets it: not tracked again
    assert INST not in w.state.cursors
    w.sender.close()


def test_manager_converges_workers_and_their_state(tmp_path: Path, receiver: Receiver) -> None:
    """apply() starts a worker per listed drain (woken by the notifier), stops and forgets the
    ones no longer listed — also state files left from before an agent restart."""
    from forge.nodeagent.drains.manager import DrainManager
    from forge.nodeagent.state import AgentState, InstanceState

    stop = threading.Event()
    logs = tmp_path / "logs"
    (logs / INST).mkdir(parents=True)
    state = AgentState(tmp_path / "agent-state.json")
    state.put(InstanceState(name=INST, app="hello", deployment="hello-1", cgroup="", release_dir=""))
    mgr = DrainManager(None, "node-1", tmp_path, logs, state, lambda _i: "worker", SystemClock(), stop)  # type: ignore[arg-type]
    mgr._report = lambda _d, _b: None  # type: ignore[method-assign]  # no API here
    (tmp_path / "drains").mkdir()
    (tmp_path / "drains" / "hello-stale00000.json").write_text("{}")
    mgr._start_notifier()
    try:
        mgr.apply([{"name": "hello-0123456789", "app": "hello", "url": f"syslog+tcp://127.0.0.1:{receiver.port}",
                    "createdAt": "2026-01-01T00:00:00.000000Z"}])
        assert set(mgr.workers) == {"hello-0123456789"}
        assert not (tmp_path / "drains" / "hello-stale00000.json").exists()
        write_lines(logs, ["via the manager"])
        assert receiver.wait_count(1) == ["via the manager"]
        assert receiver.messages[0].split(b" ")[5] == b"worker"  # MSGID: the process type
        assert (tmp_path / "drains" / "hello-0123456789.json").exists()
        mgr.apply([])
        assert mgr.workers == {} and not (tmp_path / "drains" / "hello-0123456789.json").exists()
    finally:
        stop.set()
        mgr.shutdown()


def test_unacknowledged_bytes_are_not_delivered(tmp_path: Path) -> None:
    """A receiver that accepts but does not read (its window full) never acknowledges: the send
    fails after the ack timeout and the cursor stays, though every byte left this host's socket."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # inherited by the accepted socket
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()
    logs = tmp_path / "logs"
    write_lines(logs, [f"{i:04d} " + "w" * 195 for i in range(40)])  # 8 KB: fits our send buffer
    w = make_worker(tmp_path, srv.getsockname()[1], stop)
    w.sender = SyslogSender(parse_url(f"syslog+tcp://127.0.0.1:{srv.getsockname()[1]}"), SystemClock(), stop,
                            ack_timeout=0.5)
    try:
        assert look(w) is False
        assert w.failures == 1 and "did not acknowledge" in w.last_error
        assert w.state.cursors[INST]["app"] == 0 and w.state.delivered == 0
    finally:
        w.sender.close()
        srv.close()


def test_a_wake_up_names_the_instance_to_read(tmp_path: Path, receiver: Receiver) -> None:
    """A round after ``wake(A)`` reads A's logs only; B's lines go when B is named (or all are)."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    insts = [("hello-1-0", "web", None), ("hello-1-1", "web", None)]
    w = make_worker(tmp_path, receiver.port, stop, instances=insts)
    drive(w)
    write_lines(logs, ["a1"], inst="hello-1-0")
    write_lines(logs, ["b1"], inst="hello-1-1")
    w.wake("hello-1-0")
    w.step()
    assert receiver.wait_count(1) == ["a1"]
    w.wake("hello-1-1")
    w.step()
    assert receiver.wait_count(2) == ["a1", "b1"]
    w.sender.close()


def test_without_inotify_the_worker_looks_on_a_timer(tmp_path: Path, receiver: Receiver) -> None:
    """Where inotify is missing the worker wakes on its fallback timer and still delivers."""
    stop = threading.Event()
    logs = tmp_path / "logs"
    write_lines(logs, ["first"])
    w = make_worker(tmp_path, receiver.port, stop, idle_wait=0.05)
    w.start()
    try:
        assert receiver.wait_count(1) == ["first"]  # the first round (at start) is done
        write_lines(logs, ["no notifier"])
        assert receiver.wait_count(2) == ["first", "no notifier"]
    finally:
        stop.set()
        w.close()
