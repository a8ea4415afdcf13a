"""The log writer process itself (see ``forge.nodeagent.logwriter`` for the design).

One of these runs per Instance log (and per build), so it imports nothing beyond ``os``,
``select``, ``signal``, ``sys`` and ``time``: about 5 MB of memory each instead of 9 with the
usual imports (``forge.clock``'s datetime and threading, pathlib, typing). For the same reason
its clock is the small ``_ProcessClock``; tests hand ``Pump`` a ``FakeClock``.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

DEFAULT_CAP = 64 * 2**20  # bytes kept on the node per log (an Instance's app log, a build log)
MIN_CAP = 1 * 2**20
SEGMENTS = 4  # a cap is kept in this many segments (the newest one is written)
DIGITS = 15
MAX_LINE = 16 * 1024  # longer lines are split (a newline-free flood is still lines)
READ_CHUNK = 64 * 1024
# Like journald's RateLimitIntervalSec=30s / RateLimitBurst=10000: per Instance and source.
RATE_WINDOW_SECONDS = 30.0
RATE_BURST_LINES = 10_000
# … and at most this many bytes in a window, whichever comes first: without it 10,000 lines of
# 16 KiB would be 160 MB a window, shipped into the control plane's logs database.
RATE_BURST_BYTES = 8 * 2**20
STATS_EVERY_SECONDS = 1.0
STAMP = b"\x1e"
SEP = b"\x1f"


def segment_name(source: str, base: int) -> str:
    return f"{source}.log.{base:0{DIGITS}d}"


def scan(log_dir: str, source: str) -> list[tuple[int, str, int]]:
    """The segments of one log as (base, path, size), oldest first."""
    prefix = f"{source}.log."
    out = []
    try:
        with os.scandir(log_dir) as it:
            for e in it:
                tail = e.name[len(prefix) :]
                if e.name.startswith(prefix) and len(tail) == DIGITS and tail.isdigit():
                    try:
                        out.append((int(tail), e.path, e.stat(follow_symlinks=False).st_size))
                    except FileNotFoundError:
                        continue  # deleted by the writer between the listing and the stat
    except FileNotFoundError:
        return []
    return sorted(out)


def stats_file(log_dir: str, source: str) -> str:
    return os.path.join(log_dir, f"{source}.dropped")


def read_dropped(log_dir: str, source: str) -> int:
    try:
        with open(stats_file(log_dir, source)) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


class _ProcessClock:
    """Wall and monotonic time for the writer process (``forge.clock`` costs it 2 MB of imports)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now_iso(self) -> str:
        now = time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class SegmentLog:
    """Appends to the newest segment; starts a new one and deletes the oldest to stay under ``cap``."""

    def __init__(self, log_dir: str, source: str, cap: int = DEFAULT_CAP, first: int = 0) -> None:
        """``first``: the logical offset a log with no segments yet begins at (where the shipper's
        cursor stands: offsets the control plane has seen are never reused)."""
        self.dir, self.source = str(log_dir), source
        self.cap = max(int(cap), MIN_CAP)
        self.segment = self.cap // SEGMENTS
        os.makedirs(self.dir, exist_ok=True)
        found = scan(self.dir, source)
        self.closed = [(b, s) for b, _p, s in found[:-1]]
        self.base, self.size = (found[-1][0], found[-1][2]) if found else (max(0, int(first)), 0)
        self.fd = -1
        self.lost = 0  # bytes the disk refused (ENOSPC, EIO …): dropped, never retried

    def _open(self) -> bool:
        if self.fd < 0:
            try:
                self.fd = os.open(
                    os.path.join(self.dir, segment_name(self.source, self.base)),
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                    0o600,
                )
            except OSError:
                return False
        return True

    def write(self, data: bytes) -> bool:
        """Append whole lines; False when (some of) them could not be written (counted in ``lost``)."""
        ok = True
        for piece in _pieces(data, self.segment):
            if self.size and self.size + len(piece) > self.segment:
                self._rotate()
            if not self._open():
                self.lost += len(piece)
                ok = False
                continue
            view = memoryview(piece)
            try:
                while view:
                    n = os.write(self.fd, view)
                    self.size += n
                    view = view[n:]
            except OSError:
                self.lost += len(view)
                # A partly written line would shift nothing (offsets are file sizes), but the next
                # line must not run on from it: end it.
                if len(view) != len(piece):
                    try:
                        self.size += os.write(self.fd, b"\n")
                    except OSError:
                        pass
                ok = False
        return ok

    def _rotate(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.closed.append((self.base, self.size))
        self.base, self.size = self.base + self.size, 0
        while self.closed and sum(s for _b, s in self.closed) + self.segment > self.cap:
            old, _s = self.closed.pop(0)
            try:
                os.unlink(os.path.join(self.dir, segment_name(self.source, old)))
            except FileNotFoundError:
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pieces(data: bytes, limit: int) -> list[bytes]:
    """``data`` in pieces of at most ``limit`` bytes, cut after a newline where one is near."""
    if len(data) <= limit:
        return [data]
    out, start = [], 0
    while start < len(data):
        end = min(start + limit, len(data))
        if end < len(data):
            nl = data.rfind(b"\n", start, end)
            end = nl + 1 if nl >= start else end
        out.append(data[start:end])
        start = end
    return out


class Pump:
    """What the writer does with each chunk it reads: lines, rate limit, markers, stamps."""

    def __init__(
        self,
        log: SegmentLog,
        clock: _ProcessClock,
        stamp: bool = False,
        burst: int = RATE_BURST_LINES,
        window: float = RATE_WINDOW_SECONDS,
        burst_bytes: int = RATE_BURST_BYTES,
    ) -> None:
        self.log, self.clock, self.stamp = log, clock, stamp
        self.burst, self.window, self.burst_bytes = burst, window, burst_bytes
        self.start = float("-inf")
        self.used = 0
        self.used_bytes = 0
        self.dropped = 0  # lines dropped in the current window (the next marker says how many)
        self.pending = b""
        self.total_dropped = read_dropped(log.dir, log.source)  # a counter across the writers of one log
        self._stats_written = self.total_dropped
        self._stats_time = float("-inf")
        self._lost_marked = 0

    def feed(self, chunk: bytes) -> None:
        data = self.pending + chunk
        cut = data.rfind(b"\n") + 1
        lines, self.pending = data[:cut], data[cut:]
        if len(self.pending) >= MAX_LINE:  # no newline in sight: cut the line, bound the buffer
            long, self.pending = self.pending, b""
            extra = b"".join(long[i : i + MAX_LINE] + b"\n" for i in range(0, len(long), MAX_LINE))
            lines += extra
        if lines:
            self._lines(lines)
        self.tick()

    def _lines(self, lines: bytes) -> None:
        now = self.clock.monotonic()
        self._window(now)
        n = lines.count(b"\n")
        take = max(0, min(n, self.burst - self.used))
        if take < n:
            end = -1
            for _ in range(take):
                end = lines.index(b"\n", end + 1)
            lines = lines[: end + 1]
        room = max(0, self.burst_bytes - self.used_bytes)
        if len(lines) > room:
            lines = lines[: lines.rfind(b"\n", 0, room) + 1]
            take = lines.count(b"\n")
        if take < n:
            self.dropped += n - take
            self.total_dropped += n - take
        self.used += take
        self.used_bytes += len(lines)
        if lines:
            self._write(lines)

    def _window(self, now: float) -> None:
        if now - self.start < self.window:
            return
        self.start, self.used, self.used_bytes = now, 0, 0
        if self.dropped:
            text = (
                f"[forge] {self.dropped} log lines dropped: more than {self.burst} lines or "
                f"{self.burst_bytes // 2**20} MiB in {self.window:g}s (the log rate limit)\n"
            )
            self.dropped = 0
            self._write(text.encode())

    def _write(self, lines: bytes) -> None:
        if self.log.lost > self._lost_marked:
            note = f"[forge] {self.log.lost - self._lost_marked} bytes of log lost: the node's disk refused them\n"
            lines = note.encode() + lines
        lost_before = self.log.lost
        if self.stamp:
            when = STAMP + self.clock.now_iso().encode() + SEP
            lines = b"".join(when + ln + b"\n" for ln in lines.split(b"\n")[:-1])
        if self.log.write(lines):
            self._lost_marked = lost_before

    def wake_in(self) -> float | None:
        """Seconds until a marker is due (the window with drops ends), None when none is."""
        if not self.dropped:
            return None
        return max(0.0, self.start + self.window - self.clock.monotonic())

    def tick(self) -> None:
        """A due marker, and the drop counter on disk (at most once a second)."""
        now = self.clock.monotonic()
        if self.dropped and now - self.start >= self.window:
            self._window(now)
        if self.total_dropped != self._stats_written and now - self._stats_time >= STATS_EVERY_SECONDS:
            self._save_stats(now)

    def _save_stats(self, now: float) -> None:
        path = stats_file(self.log.dir, self.log.source)
        tmp = path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, f"{self.total_dropped}\n".encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            return  # a full disk: the counter is saved at the next chance
        self._stats_written, self._stats_time = self.total_dropped, now

    def close(self) -> None:
        if self.pending:
            self._lines(self.pending + b"\n")
            self.pending = b""
        if self.dropped:
            self.start = float("-inf")
            self._window(self.clock.monotonic())
        self._save_stats(self.clock.monotonic())
        self.log.close()


def run(fd: int, pump: Pump) -> None:
    """Read ``fd`` until EOF (every writer of the pipe is gone)."""
    while True:
        ready, _, _ = select.select([fd], [], [], pump.wake_in())
        if ready:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except InterruptedError:
                continue
            if not chunk:
                break
            pump.feed(chunk)
        else:
            pump.tick()
    pump.close()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    stamp = "--stamp" in args
    args = [a for a in args if a != "--stamp"]
    log_dir, source, cap, first = args[0], args[1], int(args[2]), int(args[3])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # ends at EOF, after the app's last words
    if os.geteuid() == 0:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("-1000\n")  # the OOM killer takes the app, not its log
        except OSError:
            pass
    pump = Pump(SegmentLog(log_dir, source, cap, first), _ProcessClock(), stamp=stamp)
    run(0, pump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
