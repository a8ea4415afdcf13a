"""Per-app time series (#25): what the store keeps and how ``GET /apps/APP/metrics`` reads it.

Two families, each at two resolutions: **request points** (``forge.appmetrics.RequestSample``,
counted by the proxies, per app × release) and **usage points** (CPU, memory and restarts of
each Instance's cgroup, sampled by its node's agent every ``USAGE_SECONDS``). Fine points are
``FINE_STEP`` (10 s) wide and kept ``FINE_KEEP_SECONDS`` (48 h); every sample also goes into the
``ROLLUP_STEP`` (5 min) point it falls in, kept ``ROLLUP_KEEP_SECONDS`` (30 days). Both are
written in the same transaction, so a rollup is always the sum of the fine points it covers.

Usage points are sums with a count (``cpu_sum``/``memory_sum`` over ``n`` samples, the memory
peak, restarts), so adding a sample is an addition whatever the resolution; the CPU and memory
of a point are the averages ``cpu_sum / n`` and ``memory_sum / n``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from forge.appmetrics import BUCKET_SECONDS, CODE_CLASSES, LATENCY_BOUNDS, SampleError

FINE_STEP: Final[int] = BUCKET_SECONDS
ROLLUP_STEP: Final[int] = 300
STEPS: Final[tuple[int, ...]] = (FINE_STEP, ROLLUP_STEP)
FINE_KEEP_SECONDS: Final[int] = 48 * 3600
ROLLUP_KEEP_SECONDS: Final[int] = 30 * 86400
KEEP_SECONDS: Final[dict[int, int]] = {FINE_STEP: FINE_KEEP_SECONDS, ROLLUP_STEP: ROLLUP_KEEP_SECONDS}
# A batch id is remembered as long as the fine points it could have added to.
BATCH_KEEP_SECONDS: Final[int] = FINE_KEEP_SECONDS
# Samples stamped further ahead than this (a skewed clock) are dropped, not stored.
FUTURE_SLACK_SECONDS: Final[int] = 600
USAGE_SECONDS: Final[float] = 10.0  # the agent's sampling interval in production
MAX_USAGE_PER_BATCH: Final[int] = 5000
N_BUCKETS: Final[int] = len(LATENCY_BOUNDS) + 1


def rollup_of(at: int) -> int:
    return at - at % ROLLUP_STEP


def in_range(at: int, now: float) -> bool:
    """A sample the store keeps: not older than the rollups' retention, not from the future."""
    return now - ROLLUP_KEEP_SECONDS <= at <= now + FUTURE_SLACK_SECONDS


@dataclass(frozen=True)
class UsageSample:
    """One Instance's cgroup over one interval, as an agent reports it: ``cpu`` cores used on
    average over the interval (None for the first sample after a start: no interval yet),
    ``memory`` bytes at the sample, ``restarts`` since the previous sample."""

    instance: str
    at: int
    cpu: float | None
    memory: int
    restarts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "at": self.at,
            "cpu": self.cpu,
            "memory": self.memory,
            "restarts": self.restarts,
        }

    @classmethod
    def from_json(cls, raw: object, where: str = "sample") -> UsageSample:
        if not isinstance(raw, dict):
            raise SampleError(f"{where}: expected an object")
        unknown = sorted(set(raw) - {"instance", "at", "cpu", "memory", "restarts"})
        if unknown:
            raise SampleError(f"{where}.{unknown[0]}: unknown field")
        inst, at, cpu = raw.get("instance"), raw.get("at"), raw.get("cpu")
        memory, restarts = raw.get("memory"), raw.get("restarts", 0)
        if not isinstance(inst, str) or not inst:
            raise SampleError(f"{where}.instance: expected an Instance name")
        if not _is_int(at) or at < 0 or at % FINE_STEP:
            raise SampleError(f"{where}.at: expected Unix seconds, a multiple of {FINE_STEP}")
        if cpu is not None and (
            not isinstance(cpu, int | float) or isinstance(cpu, bool) or not math.isfinite(cpu) or cpu < 0
        ):
            raise SampleError(f"{where}.cpu: expected cores >= 0 or null")
        if not _is_int(memory) or memory < 0:
            raise SampleError(f"{where}.memory: expected bytes >= 0")
        if not _is_int(restarts) or restarts < 0:
            raise SampleError(f"{where}.restarts: expected a count >= 0")
        return cls(inst, at, None if cpu is None else float(cpu), memory, restarts)


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class RequestPoint:
    """Requests of one (app, release) in one point of ``step`` seconds starting at ``at``."""

    at: int
    release: str
    by_class: dict[str, int]
    buckets: tuple[int, ...]
    sum_seconds: float

    @property
    def total(self) -> int:
        return sum(self.by_class.values())


@dataclass(frozen=True)
class UsagePoint:
    """One Instance's usage in one point of ``step`` seconds starting at ``at``."""

    at: int
    instance: str
    cpu_sum: float
    cpu_n: int  # samples that carried a CPU figure
    memory_sum: float
    memory_max: int
    restarts: int
    n: int

    @property
    def cpu(self) -> float | None:
        return self.cpu_sum / self.cpu_n if self.cpu_n else None

    @property
    def memory(self) -> float:
        return self.memory_sum / self.n if self.n else 0.0


# ---------------------------------------------------------------- the window of a read

DURATION: Final = re.compile(r"^(\d{1,7})(s|m|h|d)$")
UNIT: Final[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_WINDOW_SECONDS: Final[int] = 60
MAX_WINDOW_SECONDS: Final[int] = ROLLUP_KEEP_SECONDS
# Windows up to this long are answered from 10 s points (at most 2,160 of them); longer ones
# from 5-minute rollups (at most 8,640 for 30 days).
FINE_WINDOW_SECONDS: Final[int] = 6 * 3600


class WindowError(ValueError):
    """A ``since`` the API cannot answer; the message says what is accepted."""


def parse_window(text: str | None, default: str = "1h") -> int:
    """``10m``, ``2h``, ``7d`` (also ``90s``) → seconds, between 1 minute and 30 days."""
    raw = (text or default).strip()
    m = DURATION.match(raw)
    if not m:
        raise WindowError(
            f"since={raw!r} is not a duration: use a number and s, m, h or d, like 10m, 2h or 7d"
        )
    seconds = int(m.group(1)) * UNIT[m.group(2)]
    if seconds < MIN_WINDOW_SECONDS:
        raise WindowError(f"since={raw!r} is shorter than 1m")
    if seconds > MAX_WINDOW_SECONDS:
        raise WindowError(f"since={raw!r} is longer than 30d (points are kept 30 days)")
    return seconds


def step_for(window_seconds: int) -> int:
    return FINE_STEP if window_seconds <= FINE_WINDOW_SECONDS else ROLLUP_STEP


def grid(now: float, window_seconds: int, step: int) -> list[int]:
    """The starts of every point of ``step`` from ``now - window`` to the point holding ``now``."""
    last = int(now) - int(now) % step
    first = int(now) - window_seconds
    first -= first % step
    return list(range(first, last + 1, step))


def empty_classes() -> dict[str, int]:
    return {c: 0 for c in CODE_CLASSES}
