"""The shipper: tails every Instance's log segments and posts them to the control plane.

Each log is written by its own writer process (``forge.nodeagent.logwriter``), which already
applied the rate limit and keeps at most the node's cap on disk, in segments named by the
logical offset of their first byte. A line's offset is the logical offset of its first byte,
so re-shipping after an outage is idempotent on the server, and the cursor moves only after
the server acknowledged — a control-plane outage loses nothing that still fits under the cap.
What the writer deleted before it was shipped (a long outage) is skipped, counted and marked.
"""

from __future__ import annotations

import bisect
import logging
import threading
from pathlib import Path

from forge import errors
from forge.client import ForgeClient
from forge.clock import Clock
from forge.nodeagent.buildlog import unstamp
from forge.nodeagent.logwriter import DEFAULT_CAP, MAX_LINE, read_dropped, segments
from forge.nodeagent.state import AgentState, LogCursor

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("build", "app")
FAST_INTERVAL = 0.2  # while an Instance has more pending than one round ships, look again soon
BATCHES_PER_ROUND = 64  # bounded per round so one chatty app cannot starve the rest

__all__ = ["MAX_LINE", "SOURCES", "Shipper", "log_path", "read_pending"]


def log_path(logs_dir: Path, instance: str, source: str) -> Path:
    """The name of one log: ``DIR/INSTANCE/SOURCE.log`` (its segments are ``SOURCE.log.BASE``)."""
    return Path(logs_dir) / instance / f"{source}.log"


def read_pending(
    path: Path, cursor: LogCursor, max_bytes: int = 256 * 1024
) -> tuple[list[tuple[int, str]], int, int]:
    """Complete lines after ``cursor.shipped`` as ``[(logical offset, text)]``, the new position,
    and how many bytes before it were deleted unshipped (the cap) and are skipped."""
    source = path.name.removesuffix(".log")
    segs = segments(path.parent, source)
    pos = cursor.shipped
    if not segs:
        return [], pos, 0
    lost = 0
    if pos < segs[0][0]:
        lost, pos = segs[0][0] - pos, segs[0][0]
    i = max(0, bisect.bisect_right([b for b, _p, _s in segs], pos) - 1)
    base, seg, size = segs[i]
    last = i == len(segs) - 1
    if pos >= base + size:
        # At the end of a closed segment: the next one begins here (or later, if bytes were lost).
        return [], (segs[i + 1][0] if not last else pos), lost
    data = _read(seg, pos - base, max_bytes)
    if not data:
        return [], pos, lost  # deleted between the listing and the read: the next round skips it
    final = not last and pos + len(data) >= base + size  # a closed segment's end is a line's end
    lines, used = _split(data, pos, final=final)
    return lines, pos + used, lost


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
        cap_bytes: int = DEFAULT_CAP,
    ) -> None:
        self.client, self.state, self.logs_dir, self.clock = client, state, Path(logs_dir), clock
        self.stop, self.interval, self.cap_bytes = stop, interval, cap_bytes
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.lost_bytes: dict[str, int] = {}  # instance → bytes deleted on the node before they shipped
        self._busy = False
        self.thread = threading.Thread(target=self._run, name="forge-logship", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    @property
    def dropped_total(self) -> dict[str, int]:
        """Instance → log lines its writers dropped (``forge_agent_log_lines_dropped_total``)."""
        out = {}
        for name in self.state.names():
            n = sum(read_dropped(self.logs_dir / name, source) for source in SOURCES)
            if n:
                out[name] = n
        return out

    def _run(self) -> None:
        while not self.stop.is_set():
            self._wake.wait(FAST_INTERVAL if self._busy else self.interval)
            self._wake.clear()
            self._busy = False
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
                for _ in range(BATCHES_PER_ROUND):
                    lines, new_pos, lost = read_pending(path, cursor)
                    if lost:
                        self.lost_bytes[name] = self.lost_bytes.get(name, 0) + lost
                        text = (
                            f"[forge] {lost} bytes of log were deleted on the node before they were "
                            f"shipped (it keeps at most {self.cap_bytes // 2**20} MiB per log)"
                        )
                        lines = [(cursor.shipped, text), *lines]
                    if lines:
                        self._post(name, source, lines)
                    if new_pos == cursor.shipped:
                        break
                    cursor.shipped = new_pos
                    self.state.save()
                else:
                    drained = False
                    self._busy = True
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
