"""Time as a collaborator: nothing else in Forge calls time.time, time.sleep or datetime.now.

Wall time (``now``) is seconds since the epoch as a float; ``monotonic`` is for measuring
intervals. ``FakeClock`` lets tests move time by hand.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time as _time
from collections import OrderedDict


def iso(ts: float) -> str:
    """Fixed-width RFC 3339 UTC with milliseconds, so strings order like the times they name."""
    d = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Clock:
    def now(self) -> float:
        raise NotImplementedError

    def monotonic(self) -> float:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def now_iso(self) -> str:
        return iso(self.now())


class SystemClock(Clock):
    def now(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    def sleep(self, seconds: float) -> None:
        _time.sleep(max(0.0, seconds))


class FakeClock(Clock):
    """A clock that only moves when told to; ``sleep`` advances it instantly."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            self._mono += seconds

    def step(self, seconds: float) -> None:
        """Step the wall clock alone (an operator's ``date -s``, an NTP correction): monotonic
        time does not move."""
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


class Stopwatch:
    """How long ago a recorded wall-clock instant was, measured where it is observed.

    Two readings, for the two kinds of wait. ``elapsed`` is for a deadline (give up after T): a
    start from before this process looked is read off the wall clocks, bounded as below, so a
    restart loop cannot reset a deadline for good. ``observed`` is for a minimum wait (go ahead
    only after T: ``health.min_ready``, a stable period): it counts
    from this process's first look only, so no wall-clock step, skew, or leader change can
    shorten it — a new leader waits a minimum wait out again, at most once more.

    A record carries the wall time something started (``createdTime``, ``readyTime``,
    ``lastTransitionTime``), written by whichever machine saw it — with that machine's clock.
    The first time this process asks about one (``key`` + that text) it reads the age off the
    wall clocks, within bounds; from then on the age grows with this process's monotonic clock,
    so a step of any wall clock (or skew between machines) cannot move it. The bounds on the
    first reading: never negative; and once this process has been watching for ``watching``
    seconds, a start it asks about for the first time happened while it watched (the store's
    watch wakes it within moments), so it is at most ``slack`` seconds old. A step can then
    shorten a wait by ``slack`` at most, and lengthen one only before the process first looked.
    """

    def __init__(self, clock: Clock, watching: float = 10.0, slack: float = 2.0, size: int = 20_000) -> None:
        self.clock, self.watching, self.slack, self.size = clock, watching, slack, size
        self._born: float | None = None
        self._marks: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def elapsed(self, key: str, start_iso: str | None, at_most: float | None = None) -> float:
        """Seconds since ``start_iso`` (0 when there is none): for deadlines. ``at_most`` caps the
        first reading off the wall clocks: a deadline of T read with ``at_most=T/2`` leaves at
        least half of it after this process's first look, however far a step moved the clocks."""
        return self._read(key, start_iso, trust_wall=True, at_most=at_most)

    def observed(self, key: str, start_iso: str | None) -> float:
        """Seconds since this process first saw ``start_iso`` (0 when there is none): for minimum
        waits, which a wall-clock reading must never shorten."""
        return self._read("=" + key, start_iso, trust_wall=False)

    def _read(self, key: str, start_iso: str | None, trust_wall: bool, at_most: float | None = None) -> float:
        if not start_iso:
            return 0.0
        mono = self.clock.monotonic()
        with self._lock:
            if self._born is None:
                self._born = mono
            mark = self._marks.get((key, start_iso))
            if mark is None:
                age = 0.0
                if trust_wall:
                    age = max(0.0, self.clock.now() - parse_iso(start_iso))
                    if mono - self._born >= self.watching:
                        age = min(age, self.slack)
                    if at_most is not None:
                        age = min(age, max(0.0, at_most))
                mark = mono - age
                self._marks[(key, start_iso)] = mark
                while len(self._marks) > self.size:
                    self._marks.popitem(last=False)
            else:
                self._marks.move_to_end((key, start_iso))
        return max(0.0, mono - mark)
