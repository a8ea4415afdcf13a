"""cgroup v1 driver: for real on this machine (root, v1 hierarchies) and against a
temporary directory laid out like v1 cgroupfs for parsing."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.cgroups import CgroupStats, CgroupV1Driver

HOST = CgroupV1Driver("/sys/fs/cgroup", "forge-test")
needs_v1 = pytest.mark.skipif(
    os.geteuid() != 0 or not HOST.available(), reason="needs root and cgroup v1 memory/cpu/cpuacct/pids hierarchies"
)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    for c in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        (root / c).mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    return root


def fill(driver: CgroupV1Driver, name: str, files: dict[str, str]) -> None:
    """Create the group and write kernel-like files ('memory/memory.failcnt' → content)."""
    driver.create(name)
    for rel, text in files.items():
        ctl, _, f = rel.partition("/")
        (driver.root / ctl / driver.parent / name / f).write_text(text)


@pytest.mark.parametrize(
    ("memory", "cpu", "pids", "expected"),
    [
        (256 << 20, 0.5, 100, {"memory/memory.limit_in_bytes": "268435456", "memory/memory.memsw.limit_in_bytes":
                               "268435456", "cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000",
                               "pids/pids.max": "100"}),
        (None, None, None, {"memory/memory.limit_in_bytes": "-1", "memory/memory.memsw.limit_in_bytes": "-1",
                            "cpu/cpu.cfs_quota_us": "-1", "pids/pids.max": "max"}),
    ],
    ids=["typical", "unlimited"],
)
def test_v1_set_limits_writes_exact_values(fake_root: Path, memory, cpu, pids, expected) -> None:
    """set_limits writes limit_in_bytes, memsw (when present), cfs quota/period and pids.max."""
    driver = CgroupV1Driver(fake_root, "forge")
    fill(driver, "a", {"memory/memory.memsw.limit_in_bytes": ""})
    driver.set_limits("a", memory, cpu, pids)
    got = {k: (fake_root / k.split("/")[0] / "forge" / "a" / k.split("/")[1]).read_text() for k in expected}
    assert got == expected


@pytest.mark.parametrize(
    ("oom_control", "failcnt", "kills"),
    [
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "17", 3),
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n", "17", 0),
        ("oom_kill_disable 0\nunder_oom 0\n", "4", 1),
        ("oom_kill_disable 0\nunder_oom 0\n", "0", 0),
    ],
    ids=["oom-kill-line", "limit-hit-no-kill", "old-kernel-failcnt", "old-kernel-clean"],
)
def test_v1_stats_parsing(fake_root: Path, oom_control: str, failcnt: str, kills: int) -> None:
    """stats() reads usage_in_bytes, cpuacct.usage (ns), pids.current, oom_control / failcnt."""
    driver = CgroupV1Driver(fake_root, "forge")
    fill(driver, "a", {
        "memory/memory.usage_in_bytes": "5242880\n", "memory/memory.oom_control": oom_control,
        "memory/memory.failcnt": failcnt, "memory/memory.limit_in_bytes": "67108864\n",
        "cpuacct/cpuacct.usage": "1500000000\n", "pids/pids.current": "3\n",
    })
    assert driver.stats("a") == CgroupStats(5242880, 1.5, 3, kills, 67108864)


def test_v1_comounted_cpu_cpuacct_counted_once(tmp_path: Path) -> None:
    """With cpu and cpuacct symlinked to one 'cpu,cpuacct' mount the group dir is listed once."""
    root = tmp_path / "cg"
    for c in ("memory", "pids", "cpu,cpuacct"):
        (root / c).mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("0\n")
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    driver = CgroupV1Driver(root, "forge")
    assert driver.available()
    assert len(driver.procs_files("a")) == 3


@pytest.fixture(scope="module", autouse=True)
def _remove_test_parent() -> Iterator[None]:
    yield
    if HOST.available() and os.geteuid() == 0:
        HOST.remove_parent()


@pytest.fixture
def host_group() -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    HOST.kill_all(name)
    HOST.remove(name)


@needs_v1
def test_v1_for_real_lifecycle(host_group: str) -> None:
    """Real v1: create, limits read back, a real process joins, stats, kill_all, remove."""
    name = host_group
    HOST.create(name)
    assert HOST.exists(name) and name in HOST.list_groups()
    HOST.set_limits(name, 64 << 20, 0.5, 16)
    mem = Path("/sys/fs/cgroup/memory/forge-test") / name
    assert (mem / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    if (mem / "memory.memsw.limit_in_bytes").exists():
        assert (mem / "memory.memsw.limit_in_bytes").read_text().strip() == str(64 << 20)
    cpu = Path("/sys/fs/cgroup/cpu/forge-test") / name
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (Path("/sys/fs/cgroup/pids/forge-test") / name / "pids.max").read_text().strip() == "16"
    proc = subprocess.Popen(["sleep", "60"])
    HOST.add_process(name, proc.pid)
    assert HOST.procs(name) == [proc.pid]
    st = HOST.stats(name)
    assert (st.pids, st.oom_kills, st.memory_limit) == (1, 0, 64 << 20)
    assert f"memory:/forge-test/{name}" in Path(f"/proc/{proc.pid}/cgroup").read_text()
    HOST.kill_all(name)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert HOST.procs(name) == []
    HOST.remove(name)
    assert not HOST.exists(name) and name not in HOST.list_groups()


@needs_v1
def test_v1_limits_can_be_raised_and_lowered(host_group: str) -> None:
    """memsw and limit are written in the order the kernel accepts, both up and down."""
    HOST.create(host_group)
    for value in (64 << 20, 256 << 20, 32 << 20):
        HOST.set_limits(host_group, value, None, None)
        assert HOST.stats(host_group).memory_limit == value
    HOST.set_limits(host_group, None, None, None)
    assert HOST.stats(host_group).memory_limit is None
