"""Time as a collaborator: nothing else in Forge calls time.time, time.sleep or datetime.now.

Wall time (``now``) is seconds since the epoch as a float; ``monotonic`` is for measuring
intervals. ``FakeClock`` lets tests move time by hand.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time as _time


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

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
