"""Logs bounded where they are made: a small writer process per Instance log (and per build).

An app's stdout and stderr are the write end of a pipe; the read end belongs to one
``python -m forge.nodeagent.logwriter`` process, started by the agent just before the app and
joined to the app's cgroup. The writer applies the rate limit (10,000 lines / 30 s per log, like
journald, and at most 8 MiB a window) *before* anything reaches the disk, writes what passes into size-capped segments,
and leaves a marker line for what it dropped (plus a counter file the agent's metrics read).

Why a process of its own and not the agent: an app starts detached so that an agent restart
re-adopts it and it keeps serving (DESIGN §4). A pipe read by the agent would break on every
agent restart (the app gets SIGPIPE, or blocks on a full pipe); the writer is not the agent, so
it lives on through agent restarts and upgrades with nothing to re-adopt: it exits by itself
when the last process holding the pipe's write end is gone (EOF). It runs as root (the agent's
uid), outside the app's sandbox, so the app can neither signal nor trace it; it ignores SIGTERM
(it drains the app's last words and ends at EOF), and asks the OOM killer to pick the app
rather than itself. Being in the app's cgroup, the CPU and memory a flood costs are the app's,
never its neighbours'. The app never blocks for long: the writer reads as fast as the pipe
fills and drops, rather than writes, what is over the limit; a disk that refuses a write loses
that write (counted, marked), it never stalls the app.

On the disk a log is a chain of segments ``SOURCE.log.BASE`` (BASE: the logical offset of the
segment's first byte, 15 digits): the writer appends to the newest one; past a quarter of the
cap it starts the next and deletes the oldest while the segments would exceed the cap. Nothing
is ever copied or truncated in place, and every byte keeps its logical offset forever, so the
shipper (``forge.nodeagent.logship``) tails them without coordination and re-ships idempotently.
Builds use the same writer (with ``--stamp``: each line carries the time it was produced).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import forge
from forge.nodeagent.logpump import (
    DEFAULT_CAP,
    MAX_LINE,
    MIN_CAP,
    RATE_BURST_BYTES,
    RATE_BURST_LINES,
    RATE_WINDOW_SECONDS,
    SEP,
    STAMP,
    Pump,
    SegmentLog,
    scan,
    segment_name,
)
from forge.nodeagent.logpump import read_dropped as _read_dropped

__all__ = [
    "DEFAULT_CAP",
    "MAX_LINE",
    "MIN_CAP",
    "RATE_BURST_BYTES",
    "RATE_BURST_LINES",
    "RATE_WINDOW_SECONDS",
    "SEP",
    "STAMP",
    "Pump",
    "SegmentLog",
    "append",
    "log_end",
    "read_all",
    "read_dropped",
    "read_tail",
    "segments",
    "spawn",
]

# Ignores SIGTERM/SIGINT/SIGHUP as its first command (inherited across exec, so the writer never
# has a start-up window in which a stop signal for the agent's group kills it before its own
# handlers are set) and joins the cgroup before exec, like the sandbox's shim
# (forge.nodeagent.sandbox.JOIN).
JOIN = (
    "trap '' TERM INT HUP; "
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; n=$((n-1)); shift; done; '
    'shift; exec "$@"'
)
# The writer runs without site (-S): no editable-install finder, pathlib or typing in its memory.
_MAIN = "import sys; sys.path.insert(0, sys.argv[1]); from forge.nodeagent.logpump import main; sys.exit(main(sys.argv[2:]))"


def segment_path(log_dir: Path, source: str, base: int) -> Path:
    return Path(log_dir) / segment_name(source, base)


def segments(log_dir: Path, source: str) -> list[tuple[int, Path, int]]:
    """The segments of one log as (base, path, size), oldest first."""
    return [(b, Path(p), n) for b, p, n in scan(str(log_dir), source)]


def log_end(log_dir: Path, source: str) -> int:
    """The logical offset one past the last byte written so far."""
    segs = scan(str(log_dir), source)
    return segs[-1][0] + segs[-1][2] if segs else 0


def read_tail(log_dir: Path, source: str, max_bytes: int = 64 * 1024) -> bytes:
    """The last ``max_bytes`` (at most) of a log, across segments."""
    out = b""
    for _base, path, _size in reversed(segments(log_dir, source)):
        try:
            out = path.read_bytes()[-(max_bytes - len(out)) :] + out
        except FileNotFoundError:
            break
        if len(out) >= max_bytes:
            break
    return out


def read_all(log_dir: Path, source: str) -> bytes:
    """Everything still on the node of one log (tests, diagnostics)."""
    parts = []
    for _base, path, _size in segments(log_dir, source):
        with contextlib.suppress(FileNotFoundError):
            parts.append(path.read_bytes())
    return b"".join(parts)


def read_dropped(log_dir: Path, source: str) -> int:
    """Lines the writers of this log dropped over the rate limit (a counter kept beside it)."""
    return _read_dropped(str(log_dir), source)


def append(log_dir: Path, source: str, data: bytes, cap: int = DEFAULT_CAP, first: int = 0) -> None:
    """Lines the agent itself writes into a log while no writer process runs for it."""
    seg = SegmentLog(str(log_dir), source, cap, first)
    try:
        seg.write(data)
    finally:
        seg.close()


def spawn(
    read_fd: int,
    log_dir: Path,
    source: str,
    cap: int,
    stamp: bool = False,
    cgroup_files: Sequence[str] = (),
    first: int = 0,
) -> subprocess.Popen[bytes]:
    """Start a writer reading ``read_fd`` (the caller closes its copy), in the cgroup whose
    ``cgroup.procs`` files are given (joined before exec), in a session of its own."""
    root = str(Path(forge.__file__).resolve().parents[1])
    argv = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _MAIN,
        root,
        str(log_dir),
        source,
        str(int(cap)),
        str(int(first)),
    ]
    if stamp:
        argv.append("--stamp")
    argv = ["/bin/sh", "-c", JOIN, "forge-logwriter", str(len(cgroup_files)), *cgroup_files, "--", *argv]
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        argv,
        stdin=read_fd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        start_new_session=True,
        close_fds=True,
    )
    # The shim joins too, but only once it runs: moving it from here as well means the writer is
    # in the app's cgroup when this returns, before the app starts (a loaded node may not have
    # scheduled the shim yet). A write that fails (the shim exited) is the shim's to report.
    for procs in cgroup_files:
        try:
            with open(procs, "w") as f:
                f.write(str(proc.pid))
        except OSError:
            pass
    return proc
