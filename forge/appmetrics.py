"""The shape of per-app request metrics, shared by the proxy that counts them and the API that
keeps and answers them (#25). Defined once here: neither side imports the other.

A proxy counts every request Caddy serves for an App, per (app, release), into 10-second buckets
(``at`` = the bucket's start, a multiple of ``BUCKET_SECONDS`` in Unix seconds) and sends the
closed buckets to ``POST /api/v1/metrics/requests`` as ``{"proxy": NAME, "samples": [...]}``,
one sample per (app, release, at) as ``RequestSample.to_json`` writes it. Two proxies (two hosts)
may send samples for the same key: the API adds them. A sample is sent at least once: a proxy
retries a batch the API did not acknowledge, and gives each batch an ``id`` (unique per proxy)
the API remembers, so a retried batch is not counted twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

BUCKET_SECONDS: Final[int] = 10
# Upper bounds (seconds) of the latency histogram; a last, implicit +Inf bucket follows.
LATENCY_BOUNDS: Final[tuple[float, ...]] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CODE_CLASSES: Final[tuple[str, ...]] = ("1xx", "2xx", "3xx", "4xx", "5xx")
MAX_SAMPLES_PER_BATCH: Final[int] = 5000


def code_class(status: int) -> str:
    """``"2xx"`` for 204; anything outside 100–599 counts as ``"5xx"`` (a proxy-side failure)."""
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return "5xx"


def bucket_of(seconds: float) -> int:
    """The start of the 10-second bucket ``seconds`` (Unix time) falls in."""
    return int(seconds // BUCKET_SECONDS) * BUCKET_SECONDS


def bucket_index(duration: float) -> int:
    """Index into ``buckets`` (len(LATENCY_BOUNDS) + 1 counters, not cumulative) for a duration."""
    for i, bound in enumerate(LATENCY_BOUNDS):
        if duration <= bound:
            return i
    return len(LATENCY_BOUNDS)


class SampleError(ValueError):
    """A malformed sample; the message names the field."""


@dataclass
class RequestSample:
    app: str
    release: str
    at: int
    by_class: dict[str, int] = field(default_factory=dict)
    # Per-bound counts, NOT cumulative: buckets[i] counts durations in (bound[i-1], bound[i]];
    # the last entry counts those above the last bound.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    sum_seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_class.values())

    def observe(self, status: int, duration: float) -> None:
        cls = code_class(status)
        self.by_class[cls] = self.by_class.get(cls, 0) + 1
        self.buckets[bucket_index(duration)] += 1
        self.sum_seconds += max(0.0, duration)

    def add(self, other: RequestSample) -> None:
        for cls, n in other.by_class.items():
            self.by_class[cls] = self.by_class.get(cls, 0) + n
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.sum_seconds += other.sum_seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "release": self.release,
            "at": self.at,
            "byClass": dict(self.by_class),
            "buckets": list(self.buckets),
            "sum": self.sum_seconds,
        }

    @classmethod
    def from_json(cls, raw: object, where: str = "sample") -> RequestSample:
        if not isinstance(raw, dict):
            raise SampleError(f"{where}: expected an object")
        app, release, at = raw.get("app"), raw.get("release", ""), raw.get("at")
        if not isinstance(app, str) or not app:
            raise SampleError(f"{where}.app: expected a non-empty string")
        if not isinstance(release, str):
            raise SampleError(f"{where}.release: expected a string")
        if not isinstance(at, int) or isinstance(at, bool) or at < 0 or at % BUCKET_SECONDS:
            raise SampleError(f"{where}.at: expected Unix seconds, a multiple of {BUCKET_SECONDS}")
        by_class = raw.get("byClass", {})
        if not isinstance(by_class, dict):
            raise SampleError(f"{where}.byClass: expected an object of class -> count")
        counts: dict[str, int] = {}
        for key, n in by_class.items():
            if key not in CODE_CLASSES:
                raise SampleError(f"{where}.byClass.{key}: unknown class (one of {', '.join(CODE_CLASSES)})")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise SampleError(f"{where}.byClass.{key}: expected a count >= 0")
            counts[key] = n
        buckets = raw.get("buckets")
        if (
            not isinstance(buckets, list)
            or len(buckets) != len(LATENCY_BOUNDS) + 1
            or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in buckets)
        ):
            raise SampleError(f"{where}.buckets: expected {len(LATENCY_BOUNDS) + 1} counts >= 0")
        if sum(buckets) != sum(counts.values()):
            raise SampleError(
                f"{where}.buckets: the counts add up to {sum(buckets)}, byClass to {sum(counts.values())}"
            )
        total = raw.get("sum", 0.0)
        if (
            not isinstance(total, (int, float))
            or isinstance(total, bool)
            or not math.isfinite(total)
            or total < 0
        ):
            raise SampleError(f"{where}.sum: expected seconds >= 0")
        return cls(app, release, at, counts, list(buckets), float(total))


def quantile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of a histogram, interpolated linearly inside its bucket as
    Prometheus's histogram_quantile does; None when it holds nothing. Above the last bound the
    answer is the last bound (the histogram cannot say more)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(LATENCY_BOUNDS):
                return LATENCY_BOUNDS[-1]
            lower = LATENCY_BOUNDS[i - 1] if i else 0.0
            upper = LATENCY_BOUNDS[i]
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return LATENCY_BOUNDS[-1]
