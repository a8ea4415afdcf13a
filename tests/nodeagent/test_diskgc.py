"""Disk GC of release dirs on a node: the pure choice, the careful delete, and the agent's ``~diskgc`` timer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from forge.client import ForgeClient
from forge.clock import FakeClock
from forge.models import LABEL_APP, LABEL_DEPLOYMENT, LABEL_NODE, Instance
from forge.nodeagent.agent import (
    DISKGC_AFTER_STOP_SECONDS,
    DISKGC_KEY,
    DISKGC_SECONDS,
    HEARTBEAT_KEY,
    USAGE_KEY,
    Agent,
)
from forge.nodeagent.builder import BUILT_DIR, Builder
from forge.nodeagent.diskgc import DiskGC, releases_to_remove
from forge.nodeagent.metrics import AgentCollector
from forge.nodeagent.state import AgentState, InstanceState
from tests.metrics_helpers import assert_promtool_clean, needs_promtool, parse_exposition


def _h(*ns: int) -> list[str]:
    return [f"hello-{n}" for n in ns]


CASES = [
    ({"hello": _h(1, 2, 3, 4, 5)}, set(), 3, set(), [("hello", "hello-1"), ("hello", "hello-2")]),
    ({"hello": _h(5, 1, 3)}, set(), 3, set(), []),
    ({"hello": _h(10, 9, 2, 1)}, set(), 3, set(), [("hello", "hello-1")]),  # by number, not by name
    ({"hello": _h(1, 2, 3, 4, 5)}, {("hello", "hello-1")}, 3, set(), [("hello", "hello-2")]),
    ({"hello": _h(1, 2, 3, 4, 5)}, {("hello", "hello-1"), ("hello", "hello-2")}, 1, set(),
     [("hello", "hello-3"), ("hello", "hello-4")]),
    ({"hello": _h(1, 2, 3, 4, 5)}, set(), 0, set(), [("hello", f"hello-{n}") for n in (1, 2, 3, 4, 5)]),
    ({"hello": _h(1, 2, 3, 4, 5, 6)}, set(), 3, {("hello", "hello-6"), ("hello", "hello-2")},
     [("hello", "hello-1"), ("hello", "hello-2")]),
    ({"hello": _h(1, 2, 3, 4, 5)}, {("hello", "hello-1")}, 3, {("hello", "hello-1")}, [("hello", "hello-2")]),
    ({"hello": _h(5, 6, 7)}, set(), 3, {("hello", "hello-7"), ("hello", "hello-6")}, []),
    ({"hello": _h(1, 2, 3, 4, 5)}, set(), 3, {("hello", f"hello-{n}") for n in (1, 2, 3, 4, 5)},
     [("hello", "hello-1"), ("hello", "hello-2")]),
    ({"hello": _h(1, 2, 3, 4), "web": ["web-1", "web-2"], "api": ["api-7", "api-3", "api-5", "api-4"]},
     {("web", "web-1")}, 2, set(),
     [("api", "api-3"), ("api", "api-4"), ("hello", "hello-1"), ("hello", "hello-2")]),
    ({"hello": ["hello-2", "hello-3", "hello-4", "scratch"]}, set(), 3, set(), [("hello", "scratch")]),
    ({}, {("hello", "hello-1")}, 3, set(), []),
]
CASE_IDS = [
    "keeps-three-newest", "few-releases-kept", "numeric-not-lexical-order", "in-use-old-release-kept",
    "in-use-does-not-count-toward-keep-slots", "keep-zero-removes-all-unused", "unfinished-older-removed-newer-kept",
    "unfinished-in-use-kept", "unfinished-newest-kept-maybe-building", "all-unfinished-bounded-to-keep",
    "several-apps", "unnumbered-name-counts-as-oldest", "nothing-on-disk",
]


@pytest.mark.parametrize(("dirs", "in_use", "keep", "unfinished", "expected"), CASES, ids=CASE_IDS)
def test_releases_to_remove(dirs: dict[str, list[str]], in_use: set[tuple[str, str]], keep: int,
                            unfinished: set[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    """Per app the ``keep`` newest finished builds and every in-use release stay; older unfinished ones go."""
    assert releases_to_remove(dirs, in_use, keep, unfinished) == expected


def _release(root: Path, app: str, dep: str, built: bool = True, size: int = 100) -> Path:
    path = root / app / dep
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "blob").write_bytes(b"x" * size)
    if built:
        marker = root.parent / BUILT_DIR / app / dep
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("abc\n")
    return path


@pytest.fixture
def builder(tmp_path: Path) -> Builder:
    """A real Builder (its release locks are what the GC must honour); nothing is built with it."""
    return Builder(tmp_path / "data", "file:///nowhere/{full_name}.git", None, None, FakeClock(), dict,
                   lambda app: (None, None))


def test_apply_removes_old_keeps_locked_and_never_leaves_the_root(tmp_path: Path, builder: Builder) -> None:
    """Old dirs go with their bytes counted, a dir being built is skipped, symlinks lead nowhere outside."""
    root = tmp_path / "data" / "releases"
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    (outside / "victim" / "precious").write_text("keep me")
    for n in range(1, 7):
        _release(root, "hello", f"hello-{n}", size=1000 * n)
    (root / "hello" / "hello-1" / "sub" / "escape").symlink_to(outside)  # inside an old release: unlinked only
    (root / "hello" / "hello-0").symlink_to(outside / "victim")  # a release "dir" that is a symlink
    (root / "evil").symlink_to(outside)  # an app "dir" that is a symlink
    (root / "gone").mkdir()
    for n in range(1, 5):
        _release(root, "half", f"half-{n}", built=False)
    in_use = {("hello", "hello-2")}
    gc = DiskGC(root, lambda: set(in_use), builder.release_lock)
    lock = builder.release_lock("hello", "hello-3")
    with lock:
        removed = gc.run()
    assert {(r.app, r.deployment) for r in removed} == {("hello", "hello-1"), ("half", "half-1")}
    freed = {r.deployment: r.bytes_freed for r in removed}
    assert freed["hello-1"] == 1000 + len(str(outside)), "files plus the link itself, not its target"
    assert not (root.parent / "built" / "hello" / "hello-1").exists(), "its marker goes with it"
    assert sorted(p.name for p in (root / "hello").iterdir()) == ["hello-0", "hello-2", "hello-3", "hello-4",
                                                                 "hello-5", "hello-6"]
    assert not (root / "gone").exists(), "an app dir left empty is removed"
    assert (outside / "victim" / "precious").read_text() == "keep me"
    assert (root / "evil").is_symlink() and (root / "hello" / "hello-0").is_symlink()
    assert gc.removed_total == 2
    assert [(r.app, r.deployment) for r in gc.run()] == [("hello", "hello-3")], "unlocked: goes on the next pass"
    in_use.clear()
    assert [r.deployment for r in gc.run()] == ["hello-2"]
    assert gc.removed_total == 4


def test_path_resolving_outside_is_refused(tmp_path: Path, builder: Builder) -> None:
    """A release path whose realpath is not ROOT/APP/DEP is never deleted, even when asked directly."""
    root = tmp_path / "data" / "releases"
    root.mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "hello-1").mkdir(parents=True)
    (outside / "hello-1" / "data").write_text("precious")
    (root / "evil").symlink_to(outside)
    gc = DiskGC(root, set, builder.release_lock)
    assert gc._remove("evil", "hello-1") is None
    assert gc._remove("..", "outside") is None
    assert (outside / "hello-1" / "data").read_text() == "precious"
    assert gc.removed_total == 0


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """A real Agent (dev mode, no cgroups, fake clock) that is constructed but never started."""
    a = Agent(ForgeClient("http://127.0.0.1:9", "t"), "n1", tmp_path / "agent", "127.0.0.1", None, "dev",
              "file:///nowhere/{full_name}.git", threading.Event(), FakeClock(), driver=None, disk_fence=None)
    yield a
    a.client.close()


def _instance(name: str, app: str = "hello") -> Instance:
    dep = name.rsplit("-", 1)[0]
    return Instance.model_validate({
        "metadata": {"name": name, "labels": {LABEL_APP: app, LABEL_DEPLOYMENT: dep, LABEL_NODE: "n1"}},
        "spec": {"app": app, "deployment": dep, "node": "n1", "repo": "acme/hello", "commit": "a" * 40,
                 "manifest": {}, "env": {}},
    })


def _next(agent: Agent, after: float) -> str | None:
    """Let ``after`` seconds pass on the fake clock and take the next due key off the queue."""
    assert isinstance(agent.clock, FakeClock)
    agent.clock.advance(after)
    key = agent.queue.get(timeout=0)
    while key == USAGE_KEY:  # the resource sampler's own 10 s timer may fall due alongside
        agent.queue.done(key)
        key = agent.queue.get(timeout=0)
    return key


def test_agent_schedules_diskgc_on_its_work_queue(agent: Agent) -> None:
    """``~diskgc`` is a queue timer: first after the list, then every 10 minutes, and soon after a stop."""
    root = agent.data_dir / "releases"
    for n in range(1, 7):
        _release(root, "hello", f"hello-{n}")
    agent.schedule_timers()
    assert agent.beats.get(timeout=0) == HEARTBEAT_KEY  # the lease's own queue
    agent.beats.done(HEARTBEAT_KEY)  # no API in this test: the heartbeat is not sent
    assert agent.queue.get(timeout=0) is None, "no heartbeat on the shared work queue"
    assert agent.queue.pending_timer(DISKGC_KEY) == DISKGC_AFTER_STOP_SECONDS
    assert _next(agent, DISKGC_AFTER_STOP_SECONDS - 1) is None
    assert _next(agent, 1) == DISKGC_KEY
    agent.process(DISKGC_KEY)  # before the first list nothing is known to be unused: try again soon
    assert len(list((root / "hello").iterdir())) == 6
    assert agent.queue.pending_timer(DISKGC_KEY) == DISKGC_AFTER_STOP_SECONDS
    agent.synced.set()
    agent.cache["hello-1-0"] = _instance("hello-1-0")
    agent.state.put(InstanceState("hello-2-0", "hello", "hello-2", "inst-hello-2-0", str(root / "hello" / "hello-2")))
    assert _next(agent, DISKGC_AFTER_STOP_SECONDS) == DISKGC_KEY
    agent.process(DISKGC_KEY)
    assert sorted(p.name for p in (root / "hello").iterdir()) == _h(1, 2, 4, 5, 6)
    assert agent.queue.pending_timer(DISKGC_KEY) == DISKGC_SECONDS
    agent.process("hello-2-0")  # in the state, gone from the cache: stopped and forgotten
    assert agent.state.get("hello-2-0") is None
    assert agent.queue.pending_timer(DISKGC_KEY) == DISKGC_AFTER_STOP_SECONDS, "the earlier timer wins"
    assert _next(agent, DISKGC_AFTER_STOP_SECONDS) == DISKGC_KEY
    agent.process(DISKGC_KEY)
    assert sorted(p.name for p in (root / "hello").iterdir()) == _h(1, 4, 5, 6)
    assert agent.diskgc.removed_total == 2


@needs_promtool
def test_removed_counter_is_promtool_clean(tmp_path: Path) -> None:
    """``forge_agent_release_dirs_removed_total`` is a counter on the agent's registry and passes promtool."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(AgentState(tmp_path / "s.json"), None, lambda: 0.0, lambda: 4))
    text = generate_latest(registry).decode()
    assert_promtool_clean(text)
    exp = parse_exposition(text)
    assert exp.types["forge_agent_release_dirs_removed_total"] == "counter"
    assert exp.value("forge_agent_release_dirs_removed_total") == 4.0


def test_a_deleted_app_keeps_no_release_but_one_in_use() -> None:
    """An app that no longer exists keeps none of its newest releases, finished or not, except
    what an Instance here still uses; other apps keep theirs."""
    dirs = {app: [f"{app}-{n}" for n in range(1, 5)] for app in ("gone", "kept")}
    out = releases_to_remove(dirs, {("gone", "gone-4")}, keep=3, unfinished={("gone", "gone-3")},
                             gone={"gone"})
    assert out == [("gone", "gone-1"), ("gone", "gone-2"), ("gone", "gone-3"), ("kept", "kept-1")]
