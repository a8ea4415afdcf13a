"""Per-Instance log files and the shipper that tails them to the control plane.

Apps write straight into ``DATA/logs/INSTANCE/app.log`` (their stdout/stderr are files, not
pipes, so they outlive the agent); builds into ``build.log``. Each file is one logical,
monotonically increasing byte stream: rotation copies the live file to ``.1`` and truncates
it (the writer keeps its O_APPEND descriptor), and the cursor remembers at which logical
offset the live and the rotated file begin. A line's offset is the logical offset of its first
byte, so re-shipping after an outage is idempotent on the server, and the cursor moves only
after the server acknowledged — a control-plane outage loses nothing that still fits on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from forge import errors
from forge.client import ForgeClient
from forge.clock import Clock
from forge.nodeagent.buildlog import unstamp
from forge.nodeagent.state import AgentState, LogCursor

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("build", "app")
MAX_LINE = 16 * 1024
# Like journald's RateLimitIntervalSec=30s / RateLimitBurst=10000: per Instance and source.
RATE_WINDOW_SECONDS = 30.0
RATE_BURST_LINES = 10_000
FAST_INTERVAL = 0.2  # while an Instance floods, look again soon: the file cap holds on the node


class RateLimit:
    """Lines allowed per (Instance, source) in the current window; what was dropped meanwhile."""

    def __init__(self, burst: int = RATE_BURST_LINES, window: float = RATE_WINDOW_SECONDS) -> None:
        self.burst, self.window = burst, window
        self.start = float("-inf")
        self.used = 0
        self.dropped = 0  # lines dropped since the last marker
        self.first_dropped: int | None = None  # logical offset of the first of them

    def allow(self, now: float, n: int) -> int:
        if now - self.start >= self.window:
            self.start, self.used = now, 0
        take = max(0, min(n, self.burst - self.used))
        self.used += take
        return take

    def exhausted(self, now: float) -> bool:
        """No room left in the current window (a new window has room again)."""
        return now - self.start < self.window and self.used >= self.burst

    def marker(self) -> tuple[int, str] | None:
        """The line that says what was dropped (at the first dropped line's offset), once."""
        if not self.dropped or self.first_dropped is None:
            return None
        text = (
            f"[forge] {self.dropped} log lines dropped: more than {self.burst} lines in "
            f"{self.window:g}s (the log rate limit)"
        )
        out = (self.first_dropped, text)
        self.dropped, self.first_dropped = 0, None
        return out


def log_path(logs_dir: Path, instance: str, source: str) -> Path:
    return Path(logs_dir) / instance / f"{source}.log"


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def rotate_if_needed(path: Path, cursor: LogCursor, cap_bytes: int, persist: Callable[[], None]) -> bool:
    """Copy-truncate ``path`` to ``.1`` once it passes ``cap_bytes``; cursor first, then truncate."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= cap_bytes:
        return False
    if cursor.shipped >= cursor.cur_base + size:
        # Everything in the file is shipped (or counted as dropped): nothing to keep, no copy.
        cursor.prev_base = cursor.cur_base = cursor.cur_base + size
        persist()
        with open(path, "r+b") as f:
            f.truncate(0)  # bytes appended since the stat are lost; the window is microseconds
        return True
    tmp = path.with_name(path.name + ".1.tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        copied = dst.tell()
    os.replace(tmp, rotated(path))
    cursor.prev_base, cursor.cur_base = cursor.cur_base, cursor.cur_base + copied
    persist()
    with open(path, "r+b") as f:
        # Bytes the app appended between the copy and now are lost; the window is microseconds.
        f.truncate(0)
    return True


def read_pending(
    path: Path, cursor: LogCursor, max_bytes: int = 256 * 1024
) -> tuple[list[tuple[int, str]], int]:
    """Complete lines after ``cursor.shipped`` as ``[(logical offset, text)]`` and the new position."""
    pos = max(cursor.shipped, cursor.prev_base)
    if pos < cursor.cur_base:
        old = rotated(path)
        data = _read(old, pos - cursor.prev_base, min(max_bytes, cursor.cur_base - pos))
        if data is None:
            pos = cursor.cur_base
        else:
            end_of_file = pos + len(data) >= cursor.cur_base or not data
            lines, used = _split(data, pos, final=end_of_file)
            return lines, (cursor.cur_base if end_of_file and not data else pos + used)
    data = _read(path, pos - cursor.cur_base, max_bytes)
    if not data:
        return [], pos
    lines, used = _split(data, pos, final=False)
    return lines, pos + used


def skip_lines(path: Path, cursor: LogCursor, max_bytes: int = 8 << 20) -> tuple[int, int, int]:
    """Skip the complete lines after ``cursor.shipped`` without decoding them:
    (lines skipped, the new position, the logical offset of the first one)."""
    pos = max(cursor.shipped, cursor.prev_base)
    if pos < cursor.cur_base:
        old = _read(rotated(path), pos - cursor.prev_base, min(max_bytes, cursor.cur_base - pos))
        if not old:
            return 0, cursor.cur_base, pos
        end = old.rfind(b"\n")
        if end < 0:
            # no line end before the rotation point: the rest of the rotated file is one line
            return 1, cursor.cur_base, pos
        return old.count(b"\n", 0, end + 1), pos + end + 1, pos
    data = _read(path, pos - cursor.cur_base, max_bytes)
    if not data:
        return 0, pos, pos
    end = data.rfind(b"\n")
    if end < 0:
        return 0, pos, pos  # an unfinished line: wait for its end
    return data.count(b"\n", 0, end + 1), pos + end + 1, pos


def _read(path: Path, offset: int, size: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, offset))
            return f.read(max(0, size))
    except FileNotFoundError:
        return None


def _split(data: bytes, base: int, final: bool) -> tuple[list[tuple[int, str]], int]:
    out: list[tuple[int, str]] = []
    start = 0
    while start < len(data):
        nl = data.find(b"\n", start)
        if nl < 0:
            if not final and len(data) - start < MAX_LINE:
                break  # an unfinished line: wait for its end
            nl = len(data) - 1 if final else start + MAX_LINE - 1
        chunk = data[start : nl + 1]
        out.append((base + start, chunk.rstrip(b"\r\n").decode("utf-8", "replace")))
        start = nl + 1
    return out, start


class Shipper:
    """Tails every Instance's logs and posts them in batches; woken by ``wake()`` or a bounded wait."""

    def __init__(
        self,
        client: ForgeClient,
        state: AgentState,
        logs_dir: Path,
        clock: Clock,
        stop: threading.Event,
        interval: float = 1.0,
        cap_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.client, self.state, self.logs_dir, self.clock = client, state, Path(logs_dir), clock
        self.stop, self.interval, self.cap_bytes = stop, interval, cap_bytes
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.limits: dict[tuple[str, str], RateLimit] = {}
        self.dropped_total: dict[
            str, int
        ] = {}  # instance → lines dropped (forge_agent_log_lines_dropped_total)
        self._flooding = False
        self.thread = threading.Thread(target=self._run, name="forge-logship", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self.stop.is_set():
            self._wake.wait(FAST_INTERVAL if self._flooding else self.interval)
            self._wake.clear()
            self._flooding = False
            for name in self.state.names():
                if self.stop.is_set():
                    return
                try:
                    self.ship_instance(name)
                except errors.Unavailable:
                    break  # control plane down: keep offsets, try again on the next round
                except errors.ForgeError as exc:
                    log.warning("log shipping for %s failed: %s", name, exc)

    def ship_instance(self, name: str) -> bool:
        """Ship everything pending for one Instance; True when nothing is left."""
        with self._lock:
            inst = self.state.get(name)
            if inst is None:
                return True
            drained = True
            for source in SOURCES:
                path = log_path(self.logs_dir, name, source)
                cursor = inst.cursor(source)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    size = -1
                if size >= 0 and cursor.shipped == cursor.cur_base + size:
                    continue  # nothing new: the common idle case costs one stat
                rotate_if_needed(path, cursor, self.cap_bytes, self.state.save)
                limit = self.limits.setdefault((name, source), RateLimit())
                for _ in range(64):  # bounded per round so one chatty app cannot starve the rest
                    if limit.exhausted(self.clock.monotonic()):
                        # Over the limit: count whole lines in big raw chunks (C speed) instead of
                        # splitting them into Python strings only to drop them.
                        skipped, new_pos, first = skip_lines(path, cursor)
                        if skipped:
                            if limit.first_dropped is None:
                                limit.first_dropped = first
                            limit.dropped += skipped
                            self.dropped_total[name] = self.dropped_total.get(name, 0) + skipped
                            self._flooding = True
                        if new_pos == cursor.shipped:
                            break
                        cursor.shipped = new_pos
                        self.state.save()
                        rotate_if_needed(path, cursor, self.cap_bytes, self.state.save)
                        continue
                    lines, new_pos = read_pending(path, cursor)
                    take = limit.allow(self.clock.monotonic(), len(lines))
                    kept = lines[:take]
                    if take < len(lines):
                        if limit.first_dropped is None:
                            limit.first_dropped = lines[take][0]
                        limit.dropped += len(lines) - take
                        self.dropped_total[name] = self.dropped_total.get(name, 0) + len(lines) - take
                        self._flooding = True
                    elif limit.used < limit.burst:
                        mark = limit.marker()
                        if mark is not None:  # a new window: first say what the last one dropped
                            kept = [mark, *kept]
                    lines = kept
                    if lines:
                        self._post(name, source, lines)
                    if new_pos == cursor.shipped:
                        break
                    cursor.shipped = new_pos
                    self.state.save()
                    rotate_if_needed(path, cursor, self.cap_bytes, self.state.save)  # the cap holds mid-flood
                else:
                    drained = False
                    self._flooding = True
            return drained

    def _post(self, name: str, source: str, lines: list[tuple[int, str]]) -> None:
        now = self.clock.now_iso()
        entries = []
        for off, raw in lines:
            when, text = unstamp(raw)  # build lines carry the time they were produced
            entries.append({"offset": off, "time": when or now, "line": text})
        try:
            self.client.request(
                "POST", f"/api/v1/instances/{name}/logs", json={"source": source, "entries": entries}
            )
        except errors.NotFound:
            log.info("instance %s is gone; dropping %d %s log lines", name, len(entries), source)
