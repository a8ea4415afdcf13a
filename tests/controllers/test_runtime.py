"""The controller runtime with a real SQLite store and real (short) delays."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from forge.clock import SystemClock
from forge.config import Config
from forge.controllers.base import DONE, Controller, Result
from forge.controllers.runtime import Backoff, ControllerRuntime
from forge.errors import Conflict, TerminalError
from forge.store.base import Store
from forge.workqueue import WorkQueue


class Recording(Controller):
    """Reconciles App keys; behaviour per key is scripted by ``plan`` (a list of outcomes)."""

    name: ClassVar[str] = "recording"
    watches: ClassVar[tuple[str, ...]] = ("App",)
    resync_seconds: ClassVar[float] = 3600.0

    def __init__(self, store: Store, clock: SystemClock, config: Config) -> None:
        super().__init__(store, clock, config)
        self.calls: list[tuple[str, float]] = []
        self.plan: dict[str, list[object]] = {}
        self.running: set[str] = set()
        self.overlap = False
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None

    def all_keys(self) -> Iterable[str]:
        return [a.metadata.name for a in self.store.list("App")[0]]

    def reconcile(self, key: str) -> Result | None:
        with self.lock:
            self.overlap = self.overlap or key in self.running
            self.running.add(key)
            self.calls.append((key, self.clock.monotonic()))
            step = self.plan.get(key, []).pop(0) if self.plan.get(key) else DONE
        try:
            if self.gate is not None:
                self.gate.wait(5)
            if isinstance(step, BaseException):
                raise step
            return step  # type: ignore[return-value]
        finally:
            with self.lock:
                self.running.discard(key)

    def seen_keys(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.calls]


@pytest.fixture
def rt(store: Store, config: Config) -> Iterator[tuple[ControllerRuntime, Recording, CollectorRegistry]]:
    clock = SystemClock()
    ctrl = Recording(store, clock, config)
    reg = CollectorRegistry()
    runtime = ControllerRuntime(store, clock, [ctrl], reg)
    yield runtime, ctrl, reg
    runtime.stop()


def test_queue_dedups_and_reruns_key_added_while_processing() -> None:
    """Duplicate adds merge; a key added while running is handed out again after done()."""
    q = WorkQueue(SystemClock())
    q.add("a"), q.add("a"), q.add("b")
    assert q.depth() == 2
    assert q.get() == "a"
    q.add("a")  # while processing: must not be handed to a second worker
    assert q.get() == "b"
    assert q.depth() == 0
    q.done("a")
    assert q.get() == "a"
    q.done("a"), q.done("b")
    assert q.idle()


def test_queue_delayed_adds_come_out_in_due_order() -> None:
    """add_after releases keys by due time, not by insertion order."""
    q = WorkQueue(SystemClock())
    q.add_after("late", 0.15)
    q.add_after("early", 0.05)
    assert q.get() == "early"
    assert q.get() == "late"


def test_backoff_doubles_with_jitter_and_resets() -> None:
    """Delays grow exponentially within jitter bounds, cap, and reset on forget()."""
    b = Backoff(base=0.2, cap=1.0)
    delays = [b.next("k") for _ in range(5)]
    for n, d in enumerate(delays):
        full = min(1.0, 0.2 * 2**n)
        assert full / 2 <= d <= full
    b.forget("k")
    assert b.next("k") <= 0.2


def test_watch_wakes_controller_and_initial_list(rt, make_app) -> None:
    """Existing records are reconciled at start; a new record is reconciled via the watch."""
    runtime, ctrl, _ = rt
    make_app("one")
    runtime.start()
    assert runtime.wait_idle(5)
    make_app("two")
    assert runtime.wait_idle(5)
    assert sorted(set(ctrl.seen_keys())) == ["one", "two"]


def test_requeue_after_and_error_backoff_and_terminal(rt, make_app, store) -> None:
    """requeue_after runs again later; errors retry with back-off; TerminalError stops retries."""
    runtime, ctrl, reg = rt
    ctrl.plan = {
        "req": [Result(requeue_after=0.1), DONE],
        "err": [RuntimeError("boom"), RuntimeError("boom"), DONE],
        "term": [TerminalError("stop"), DONE],
        "conf": [Conflict("stale"), DONE],
    }
    for name in ctrl.plan:
        make_app(name)
    runtime.start()
    deadline = SystemClock().monotonic() + 5
    while SystemClock().monotonic() < deadline and not (
        ctrl.seen_keys().count("req") == 2 and ctrl.seen_keys().count("err") == 3 and ctrl.seen_keys().count("conf") == 2
    ):
        threading.Event().wait(0.02)
    keys = ctrl.seen_keys()
    assert keys.count("req") == 2 and keys.count("err") == 3 and keys.count("conf") == 2
    assert keys.count("term") == 1
    err_times = [t for k, t in ctrl.calls if k == "err"]
    assert err_times[1] - err_times[0] >= 0.1 and err_times[2] - err_times[1] >= 0.2  # 0.2·2ⁿ, equal jitter
    text = generate_latest(reg).decode()
    for result in ("success", "requeue", "error", "conflict", "terminal"):
        assert f'result="{result}"' in text
    assert "forge_controller_reconcile_seconds_bucket" in text
    assert "forge_controller_queue_depth" in text
    # a change to the terminal key lifts the stop
    app = store.get("App", "term")
    app.spec.replicas = 3
    store.update(app)
    assert runtime.wait_idle(5)
    assert ctrl.seen_keys().count("term") == 2


def test_one_worker_per_key_even_with_many_workers(store, config, make_app) -> None:
    """With several workers, a key re-added while running never runs concurrently."""
    clock = SystemClock()
    ctrl = Recording(store, clock, config)
    ctrl.gate = threading.Event()
    runtime = ControllerRuntime(store, clock, [ctrl], CollectorRegistry(), workers_per_controller=3)
    make_app("solo")
    runtime.start()
    try:
        for i in range(5):
            app = store.get("App", "solo")
            app.spec.replicas = i + 2
            store.update(app)
        threading.Event().wait(0.2)
        ctrl.gate.set()
        assert runtime.wait_idle(5)
        assert not ctrl.overlap
        assert 2 <= ctrl.seen_keys().count("solo") <= 3
    finally:
        runtime.stop()


def test_gone_relists_all_keys(rt, make_app, store) -> None:
    """A watch from a compacted revision makes the runtime relist and reconcile every key."""
    runtime, ctrl, _ = rt
    for name in ("a", "b"):
        make_app(name)
    runtime.start()
    assert runtime.wait_idle(5)
    before = len(ctrl.seen_keys())
    store.compact(keep=0)
    runtime._spawn("watch-App-stale", runtime._watch_loop, "App", 0)  # resumes from a compacted revision
    deadline = SystemClock().monotonic() + 5
    while len(ctrl.seen_keys()) < before + 2 and SystemClock().monotonic() < deadline:
        threading.Event().wait(0.02)
    assert sorted(ctrl.seen_keys()[before:]) == ["a", "b"]


def test_stop_is_prompt_and_restartable(rt, make_app) -> None:
    """stop() joins every thread; start() again resumes work."""
    runtime, ctrl, _ = rt
    runtime.start()
    runtime.stop()
    assert not runtime.running
    assert not [t for t in threading.enumerate() if t.name.startswith("forge-watch") and t.is_alive()]
    make_app("later")
    runtime.start()
    assert runtime.wait_idle(5)
    assert "later" in ctrl.seen_keys()


def test_run_controllers_end_to_end(tmp_path, store, config, make_app, make_deployment) -> None:
    """run_controllers leads, fetches a release's manifest through the source controller, serves
    metrics, and releases the lease when stopped."""
    import dataclasses
    import socket
    import urllib.request

    from forge.controllers.leader import LEASE_NAME
    from forge.controllers.manager import run_controllers
    from tests.controllers.test_source import GOOD, push_commit

    cfg = dataclasses.replace(config, caddy_admin="127.0.0.1:1")  # never a real Caddy
    sha = push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD})
    make_deployment(make_app("hello"), 1, sha)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = threading.Event()
    t = threading.Thread(target=run_controllers, args=(cfg, store, SystemClock(), stop),
                         kwargs={"metrics_listen": f"127.0.0.1:{port}", "identity": "cp-test"}, daemon=True)
    t.start()
    try:
        deadline = SystemClock().monotonic() + 15
        while store.get("Deployment", "hello-1").status.manifest is None and SystemClock().monotonic() < deadline:
            stop.wait(0.05)
        assert store.get("Deployment", "hello-1").status.manifest is not None
        assert store.get("Lease", LEASE_NAME).spec.holder == "cp-test"
        want = 'forge_controller_reconcile_total{controller="source",result="success"}'
        text = ""
        while want not in text and SystemClock().monotonic() < deadline:  # counted after reconcile returns
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            stop.wait(0.02)
        assert want in text
        assert "forge_controller_leader 1.0" in text
    finally:
        stop.set()
        t.join(20)
    assert not t.is_alive()
    assert store.get("Lease", LEASE_NAME).spec.holder == ""
