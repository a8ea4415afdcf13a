"""Sandbox with real processes: cgroup limits (memory, pids, cpu), bwrap isolation,
detached spawn, stop of double-forked daemons, environment from scratch.

Root and cgroup v1 on the dev/CI machines; each test skips with the reason when bwrap,
cgroups or root are missing. Groups live under ``forge-test/`` with random names and are
removed by the fixture finalizer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forge.cgroups import CgroupDriver, detect_driver
from forge.clock import SystemClock
from forge.nodeagent.sandbox import (
    Sandbox,
    SandboxSpec,
    SandboxTimeout,
    UidAllocator,
    prepare_workdir,
    session_members,
)

CLOCK = SystemClock()
DRIVER = detect_driver(parent="forge-test") if os.geteuid() == 0 else None
BWRAP = shutil.which("bwrap")
needs_all = pytest.mark.skipif(
    DRIVER is None or BWRAP is None or os.geteuid() != 0, reason="needs root, a cgroup driver and bwrap"
)
PY = "/usr/bin/python3"


def alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def start_ticks(pid: int) -> int | None:
    """Start time of pid in clock ticks (field 22 of /proc/PID/stat); None when gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def wait_for(cond: Callable[[], bool], timeout: float = 8.0) -> bool:
    """Bounded wait for something a real process does (test helper, not product code)."""
    deadline = CLOCK.monotonic() + timeout
    while not cond():
        if CLOCK.monotonic() > deadline:
            return False
        CLOCK.sleep(0.05)
    return True


@pytest.fixture(scope="module", autouse=True)
def _remove_test_parent() -> Iterator[None]:
    yield
    if DRIVER is not None:
        DRIVER.remove_parent()


@pytest.fixture
def groups() -> Iterator[Callable[..., str]]:
    """Factory of unique limited groups under forge-test/, all removed at the end."""
    assert DRIVER is not None
    made: list[str] = []

    def make(memory: int | None = 128 << 20, cpu: float | None = None, pids: int | None = 64) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        made.append(name)
        DRIVER.create(name)
        DRIVER.set_limits(name, memory, cpu, pids)
        return name

    yield make
    for name in made:
        DRIVER.kill_all(name)
        DRIVER.remove(name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An agent data dir: secret key (0600 root), uid map, releases/."""
    d = tmp_path / "data"
    (d / "releases").mkdir(parents=True)
    d.chmod(0o700)
    (d / "secret.key").write_text("c2VjcmV0LWtleS1ieXRlcw==\n")
    (d / "secret.key").chmod(0o600)
    return d


@pytest.fixture
def release(data_dir: Path) -> Callable[[str], tuple[Path, int]]:
    """releases/APP/APP-1 owned by the app's own uid, 0700."""
    uids = UidAllocator(data_dir / "uids.json")

    def make(app: str) -> tuple[Path, int]:
        wd = data_dir / "releases" / app / f"{app}-1"
        wd.mkdir(parents=True)
        uid = uids.uid_for(app)
        prepare_workdir(wd, uid, uid)
        return wd, uid

    return make


def spec_for(wd: Path, uid: int | None, cgroup: str | None, command: str, env: dict[str, str] | None = None,
             app: str = "app") -> SandboxSpec:
    return SandboxSpec(app=app, workdir=str(wd), command=command, env=env or {}, uid=uid, gid=uid, cgroup=cgroup,
                       stdout_path=str(wd.parent / "out.log"), stderr_path=str(wd.parent / "err.log"))


def out(spec: SandboxSpec) -> str:
    return Path(spec.stdout_path).read_text()


@needs_all
def test_memory_limit_oom_kills_only_that_app(groups, release) -> None:
    """An app allocating past its memory limit is OOM-killed (oom_kills > 0); another group lives on."""
    assert DRIVER is not None
    sb = Sandbox(DRIVER)
    wd_a, uid_a = release("hog")
    wd_b, uid_b = release("calm")
    g_hog, g_calm = groups(memory=64 << 20), groups(memory=64 << 20)
    calm = sb.spawn(spec_for(wd_b, uid_b, g_calm, "exec sleep 60", app="calm"))
    hog = spec_for(wd_a, uid_a, g_hog, f"{PY} -c 'b=[]\nwhile True: b.append(bytearray(1 << 20))'", app="hog")
    code = sb.run(hog, timeout=20)
    assert code != 0
    assert DRIVER.oom_kills(g_hog) > 0
    assert DRIVER.oom_kills(g_calm) == 0
    assert alive(calm) and DRIVER.procs(g_calm)
    sb.stop(g_calm, calm, 1.0, CLOCK)


@needs_all
def test_fork_bomb_stops_at_pids_max(groups, release) -> None:
    """A forking loop cannot exceed pids.max=32; the host can still start processes; stop cleans all."""
    assert DRIVER is not None
    sb = Sandbox(DRIVER)
    wd, uid = release("bomb")
    g = groups(pids=32, cpu=0.5)
    bomb = textwrap.dedent("""
        import os, sys, time
        ok = failed = 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                failed += 1
                continue
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            ok += 1
        print("forked", ok, "failed", failed, flush=True)
        time.sleep(60)
    """)
    (wd / "bomb.py").write_text(bomb)
    os.chown(wd / "bomb.py", uid, uid)
    spec = spec_for(wd, uid, g, f"exec {PY} bomb.py")
    pid = sb.spawn(spec)
    assert wait_for(lambda: "forked" in out(spec)), Path(spec.stderr_path).read_text()
    forked, failed = (int(x) for x in out(spec).split()[1::2])
    assert failed > 0 and forked < 32
    assert DRIVER.stats(g).pids <= 32
    peak = [d / "pids.peak" for d in DRIVER.group_dirs(g) if (d / "pids.peak").exists()]
    assert all(int(f.read_text()) <= 32 for f in peak)
    assert subprocess.run(["true"], timeout=5).returncode == 0  # the host still forks
    members = DRIVER.procs(g)
    sb.stop(g, pid, 0.5, CLOCK)
    assert not DRIVER.exists(g)
    assert not any(alive(p) for p in members)


@needs_all
@pytest.mark.alone  # a share of a core: not while make test's other workers load the machine
def test_cpu_limit_half_a_core(groups, release) -> None:
    """A spinning app under cpu 0.5 never uses more than 0.65 of a core in any 2 s window
    (cpuacct delta / wall), and reaches at least 0.35 in one of up to four (a loaded machine can
    starve one window; a quota set too small starves every one)."""
    assert DRIVER is not None
    sb = Sandbox(DRIVER)
    wd, uid = release("spin")
    g = groups(cpu=0.5)
    pid = sb.spawn(spec_for(wd, uid, g, f"exec {PY} -c 'while True: pass'"))
    CLOCK.sleep(0.5)
    shares: list[float] = []
    try:
        while len(shares) < 4 and not any(s >= 0.35 for s in shares):
            t0, c0 = CLOCK.monotonic(), DRIVER.stats(g).cpu_seconds
            CLOCK.sleep(2.0)
            t1, c1 = CLOCK.monotonic(), DRIVER.stats(g).cpu_seconds
            shares.append((c1 - c0) / (t1 - t0))
            assert shares[-1] <= 0.65, shares
    finally:
        sb.stop(g, pid, 0.5, CLOCK)
    assert max(shares) >= 0.35, shares


@needs_all
def test_isolation_uid_files_and_tmp(groups, release, data_dir: Path) -> None:
    """Inside: non-root uid, in its cgroup; other releases, the data dir, /root and host /tmp are
    invisible; only the release dir and a private /tmp are writable."""
    sb = Sandbox(DRIVER)
    wd, uid = release("alpha")
    other, other_uid = release("beta")
    (other / "secret.txt").write_text("beta's")
    os.chown(other / "secret.txt", other_uid, other_uid)
    host_tmp = Path(f"/tmp/forge-host-{uuid.uuid4().hex[:8]}")
    host_tmp.write_text("host")
    g = groups()
    probes = {
        "read_other": f"cat {other}/secret.txt",
        "list_other": f"ls {other.parent}",
        "read_key": f"cat {data_dir}/secret.key",
        "list_root": "ls /root",
        "see_host_tmp": f"cat {host_tmp}",
        "write_usr": "touch /usr/forge-x",
        "write_etc": "touch /etc/forge-x",
        "write_data": f"touch {data_dir}/forge-x",
        "write_tmp": "echo hi > /tmp/x",
        "write_release": "echo hi > ./x",
    }
    script = "; ".join(f"if ({cmd}) >/dev/null 2>&1; then echo {k}=yes; else echo {k}=no; fi" for k, cmd in probes.items())
    spec = spec_for(wd, uid, g, f"id -u; cat /proc/self/cgroup; ls {data_dir}; {script}", app="alpha")
    try:
        assert sb.run(spec, timeout=10) == 0, Path(spec.stderr_path).read_text()
    finally:
        host_tmp.unlink()
    text = out(spec)
    lines = text.splitlines()
    assert int(lines[0]) == uid != 0
    assert f"memory:/forge-test/{g}" in text
    results = dict(line.split("=") for line in lines if line.endswith(("=yes", "=no")))
    writable = {"write_tmp", "write_release"}
    if str(data_dir).startswith("/tmp/"):  # then the write lands in the sandbox's private /tmp
        writable.add("write_data")
    assert results == {k: ("yes" if k in writable else "no") for k in probes}
    assert "secret.key" not in text and "uids.json" not in text
    assert (wd / "x").read_text() == "hi\n" and not (data_dir / "forge-x").exists()


@needs_all
@pytest.mark.parametrize(
    ("path", "mode"), [("releases/beta/beta-1/secret.txt", "read"), ("secret.key", "read")], ids=["other-app", "key"]
)
def test_app_uid_cannot_read_outside_sandbox_either(release, data_dir: Path, path: str, mode: str) -> None:
    """Defence in depth: even unsandboxed, the app uid is denied other releases and the key."""
    _, uid = release("alpha")
    other, other_uid = release("beta")
    (other / "secret.txt").write_text("beta's")
    os.chown(other / "secret.txt", other_uid, other_uid)
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "cat",
                           str(data_dir / path)], capture_output=True, text=True, timeout=5)
    assert done.returncode != 0 and "Permission denied" in done.stderr
    assert oct(other.stat().st_mode & 0o777) == "0o700" and other.stat().st_uid == other_uid


@needs_all
def test_environment_is_only_what_was_passed(groups, release, monkeypatch) -> None:
    """The app sees the given env plus PATH/HOME defaults (and the shell's PWD), nothing of ours."""
    monkeypatch.setenv("FORGE_ADMIN_TOKEN", "must-not-leak")
    monkeypatch.setenv("FORGE_API", "http://127.0.0.1:1")
    wd, uid = release("envy")
    spec = spec_for(wd, uid, groups(), "env", env={"PORT": "20001", "FORGE_APP": "envy", "GREETING": "a b=c"})
    assert Sandbox(DRIVER).run(spec, timeout=10) == 0
    seen = dict(line.split("=", 1) for line in out(spec).splitlines())
    assert seen.pop("PWD") == str(wd)
    assert seen == {"PORT": "20001", "FORGE_APP": "envy", "GREETING": "a b=c", "HOME": str(wd),
                    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    assert "must-not-leak" not in out(spec) + Path(spec.stderr_path).read_text()


SPAWNER = """
import json, sys
from forge.cgroups import detect_driver
from forge.nodeagent.sandbox import Sandbox, SandboxSpec
spec = SandboxSpec(**json.loads(sys.argv[1]))
pid = Sandbox(detect_driver(parent="forge-test")).spawn(spec)
print(pid, flush=True)
sys.stdin.read()  # blocks until killed
"""


@needs_all
def test_detached_app_survives_its_spawner_being_killed(groups, release) -> None:
    """A spawned app keeps running after the process that spawned it is SIGKILLed."""
    assert DRIVER is not None
    wd, uid = release("lives")
    g = groups()
    spec = spec_for(wd, uid, g, "exec sleep 60")
    parent = subprocess.Popen([sys.executable, "-c", SPAWNER, json.dumps(spec.__dict__)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait(timeout=5)
    parent.stdout.close()
    parent.stdin.close()  # type: ignore[union-attr]
    CLOCK.sleep(0.3)
    assert alive(pid) and pid in DRIVER.procs(g)
    assert len(DRIVER.procs(g)) >= 3  # bwrap monitor, bwrap init, sleep
    Sandbox(DRIVER).stop(g, pid, 1.0, CLOCK)
    assert not alive(pid) and not DRIVER.exists(g)


@needs_all
@pytest.mark.parametrize(
    "command",
    ["sh -c 'setsid sleep 1000 &'; exec sleep 1000",
     "(setsid sh -c 'trap \"\" TERM; sleep 1000 & wait' &); trap '' TERM; sleep 1000"],
    ids=["setsid-daemon", "term-ignoring-double-fork"],
)
def test_stop_leaves_nothing_behind(groups, release, command: str) -> None:
    """stop() of an app that forked a daemon (setsid, double fork, SIGTERM ignored) kills every
    process and removes the cgroup."""
    assert DRIVER is not None
    sb = Sandbox(DRIVER)
    wd, uid = release("daemonic")
    g = groups()
    pid = sb.spawn(spec_for(wd, uid, g, command))
    assert wait_for(lambda: sum(comm(p) == "sleep" for p in DRIVER.procs(g)) == 2)
    members = {p: start_ticks(p) for p in DRIVER.procs(g)}
    sb.stop(g, pid, 0.5, CLOCK)
    assert not DRIVER.exists(g)
    # Same pid *and* start time: another test's process may reuse a freed pid meanwhile. A task
    # leaves its cgroup early in exit, so the group can be gone while the last ones finish
    # dying: they must be gone within moments, not stay.
    def survivors() -> list[int]:
        return [p for p, t in members.items() if alive(p) and start_ticks(p) == t]

    assert wait_for(lambda: not survivors(), timeout=5), survivors()


@needs_all
def test_run_timeout_kills_the_whole_group(groups, release) -> None:
    """run() past its timeout kills every process of the run and raises SandboxTimeout."""
    assert DRIVER is not None
    wd, uid = release("slow")
    g = groups()
    with pytest.raises(SandboxTimeout):
        Sandbox(DRIVER).run(spec_for(wd, uid, g, "sleep 100 & sleep 100"), timeout=0.5)
    assert DRIVER.procs(g) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_dev_fallback_without_cgroups_or_bwrap_stops_the_session(tmp_path: Path) -> None:
    """Without a driver and bwrap, stop() still kills the process group/session of the app."""
    wd = tmp_path / "rel"
    wd.mkdir()
    sb = Sandbox(None, mode="dev", bwrap=None)
    spec = spec_for(wd, None, None, "sleep 1000 & sleep 1000 & echo started; wait")
    pid = sb.spawn(spec)
    assert wait_for(lambda: "started" in out(spec))
    members = session_members(pid)
    assert len(members) >= 3  # sh and two sleeps
    sb.stop(None, pid, 0.5, CLOCK)
    assert [p for p in members if alive(p)] == []
    assert session_members(pid) == []


@pytest.mark.parametrize(
    ("driver", "bwrap", "needle"),
    [(None, BWRAP, "cgroups"), (DRIVER, None, "bwrap"), (None, None, "cgroups")],
    ids=["no-cgroups", "no-bwrap", "nothing"],
)
def test_production_fails_closed(driver: CgroupDriver | None, bwrap: str | None, needle: str, tmp_path) -> None:
    """Production mode refuses to build or run when cgroups or bwrap are missing, saying which."""
    sb = Sandbox(driver, mode="production", bwrap=bwrap)
    with pytest.raises(Exception) as e:
        sb.check()
    assert e.value.__class__.__name__ == "Unavailable" and needle in str(e.value)
    with pytest.raises(Exception, match="production"):
        sb.spawn(spec_for(tmp_path, None, None, "true"))


def test_dev_mode_records_what_is_missing_and_warns_once(caplog) -> None:
    """Dev mode runs anyway, lists what is missing in Isolation, and logs one warning."""
    sb = Sandbox(None, mode="dev", bwrap=None)
    iso = sb.check()
    sb.check()
    assert (iso.cgroups, iso.bwrap, iso.namespaces) == ("none", False, False)
    assert any("bwrap" in m for m in iso.missing) and any("cgroups" in m for m in iso.missing)
    assert len([r for r in caplog.records if "isolation incomplete" in r.getMessage()]) == 1


@needs_all
def test_check_reports_full_isolation_here() -> None:
    """On this machine the check finds the cgroup version, working namespaces and bwrap."""
    iso = Sandbox(DRIVER, mode="production").check()
    assert DRIVER is not None
    assert (iso.cgroups, iso.namespaces, iso.bwrap, iso.missing) == (DRIVER.version, True, True, [])


def test_uid_allocator_is_stable_and_resolves_collisions(tmp_path: Path) -> None:
    """Same app → same uid across instances; a colliding hash moves to the next free uid."""
    path = tmp_path / "uids.json"
    a = UidAllocator(path)
    u1 = a.uid_for("hello")
    assert 200000 <= u1 < 300000 and UidAllocator(path).uid_for("hello") == u1
    path.write_text(json.dumps({"squatter": u1}))
    b = UidAllocator(path)
    assert b.uid_for("hello") == u1 + 1 if u1 < 299999 else 200000
    assert b.known() == {"squatter": u1, "hello": b.uid_for("hello")}
    assert oct(path.stat().st_mode & 0o777) == "0o600"


UNPRIV_SCRIPT = """
import sys
from forge.nodeagent.sandbox import Sandbox, SandboxSpec
sb = Sandbox(None, mode="dev")
assert sb.check().namespaces
wd = sys.argv[1]
spec = SandboxSpec(app="u", workdir=wd, command="id -u; echo pid=$$; touch /etc/x || echo etc=ro", env={},
                   uid=None, gid=None, cgroup=None, stdout_path=wd + "/../out", stderr_path=wd + "/../err")
print(sb.run(spec, 10))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or BWRAP is None or sys.version_info[:2] != (3, 11) or not os.path.exists(PY),
    reason="needs root (to become another user), bwrap and a system python3.11 matching the venv",
)
def test_unprivileged_agent_sandboxes_with_a_user_namespace(tmp_path: Path) -> None:
    """An agent running as a non-root user still gets pid/mount namespaces via --unshare-user."""
    uid = 299_999
    base = tmp_path / "u"
    (base / "rel").mkdir(parents=True)
    prepare_workdir(base / "rel", uid, uid)
    os.chown(base, uid, uid)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    # The checkout may sit under a 0700 directory (a home dir, mktemp -d) that the test uid
    # cannot traverse. Open the two import roots here, as root, and hand the uid the open
    # directories: /proc/self/fd/N reaches them without searching their ancestors, so
    # nothing on the machine is chmodded for the test.
    roots = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in (str(Path(__file__).parents[2]), site)]
    try:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(f"/proc/self/fd/{fd}" for fd in roots)}
        done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", PY, "-c",
                               UNPRIV_SCRIPT, str(base / "rel")], env=env, capture_output=True, text=True,
                              timeout=20, cwd="/", pass_fds=roots)
    finally:
        for fd in roots:
            os.close(fd)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
    assert (base / "out").read_text().split() == [str(uid), "pid=2", "etc=ro"]


def test_a_retired_uid_is_never_handed_out_again(tmp_path: Path) -> None:
    """An app gone and its files deleted: its uid is retired, so a new app of the same name (the
    same hash) gets another one, and the retirement survives a restart (a new allocator)."""
    path = tmp_path / "uids.json"
    old = UidAllocator(path).uid_for("hello")
    assert UidAllocator(path).retire("hello") == old and UidAllocator(path).retire("hello") is None
    new = UidAllocator(path).uid_for("hello")
    assert new != old and UidAllocator(path).uid_for("hello") == new
    assert old not in UidAllocator(path).known().values()
    assert json.loads(path.read_text())["retired"] == [old]
