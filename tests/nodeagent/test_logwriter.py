"""The log writer: the rate limit and the cap applied before the disk, markers, counters, and a
process that outlives whoever started it and never makes the app block or die."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge.clock import FakeClock
from forge.nodeagent.logwriter import (
    RATE_BURST_BYTES,
    RATE_BURST_LINES,
    RATE_WINDOW_SECONDS,
    Pump,
    SegmentLog,
    read_all,
    read_dropped,
    segments,
    spawn,
)


def _pump(tmp_path: Path, cap: int = 1 << 20, **kw: object) -> tuple[Pump, FakeClock]:
    clock = FakeClock()
    return Pump(SegmentLog(str(tmp_path), "app", cap), clock, **kw), clock  # type: ignore[arg-type]


def _on_disk(tmp_path: Path) -> int:
    return sum(size for _b, _p, size in segments(tmp_path, "app"))


@pytest.mark.parametrize("chunk", [1, 4096, 65536], ids=["byte-by-byte", "4k", "64k"])
def test_segments_never_exceed_the_cap_and_keep_the_newest(tmp_path: Path, chunk: int) -> None:
    """5 MB through a 1 MiB log: at no point more than the cap on disk; what is kept is the
    newest output, contiguous, each segment named by the logical offset of its first byte."""
    seg = SegmentLog(str(tmp_path), "app", cap=1 << 20)
    data = b"".join(b"%08d\n" % i for i in range(500_000))
    peak = 0
    for i in range(0, len(data), max(chunk, 9) if chunk == 1 else chunk):
        seg.write(data[i : i + (max(chunk, 9) if chunk == 1 else chunk)])
        peak = max(peak, seg.size + sum(s for _b, s in seg.closed))
    seg.close()
    assert peak <= 1 << 20 and _on_disk(tmp_path) <= 1 << 20
    segs = segments(tmp_path, "app")
    for (base, _p, size), (nxt, _q, _s) in zip(segs, segs[1:], strict=False):
        assert base + size == nxt, "segments are contiguous"
    kept = read_all(tmp_path, "app")
    assert data.endswith(kept) and data[segs[0][0] :] == kept


def test_rate_limit_drops_counts_and_marks_before_the_disk(tmp_path: Path) -> None:
    """30,000 lines at once: 10,000 reach the disk, the rest are counted; when the window ends
    a marker line says how many were dropped, and the counter file holds the total."""
    pump, clock = _pump(tmp_path, cap=64 << 20)
    pump.feed(b"".join(b"flood line %06d\n" % i for i in range(30_000)))
    lines = read_all(tmp_path, "app").splitlines()
    assert len(lines) == RATE_BURST_LINES and lines[-1] == b"flood line 009999"
    assert pump.wake_in() == RATE_WINDOW_SECONDS
    clock.advance(RATE_WINDOW_SECONDS)
    pump.tick()
    pump.feed(b"after the flood\n")
    lines = read_all(tmp_path, "app").splitlines()
    assert lines[-2:] == [
        b"[forge] 20000 log lines dropped: more than 10000 lines or 8 MiB in 30s (the log rate limit)",
        b"after the flood",
    ]
    assert read_dropped(tmp_path, "app") == 20_000
    pump.close()


def test_long_lines_meet_the_byte_budget_first(tmp_path: Path) -> None:
    """1,000 lines of 16,000 bytes in one window: only whole lines up to 8 MiB reach the disk;
    the rest are counted and marked like lines over the line limit."""
    pump, clock = _pump(tmp_path, cap=64 << 20)
    line = b"y" * 15_999 + b"\n"
    for _ in range(100):
        pump.feed(line * 10)
    kept = read_all(tmp_path, "app")
    assert len(kept) == (RATE_BURST_BYTES // len(line)) * len(line) and kept.endswith(b"\n")
    clock.advance(RATE_WINDOW_SECONDS)
    pump.tick()
    dropped = 1000 - RATE_BURST_BYTES // len(line)
    assert read_all(tmp_path, "app").endswith(
        f"[forge] {dropped} log lines dropped: more than 10000 lines or 8 MiB in 30s (the log rate limit)\n".encode()
    )


def test_the_counter_survives_a_new_writer(tmp_path: Path) -> None:
    """An app restart starts a new writer: the drop counter goes on from the old one's total,
    and the new segments continue the old logical offsets."""
    pump, _ = _pump(tmp_path, cap=64 << 20)
    pump.feed(b"x\n" * (RATE_BURST_LINES + 5))
    pump.close()
    end = sum(size for _b, _p, size in segments(tmp_path, "app"))
    again, _ = _pump(tmp_path, cap=64 << 20)
    again.feed(b"y\n" * (RATE_BURST_LINES + 7))
    again.close()
    assert read_dropped(tmp_path, "app") == 12
    assert segments(tmp_path, "app")[0][0] == 0 and read_all(tmp_path, "app")[end:].startswith(b"y\n")


def test_a_newline_free_flood_is_cut_into_lines(tmp_path: Path) -> None:
    """No newline at all: the writer's buffer stays bounded and the output is lines of 16 KiB."""
    pump, _ = _pump(tmp_path)
    for _ in range(64):
        pump.feed(b"z" * 65536)
    assert len(pump.pending) < 16 * 1024
    lines = read_all(tmp_path, "app").splitlines()
    assert lines and all(len(ln) == 16 * 1024 for ln in lines)


def test_stamped_lines_carry_the_time_they_were_read(tmp_path: Path) -> None:
    """Build logs: each line stamped (``\\x1eTIME\\x1fLINE``) when the writer read it."""
    pump, clock = _pump(tmp_path, stamp=True)
    pump.feed(b"one\ntw")
    clock.advance(2)
    pump.feed(b"o\n")
    lines = read_all(tmp_path, "app").splitlines()
    assert lines[0].startswith(b"\x1e") and lines[0].endswith(b"\x1fone")
    assert lines[1].endswith(b"\x1ftwo") and lines[0].split(b"\x1f")[0] != lines[1].split(b"\x1f")[0]


def _writer(tmp_path: Path, cap: int, **kw: object) -> tuple[subprocess.Popen[bytes], int]:
    r, w = os.pipe()
    proc = spawn(r, tmp_path, "app", cap, **kw)  # type: ignore[arg-type]
    os.close(r)
    return proc, w


def test_the_writer_process_bounds_a_full_speed_flood(tmp_path: Path) -> None:
    """`yes` at full speed for 3 s into the writer: the app never blocks for long (it keeps
    writing), the disk holds at most the cap, and the marker and counter say what was dropped."""
    proc, w = _writer(tmp_path, 1 << 20)
    flood = subprocess.Popen(["timeout", "3", "yes", "a fairly long line of app output " * 3], stdout=w)
    os.close(w)
    peak = 0
    while flood.poll() is None:
        peak = max(peak, _on_disk(tmp_path))
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert flood.returncode == 124, "the app ran until its timeout: it was never stuck or killed"
    assert max(peak, _on_disk(tmp_path)) <= 1 << 20
    assert b"log lines dropped" in read_all(tmp_path, "app").splitlines()[-1]
    assert read_dropped(tmp_path, "app") > 100_000


def test_the_app_outlives_its_starter_without_sigpipe_and_the_writer_ignores_sigterm(tmp_path: Path) -> None:
    """The agent that started app and writer exits (a restart): the app keeps writing, gets no
    SIGPIPE; SIGTERM does not stop the writer (it drains the app's last words and ends at EOF)."""
    script = (
        "import os, sys, subprocess\n"
        "from forge.nodeagent.logwriter import spawn\n"
        "r, w = os.pipe()\n"
        f"spawn(r, {str(tmp_path)!r}, 'app', 1 << 20)\n"
        "os.close(r)\n"
        "app = subprocess.Popen([sys.executable, '-c', 'import time, sys\\n"
        "for i in range(40):\\n print(i, flush=True); time.sleep(0.05)\\n"
        'open(sys.argv[1], "w").write("done")\', sys.argv[1]], stdout=w, stderr=subprocess.DEVNULL, start_new_session=True)\n'
        "print(app.pid)\n"
    )
    agent = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "done")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    writer = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _is_writer(int(p), tmp_path))
    assert _ignores_sigterm(writer), "the writer ignores SIGTERM from its first instruction on"
    os.kill(writer, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while not (tmp_path / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "done").read_text() == "done", f"the app finished (pid {agent.stdout.strip()})"
    while _is_writer(writer, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _is_writer(writer, tmp_path), "the writer ended at EOF"
    assert read_all(tmp_path, "app").split() == [str(i).encode() for i in range(40)]


def _ignores_sigterm(pid: int) -> bool:
    """SIGTERM is in the process's ignored set (/proc/PID/status SigIgn), as it is in the shim's
    very first command: a writer found at all is past that point (or about to exec it)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:") and int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
                return True
        time.sleep(0.01)
    return False


def _is_writer(pid: int, log_dir: Path) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"forge.nodeagent.logpump" in b" ".join(cmd) and str(log_dir).encode() in cmd and state != "Z"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts a small tmpfs)")
def test_a_full_disk_drops_output_instead_of_blocking_the_app(tmp_path: Path) -> None:
    """The log's filesystem is full: the app keeps running and exits normally (its output is
    dropped, not back-pressured); once there is room the loss is marked in the log."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        proc, w = _writer(mnt, 1 << 20)
        app = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys\nfor i in range(2000): print('x' * 100, i)\n"
                "sys.stdout.flush(); import time; time.sleep(0.5); print('after', flush=True)",
            ],
            stdout=w,
        )
        os.close(w)
        time.sleep(0.3)
        filler.unlink()
        assert app.wait(timeout=20) == 0
        proc.wait(timeout=20)
        text = read_all(mnt, "app").decode()
        assert "bytes of log lost: the node's disk refused them" in text and text.endswith("after\n")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups)")
@pytest.mark.parametrize("rounds", range(3))
def test_an_apps_last_words_reach_the_log_when_it_ends(tmp_path: Path, rounds: int) -> None:
    """An app prints 1.8 MB (under the rate limit) and exits with an error: after the agent saw it exit and removed its
    cgroup, the log ends with its last line (the writer, in the same cgroup, drained the pipe
    before it was removed) — and the writer ran inside the app's cgroup."""
    import uuid

    from forge.cgroups import detect_driver
    from forge.clock import SystemClock
    from forge.nodeagent.sandbox import Sandbox, SandboxSpec
    from forge.nodeagent.spec import RunSpec
    from forge.nodeagent.state import InstanceState
    from forge.nodeagent.supervisor import Supervisor, is_log_writer

    driver = detect_driver(parent=f"forge-test-logwriter-{uuid.uuid4().hex[:8]}")
    sup = Supervisor(Sandbox(driver), driver, SystemClock(), SandboxSpec, lambda _app: (None, None))
    release = tmp_path / "release"
    release.mkdir()
    st = InstanceState(
        name="last-1-0", app="last", deployment="last-1", cgroup="inst-last-1-0", release_dir=str(release)
    )
    command = (
        "python3 -c \"import sys\nfor i in range(9000): print('line', i, 'x' * 200)\n"
        "print('the last words', flush=True); sys.exit(3)\""
    )
    try:
        sup.start(
            st,
            RunSpec(command=command),
            {"PATH": "/usr/bin:/bin"},
            (256 << 20, 1.0, 64),
            tmp_path / "logs" / "app.log",
        )
        assert any(is_log_writer(p) for p in driver.procs(st.cgroup)), "the writer is in the app's cgroup"
        assert sup.exit_code(st.pid, wait=30) == 3
        sup.remove_cgroup(st.cgroup)
        assert read_all(tmp_path / "logs", "app").endswith(b"the last words\n")
    finally:
        for g in driver.list_groups():
            driver.kill_all(g)
            driver.remove(g)
        driver.remove_parent()
