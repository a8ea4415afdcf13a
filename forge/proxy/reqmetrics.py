"""Per-app request metrics on a proxy host (#25): Caddy's access log counted per (app, release).

Each entry (``forge.proxy.accesslog``) is labelled by the App that serves its host — ``APP.DOMAIN``
or a custom domain, as the host map routes them (``forge.proxy.routing.host_table``) — and by that
App's live release (``App.status.liveDeployment``) as this proxy's records know it when the line
arrives: one label set per App however many domains it has. A host no App serves (the catch-all's
404s, an App with no live release) is counted only in ``forge_proxy_unrouted_requests_total``.

Two views of the same counts:

* cumulative series for Prometheus, ``forge_app_http_requests_total{app,release,code_class}`` and
  the histogram ``forge_app_http_request_duration_seconds{app,release}`` (``LATENCY_BOUNDS``).
  A series stops being exported once it is not the App's live release (superseded, or the App
  is gone) and has seen no request for ``SERIES_TTL`` seconds, so the label sets stay bounded by
  the live releases plus the last ten minutes' worth of switches;
* 10-second buckets (``forge.appmetrics.RequestSample``), closed ``CLOSE_GRACE`` seconds after
  their end and handed to the sender (``forge.proxy.reqsender``). A line whose bucket was already
  closed (a slow request logged late) opens the bucket again: the API adds samples of one key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from forge.appmetrics import (
    BUCKET_SECONDS,
    LATENCY_BOUNDS,
    RequestSample,
    bucket_index,
    bucket_of,
    code_class,
)
from forge.models import App
from forge.proxy.accesslog import Entry
from forge.proxy.routing import host_table

CLOSE_GRACE: Final[float] = 2.0  # seconds after a bucket's end before it is closed and sent
SERIES_TTL: Final[float] = 600.0  # an idle series that is not a live release is dropped after this

Target = tuple[str, str]  # (app, release)


def host_targets(apps: Iterable[App], domain: str) -> dict[str, Target]:
    """host → (app, live release) for every App with a live release: the hosts Caddy serves."""
    apps = [a for a in apps if a.status.live_deployment]
    live = {a.metadata.name: a.status.live_deployment or "" for a in apps}
    table = host_table(apps, domain, {name: [name] for name in live})
    return {host: (names[0], live[names[0]]) for host, names in table.items()}


@dataclass
class Series:
    """One (app, release)'s cumulative counts since this proxy started."""

    by_class: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    sum_seconds: float = 0.0
    last_ts: float = 0.0


class RequestCounter:
    """Counts entries; thread-safe (one reader thread observes, the sender and scrapes read)."""

    def __init__(
        self,
        hosts: Callable[[], dict[str, Target]] = dict,
        wake: Callable[[float], None] | None = None,
    ) -> None:
        """``hosts``: host → (app, release) now (read again after ``hosts_changed``); ``wake``:
        called with a bucket's closing time (Unix seconds) when it opens (the sender's timer)."""
        self._source, self.wake = hosts, wake
        self._stale = True
        self._lock = threading.Lock()
        self._hosts: dict[str, Target] = {}
        self._open: dict[tuple[str, str, int], RequestSample] = {}
        self._series: dict[Target, Series] = {}
        self.unrouted = 0
        self.unreadable = 0

    def hosts_changed(self) -> None:
        """The records changed: the next line reads the host map again (once for many changes)."""
        self._stale = True

    def _current(self) -> dict[str, Target]:
        if self._stale:
            self._stale = False  # first: a change while reading marks it stale again
            self._hosts = self._source()  # replaced whole: readers see the old map or the new one
        return self._hosts

    def live(self) -> set[Target]:
        return set(self._current().values())

    def observe(self, entry: Entry) -> None:
        target = (self._current() if self._stale else self._hosts).get(entry.host)
        if target is None:
            self.unrouted += 1
            return
        app, release = target
        cls, idx = code_class(entry.status), bucket_index(entry.duration)
        key = (app, release, bucket_of(entry.ts))
        opened = False
        with self._lock:
            sample = self._open.get(key)
            if sample is None:
                sample = self._open[key] = RequestSample(app, release, key[2])
                opened = True
            sample.by_class[cls] = sample.by_class.get(cls, 0) + 1
            sample.buckets[idx] += 1
            sample.sum_seconds += entry.duration
            series = self._series.get(target)
            if series is None:
                series = self._series[target] = Series()
            series.by_class[cls] = series.by_class.get(cls, 0) + 1
            series.buckets[idx] += 1
            series.sum_seconds += entry.duration
            if entry.ts > series.last_ts:
                series.last_ts = entry.ts
        if opened and self.wake is not None:
            self.wake(key[2] + BUCKET_SECONDS + CLOSE_GRACE)

    def bad_line(self) -> None:
        self.unreadable += 1

    def close_due(self, now: float) -> list[RequestSample]:
        """Pop the buckets that ended at least CLOSE_GRACE seconds before ``now``, oldest first."""
        with self._lock:
            due = [k for k in self._open if k[2] + BUCKET_SECONDS + CLOSE_GRACE <= now]
            return [self._open.pop(k) for k in sorted(due, key=lambda k: k[2])]

    def expire(self, now: float) -> list[Target]:
        """Drop the series that are not a live release and saw nothing for SERIES_TTL seconds."""
        live = self.live()
        with self._lock:
            gone = [t for t, s in self._series.items() if t not in live and s.last_ts + SERIES_TTL <= now]
            for t in gone:
                del self._series[t]
        return gone

    def next_due(self, now: float) -> float | None:
        """Seconds until a bucket closes or a series may expire; None when neither is pending."""
        live = self.live()
        with self._lock:
            times = [k[2] + BUCKET_SECONDS + CLOSE_GRACE for k in self._open]
            times += [s.last_ts + SERIES_TTL for t, s in self._series.items() if t not in live]
        return max(0.0, min(times) - now) if times else None

    def series(self) -> dict[Target, Series]:
        """A copy of the cumulative series (for scrapes and tests)."""
        with self._lock:
            return {
                t: Series(dict(s.by_class), list(s.buckets), s.sum_seconds, s.last_ts)
                for t, s in self._series.items()
            }


class RequestCollector(Collector):
    """Prometheus view of a RequestCounter, built at scrape time (nothing per request)."""

    def __init__(self, counter: RequestCounter, extra: Callable[[], Iterator[Metric]]) -> None:
        self.counter, self.extra = counter, extra

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "forge_app_http_requests",
            "Requests Caddy served for an App, by release and status class",
            labels=["app", "release", "code_class"],
        )
        durations = HistogramMetricFamily(
            "forge_app_http_request_duration_seconds",
            "Time Caddy took to serve an App's requests (from its access log)",
            labels=["app", "release"],
        )
        for (app, release), s in sorted(self.counter.series().items()):
            for cls, n in sorted(s.by_class.items()):
                requests.add_metric([app, release, cls], n)
            cumulative, running = [], 0
            for bound, n in zip((*LATENCY_BOUNDS, float("inf")), s.buckets, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            durations.add_metric([app, release], cumulative, s.sum_seconds)
        yield requests
        yield durations
        unrouted = CounterMetricFamily(
            "forge_proxy_unrouted_requests",
            "Requests in Caddy's access log for a host no App with a live release serves",
        )
        unrouted.add_metric([], self.counter.unrouted)
        yield unrouted
        unreadable = CounterMetricFamily(
            "forge_proxy_access_log_unreadable_lines", "Access-log lines the proxy could not read"
        )
        unreadable.add_metric([], self.counter.unreadable)
        yield unreadable
        yield from self.extra()
