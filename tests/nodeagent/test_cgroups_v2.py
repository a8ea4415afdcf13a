"""cgroup v2 driver: against a temporary directory laid out like cgroupfs, and for real
where the host's /sys/fs/cgroup is a cgroup2 mount offering the memory controller."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from forge.cgroups import CgroupStats, CgroupV1Driver, CgroupV2Driver, detect_driver
from forge.clock import FakeClock
from forge.errors import Invalid, Unavailable

GROUP_FILES = ("cgroup.procs", "memory.max", "memory.swap.max", "cpu.max", "pids.max", "cgroup.kill",
               "cgroup.freeze", "memory.current", "cpu.stat", "memory.events", "pids.current")


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A cgroup2 root as the kernel shows it: controllers offered, none delegated yet."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def make_group(driver: CgroupV2Driver, name: str, without: tuple[str, ...] = ()) -> Path:
    """Create the group and fill in the files the kernel would have put there."""
    driver.create(name)
    d = driver.group_dirs(name)[0]
    for f in GROUP_FILES:
        if f not in without:
            (d / f).write_text("")
    return d


@pytest.mark.parametrize(
    ("memory", "cpu", "pids", "expected"),
    [
        (256 << 20, 0.5, 100, {"memory.max": "268435456", "memory.swap.max": "0", "cpu.max": "50000 100000",
                               "pids.max": "100"}),
        (None, None, None, {"memory.max": "max", "memory.swap.max": "max", "cpu.max": "max 100000",
                            "pids.max": "max"}),
        (1 << 30, 2.0, 1, {"memory.max": "1073741824", "memory.swap.max": "0", "cpu.max": "200000 100000",
                           "pids.max": "1"}),
        (64 << 20, 0.0001, 32, {"memory.max": "67108864", "memory.swap.max": "0", "cpu.max": "1000 100000",
                                "pids.max": "32"}),
    ],
    ids=["typical", "unlimited", "two-cores", "tiny-cpu-floor"],
)
def test_v2_set_limits_writes_exact_values(fake_root: Path, memory, cpu, pids, expected) -> None:
    """set_limits writes memory.max, memory.swap.max=0, cpu.max 'quota period' and pids.max."""
    driver = CgroupV2Driver(fake_root, "forge")
    d = make_group(driver, "hello-1-0")
    driver.set_limits("hello-1-0", memory, cpu, pids)
    assert {f: (d / f).read_text() for f in expected} == expected


def test_v2_create_delegates_controllers_to_parent_and_group(fake_root: Path) -> None:
    """create() enables memory, cpu and pids in the root's and the parent's subtree_control."""
    driver = CgroupV2Driver(fake_root, "forge")
    (fake_root / "forge").mkdir()
    (fake_root / "forge" / "cgroup.controllers").write_text("cpu memory pids\n")
    (fake_root / "forge" / "cgroup.subtree_control").write_text("memory\n")
    driver.create("web")
    assert (fake_root / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (fake_root / "forge" / "cgroup.subtree_control").read_text() == "+cpu +pids"
    assert (fake_root / "forge" / "web").is_dir()
    assert driver.procs_files("web") == [str(fake_root / "forge" / "web" / "cgroup.procs")]
    assert driver.list_groups() == ["web"] and driver.exists("web")


def test_v2_swap_file_absent_is_skipped(fake_root: Path) -> None:
    """Without memory.swap.max (no swap accounting) set_limits does not create it."""
    driver = CgroupV2Driver(fake_root, "forge")
    d = make_group(driver, "a", without=("memory.swap.max",))
    driver.set_limits("a", 1 << 20, None, None)
    assert not (d / "memory.swap.max").exists()
    assert (d / "memory.max").read_text() == "1048576"


def test_v2_stats_parse_kernel_files(fake_root: Path) -> None:
    """stats() reads memory.current, cpu.stat usage_usec, pids.current, memory.events oom_kill."""
    driver = CgroupV2Driver(fake_root, "forge")
    d = make_group(driver, "a")
    (d / "memory.current").write_text("123456789\n")
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (d / "pids.current").write_text("7\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 41\noom 3\noom_kill 2\noom_group_kill 0\n")
    (d / "memory.max").write_text("268435456\n")
    assert driver.stats("a") == CgroupStats(123456789, 2.5, 7, 2, 268435456)
    assert driver.oom_kills("a") == 2


@pytest.mark.parametrize(
    ("events", "kills"),
    [("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", 0), ("max 9\noom 1\noom_kill 1\n", 1), ("", 0)],
    ids=["none", "one-kill", "empty-file"],
)
def test_v2_oom_detection_from_memory_events(fake_root: Path, events: str, kills: int) -> None:
    """oom_kills() is the oom_kill counter of memory.events (0 when absent)."""
    driver = CgroupV2Driver(fake_root, "forge")
    d = make_group(driver, "a")
    (d / "memory.events").write_text(events)
    (d / "memory.max").write_text("max\n")
    assert driver.oom_kills("a") == kills
    assert driver.stats("a").memory_limit is None


def test_v2_kill_all_writes_cgroup_kill(fake_root: Path) -> None:
    """kill_all() writes '1' into cgroup.kill when the kernel offers it, then remove() rmdirs."""
    driver = CgroupV2Driver(fake_root, "forge")
    d = make_group(driver, "a")
    driver.kill_all("a")
    assert (d / "cgroup.kill").read_text() == "1"
    for f in d.iterdir():  # cgroupfs has no regular files to delete; the fake does
        f.unlink()
    driver.remove("a")
    assert not driver.exists("a") and driver.list_groups() == []


def test_v2_kill_all_without_cgroup_kill_freezes_signals_and_is_bounded(fake_root: Path) -> None:
    """Without cgroup.kill: freeze, SIGKILL each pid, thaw; a group that never empties raises."""
    driver = CgroupV2Driver(fake_root, "forge", clock=FakeClock())
    d = make_group(driver, "a", without=("cgroup.kill",))
    proc = subprocess.Popen(["sleep", "60"])
    (d / "cgroup.procs").write_text(f"{proc.pid}\n")  # the fake never empties
    with pytest.raises(Unavailable, match=str(proc.pid)):
        driver.kill_all("a")
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert (d / "cgroup.freeze").read_text() == "0"


@pytest.mark.parametrize("name", ["a/b", "..", "", "../x", ".hidden", "a b", "x" * 200], ids=str)
def test_names_are_validated(fake_root: Path, name: str) -> None:
    """Group names are single safe path components."""
    driver = CgroupV2Driver(fake_root, "forge")
    with pytest.raises(Invalid):
        driver.create(name)


def _v1_layout(root: Path) -> None:
    for c in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        (root / c).mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")


@pytest.mark.parametrize(
    ("layout", "expected"),
    [("v2", CgroupV2Driver), ("v1", CgroupV1Driver), ("hybrid", CgroupV1Driver), ("empty", type(None)),
     ("v2-no-memory", type(None))],
    ids=str,
)
def test_detect_driver(tmp_path: Path, layout: str, expected: type) -> None:
    """detect_driver picks v2 for a cgroup2 root offering memory, v1 for v1 hierarchies, else None."""
    root = tmp_path / "cg"
    root.mkdir()
    if layout == "v2":
        (root / "cgroup.controllers").write_text("cpu memory pids\n")
    if layout == "v2-no-memory":
        (root / "cgroup.controllers").write_text("cpu pids\n")
    if layout in ("v1", "hybrid"):
        _v1_layout(root)
    if layout == "hybrid":
        (root / "unified").mkdir()
        (root / "unified" / "cgroup.controllers").write_text("")
    assert type(detect_driver(root, "forge")) is expected


HOST_V2 = Path("/sys/fs/cgroup/cgroup.controllers")


@pytest.mark.skipif(
    not (HOST_V2.exists() and "memory" in HOST_V2.read_text().split() and os.geteuid() == 0),
    reason="host is not a cgroup v2 machine with the memory controller (or not root)",
)
def test_v2_for_real() -> None:
    """On a cgroup v2 host: create, limit, join a process, stats, kill_all, remove."""
    driver = detect_driver(parent="forge-test")
    assert isinstance(driver, CgroupV2Driver)
    name = f"t-{uuid.uuid4().hex[:8]}"
    driver.create(name)
    try:
        driver.set_limits(name, 64 << 20, 0.5, 16)
        d = driver.group_dirs(name)[0]
        assert (d / "memory.max").read_text().strip() == str(64 << 20)
        assert (d / "cpu.max").read_text().strip() == "50000 100000"
        proc = subprocess.Popen(["sleep", "60"])
        driver.add_process(name, proc.pid)
        assert driver.procs(name) == [proc.pid]
        assert driver.stats(name).pids == 1
        driver.kill_all(name)
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        driver.kill_all(name)
        driver.remove(name)
    assert not driver.exists(name)
