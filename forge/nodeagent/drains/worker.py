"""One drain on one node: a thread that sends its App's new log lines, at least once.

It sleeps until it is woken — new lines (``notify``), a new Instance, a change of drains — or
until its own deadline: the end of a back-off after a failure, or the next delivery report.
Each round reads, per Instance of the App on this node and per source, what follows the
drain's cursor (``buffer``), frames it (``syslog``) and sends it in one batch (``senders``);
only once the receiver acknowledged does it move and save the cursors. A failure leaves them
where they were and retries after an exponential back-off with jitter (0.5 s doubling to 10 s).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from forge.clock import Clock, parse_iso
from forge.errors import ForgeError
from forge.nodeagent.buildlog import unstamp
from forge.nodeagent.drains.buffer import DEFAULT_BUFFER_BYTES, DrainState, log_start, read_chunk
from forge.nodeagent.drains.senders import DeliveryError, Sender
from forge.nodeagent.drains.syslog import frame, message
from forge.nodeagent.logwriter import log_end

log = logging.getLogger(__name__)

SOURCES: Final[tuple[str, ...]] = ("build", "app")
BATCH_BYTES: Final[int] = 256 * 1024  # read per round (and so re-sent at most after a crash)
BACKOFF_FIRST: Final[float] = 0.5
BACKOFF_MAX: Final[float] = 10.0  # a receiver back up is used again within ~12 s
REPORT_SECONDS: Final[float] = 5.0


def backoff(failures: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``failures`` (≥ 1): doubling, capped, ±20 % jitter."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))
    return base * (0.8 + 0.4 * rand())


@dataclass(frozen=True)
class Source:
    instance: str
    source: str  # build | app
    msgid: str  # build, or the process type (web, worker …)
    started: float | None = None  # when the Instance's process started (None: not yet)


class DrainWorker:
    def __init__(
        self,
        name: str,
        app: str,
        sender: Sender,
        node: str,
        logs_dir: Path,
        state_path: Path,
        instances: Callable[[], list[tuple[str, str, float | None]]],
        clock: Clock,
        stop: threading.Event,
        report: Callable[[str, dict[str, Any]], None] | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        idle_wait: float | None = None,
        created: float | None = None,
        start_at: Callable[[str, float], dict[str, int] | None] | None = None,
    ) -> None:
        """``instances()``: (Instance, process type, start time or None) of the App's Instances
        on this node; ``created``: when the drain was added (a drain new on this node ships an
        Instance started before that where its logs ended at ``created`` as ``start_at`` tells —
        else at their current ends — and any other Instance from its first line).
        ``idle_wait``: None sleeps until woken (there is a notifier); a number is a fallback
        wait for hosts without inotify."""
        self.name, self.app, self.sender, self.node = name, app, sender, node
        self.logs_dir, self.state_path, self.instances = Path(logs_dir), Path(state_path), instances
        self.clock, self.stop, self.report_fn = clock, stop, report
        self.buffer_bytes, self.idle_wait, self.created = buffer_bytes, idle_wait, created
        self.start_at = start_at
        loaded = DrainState.load(self.state_path)
        self.fresh = loaded is None  # new on this node: Instances older than it start at their ends
        self.state = loaded or DrainState()
        self.gone: set[str] = set()  # abandoned Instances: not tracked again while still listed
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.last_error_time: str | None = None
        self.last_delivery_time: str | None = None
        self._reported: dict[str, Any] | None = None
        self._report_at = 0.0
        self._event = threading.Event()
        self._closed = threading.Event()
        self._state_lock = threading.Lock()  # the cursors: this thread, and abandon() from the reconciler
        # Which Instances' logs grew since the last round (a wake-up names them): a round reads
        # only those, so one chatty Instance does not cost a look at every other one.
        self._dirty_lock = threading.Lock()
        self._dirty: set[str] = set()
        self._all_dirty = True
        self.thread = threading.Thread(target=self._run, name=f"forge-drain-{name}", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def wake(self, instance: str | None = None) -> None:
        """Look again: at ``instance``'s logs, or (None) at every Instance's."""
        with self._dirty_lock:
            if instance is None:
                self._all_dirty = True
            else:
                self._dirty.add(instance)
        self._event.set()

    def _take_dirty(self) -> set[str] | None:
        with self._dirty_lock:
            taken = None if self._all_dirty else set(self._dirty)
            self._all_dirty, self._dirty = False, set()
            return taken

    def _put_back(self, taken: set[str] | None) -> None:
        if taken is None:
            self.wake()
            return
        with self._dirty_lock:
            self._dirty |= taken

    def close(self) -> None:
        self._closed.set()
        self._event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=15)
        self.sender.close()

    def _run(self) -> None:
        self._event.set()  # a first round at once: what accumulated while the agent was down
        while not (self.stop.is_set() or self._closed.is_set()):
            self._event.wait(self._wait())
            self._event.clear()
            if self.stop.is_set() or self._closed.is_set():
                break
            if self.idle_wait is not None:
                self.wake()  # no notifier names what grew: look at everything (and clear the flag)
                self._event.clear()
            more = False
            if self.clock.monotonic() >= self.retry_at:
                more = self.step()
            self._maybe_report()
            if more:
                self._event.set()
        self._maybe_report(force=True)

    def _wait(self) -> float | None:
        now = self.clock.monotonic()
        waits = []
        if self.failures:
            waits.append(self.retry_at - now)
        if self.report_fn is not None and self._snapshot() != self._reported:
            waits.append(self._report_at - now)
        if self.idle_wait is not None:
            waits.append(self.idle_wait)
        return max(0.0, min(waits)) if waits else None

    # -- one round -----------------------------------------------------------------------
    def step(self) -> bool:
        """Send one batch; True when more is pending. Failures set the back-off (and return False)."""
        only = self._take_dirty()
        try:
            more = self.round(only)
        except DeliveryError as exc:
            self._put_back(only)
            self._failed(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 — the worker's per-round boundary: never die, back off
            self._put_back(only)
            log.exception("log drain %s: unexpected error", self.name)
            self.sender.close()
            self._failed(f"internal error: {exc.__class__.__name__}")
            return False
        if more:
            self._put_back(only)
        if self.failures:
            log.info("log drain %s delivers again", self.name)
        self.failures, self.retry_at = 0, 0.0
        self.last_error = ""
        return more

    def _failed(self, message: str) -> None:
        self.failures += 1
        delay = backoff(self.failures)
        self.retry_at = self.clock.monotonic() + delay
        if message != self.last_error:
            log.warning("log drain %s: %s (retrying in %.1fs)", self.name, message, delay)
        self.last_error, self.last_error_time = message, self.clock.now_iso()

    def sources(self) -> list[Source]:
        out = []
        for inst, process, started in self.instances():
            out.append(Source(inst, "build", "build", started))
            out.append(Source(inst, "app", process or "web", started))
        return out

    def round(self, only: set[str] | None = None) -> bool:
        """One batch from the logs of ``only`` (None: every Instance); True when more is pending."""
        srcs = self.sources()
        self._track(srcs)
        if only is not None:
            srcs = [s for s in srcs if s.instance in only]
        frames: list[bytes] = []
        advance: list[tuple[Source, int]] = []
        dropped = dropped_bytes = 0
        budget = BATCH_BYTES
        more = False
        now = self.clock.now()
        for src in srcs:
            log_dir = self.logs_dir / src.instance
            pos = self.state.cursors.get(src.instance, {}).get(src.source)
            if pos is None:
                continue  # abandoned meanwhile
            if budget <= 0:
                more = more or log_end(log_dir, src.source) > pos
                continue
            chunk = read_chunk(log_dir, src.source, pos, budget, self.buffer_bytes)
            if chunk.end == pos and not chunk.lines:
                continue
            notes = []
            if chunk.skipped_lines:
                notes.append(
                    f"[forge] {chunk.skipped_lines} log lines dropped: this drain fell more than "
                    f"{self.buffer_bytes // 2**20} MiB behind (its buffer on the node)"
                )
            if chunk.lost_bytes:
                notes.append(
                    f"[forge] {chunk.lost_bytes} bytes of log were deleted on the node before this drain received them"
                )
            for text in notes:
                frames.append(frame(message(now, self.node, self.app, src.instance, src.msgid, text)))
            for _off, raw in chunk.lines:
                when, text = unstamp(raw)
                ts = parse_iso(when) if when else now
                frames.append(frame(message(ts, self.node, self.app, src.instance, src.msgid, text)))
            dropped += chunk.skipped_lines
            dropped_bytes += chunk.lost_bytes
            budget -= max(1, chunk.end - pos)
            advance.append((src, chunk.end))
            more = more or chunk.end < log_end(log_dir, src.source)
        if not advance:
            return more
        if frames:
            self.sender.send(frames)  # raises DeliveryError: nothing moves
            self.last_delivery_time = self.clock.now_iso()
        with self._state_lock:
            for src, end in advance:
                if src.instance in self.state.cursors:
                    self.state.cursors[src.instance][src.source] = end
            self.state.delivered += len(frames)
            self.state.dropped += dropped
            self.state.dropped_bytes += dropped_bytes
            self.state.save(self.state_path)
        return more

    def _track(self, srcs: list[Source]) -> None:
        """Cursors for Instances new to the drain; forget those no longer on the node."""
        with self._state_lock:
            self._track_locked(srcs)

    def _track_locked(self, srcs: list[Source]) -> None:
        present = {s.instance for s in srcs}
        changed = False
        self.gone &= present
        for src in srcs:
            if src.instance in self.gone:
                continue
            cur = self.state.cursors.setdefault(src.instance, {})
            if src.source not in cur:
                log_dir = self.logs_dir / src.instance
                # A drain added now ships what comes from now on; an Instance that appears later
                # is shipped from its first line.
                older = src.started is not None and (self.created is None or src.started < self.created)
                if self.fresh and older:
                    marks = None
                    if self.start_at is not None and self.created is not None:
                        marks = self.start_at(src.instance, self.created)
                    cur[src.source] = marks[src.source] if marks else log_end(log_dir, src.source)
                else:
                    cur[src.source] = log_start(log_dir, src.source)
                changed = True
        for gone in set(self.state.cursors) - present:
            del self.state.cursors[gone]
            changed = True
        if changed or self.fresh:
            self.fresh = False
            self.state.save(self.state_path)

    def behind(self, instance: str) -> bool:
        """True while lines of ``instance`` on the node have not been acknowledged."""
        with self._state_lock:
            cur = dict(self.state.cursors.get(instance) or {})
        if not cur:
            return False  # not tracked (yet): nothing this drain promised to deliver
        return any(log_end(self.logs_dir / instance, s) > pos for s, pos in cur.items())

    def abandon(self, instance: str) -> None:
        """Give up on what is left of ``instance`` (its logs are about to go): counted as dropped."""
        with self._state_lock:
            cur = self.state.cursors.pop(instance, None) or {}
            lost = sum(max(0, log_end(self.logs_dir / instance, s) - pos) for s, pos in cur.items())
            self.state.dropped_bytes += lost
            self.state.save(self.state_path)
            self.gone.add(instance)

    # -- reporting -----------------------------------------------------------------------
    def pending_bytes(self) -> int:
        total = 0
        for inst, by_source in self.state.cursors.items():
            for source, pos in by_source.items():
                total += max(0, log_end(self.logs_dir / inst, source) - pos)
        return total

    def _snapshot(self) -> dict[str, Any]:
        return {
            "delivered": self.state.delivered,
            "dropped": self.state.dropped,
            "droppedBytes": self.state.dropped_bytes,
            "lastError": self.last_error[:512],
            "lastErrorTime": self.last_error_time,
            "lastDeliveryTime": self.last_delivery_time,
        }

    def _maybe_report(self, force: bool = False) -> None:
        if self.report_fn is None:
            return
        snap = self._snapshot()
        now = self.clock.monotonic()
        if snap == self._reported or (now < self._report_at and not force):
            return
        body = {**snap, "pendingBytes": self.pending_bytes(), "updatedTime": self.clock.now_iso()}
        self._report_at = now + REPORT_SECONDS
        try:
            self.report_fn(self.name, {k: v for k, v in body.items() if v is not None})
        except ForgeError as exc:  # best effort: tried again at the next report time
            log.info("log drain %s: report failed: %s", self.name, exc)
            return
        self._reported = snap
