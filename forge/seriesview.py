"""``GET /api/v1/apps/APP/metrics`` as a pure function of the points read (#25).

Every series is a list of ``[timestamp, value]`` pairs on one grid (the starts of every point
of the window, 10 s or 5 min apart), so a chart can share one x axis:

- ``requests``, ``errors`` (5xx): requests counted in the point, 0 when none came;
- ``p95``: seconds, from the point's histogram (``appmetrics.quantile``), null when no request;
- ``cpu``: cores used by all the app's Instances together (the sum of their averages over the
  point), null when no Instance reported;
- ``memory``: bytes used by all the app's Instances together (the sum of their averages),
  null when none reported;
- ``restarts``: Instance restarts seen in the point.

The summary ``requests`` (total, byClass 2xx–5xx, p50/p95/p99 of the whole window) is computed
from the same points; ``resources`` gives CPU and memory now (the newest point that has them)
and at their peak (memory: the largest sample any point saw); ``releases`` lists
``[timestamp, release]`` for each release that went Live inside the window.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from forge.appmetrics import quantile
from forge.series import N_BUCKETS, RequestPoint, UsagePoint

SUMMARY_CLASSES = ("2xx", "3xx", "4xx", "5xx")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def request_view(points: list[RequestPoint], grid: list[int]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(summary, series) of the request points (every release of the app together)."""
    by_class = {c: 0 for c in SUMMARY_CLASSES}
    total = 0
    window_buckets = [0] * N_BUCKETS
    per_at: dict[int, list[int]] = defaultdict(lambda: [0] * N_BUCKETS)
    count: dict[int, int] = defaultdict(int)
    errors: dict[int, int] = defaultdict(int)
    for p in points:
        total += p.total
        for cls, n in p.by_class.items():
            if cls in by_class:
                by_class[cls] += n
        errors[p.at] += p.by_class.get("5xx", 0)
        count[p.at] += p.total
        acc = per_at[p.at]
        for i, n in enumerate(p.buckets):
            acc[i] += n
            window_buckets[i] += n
    summary: dict[str, Any] = {
        "total": total,
        "byClass": by_class,
        **{f"p{int(q * 100)}": _round(quantile(window_buckets, q), 6) for q in (0.5, 0.95, 0.99)},
    }
    series: dict[str, list[Any]] = {
        "requests": [[t, count.get(t, 0)] for t in grid],
        "errors": [[t, errors.get(t, 0)] for t in grid],
        "p95": [[t, _round(quantile(per_at[t], 0.95), 6) if t in per_at else None] for t in grid],
    }
    return summary, series


def usage_view(points: list[UsagePoint], grid: list[int]) -> tuple[dict[str, Any], dict[str, list[Any]], int]:
    """(resources, series, restarts in the window) of the usage points (every Instance together)."""
    cpu: dict[int, float] = {}
    memory: dict[int, float] = {}
    memory_peak: dict[int, int] = defaultdict(int)
    restarts: dict[int, int] = defaultdict(int)
    for p in points:
        if p.cpu is not None:
            cpu[p.at] = cpu.get(p.at, 0.0) + p.cpu
        if p.n:
            memory[p.at] = memory.get(p.at, 0.0) + p.memory
            memory_peak[p.at] += p.memory_max
        restarts[p.at] += p.restarts
    series: dict[str, list[Any]] = {
        "cpu": [[t, _round(cpu.get(t), 4)] for t in grid],
        "memory": [[t, int(memory[t]) if t in memory else None] for t in grid],
        "restarts": [[t, restarts.get(t, 0)] for t in grid],
    }
    newest_cpu = max(cpu) if cpu else None
    newest_mem = max(memory) if memory else None
    resources: dict[str, Any] = {
        "cpu": {
            "now": _round(cpu[newest_cpu], 4) if newest_cpu is not None else None,
            "peak": _round(max(cpu.values()), 4) if cpu else None,
        },
        "memory": {
            "now": int(memory[newest_mem]) if newest_mem is not None else None,
            "peak": max(memory_peak.values()) if memory_peak else None,
        },
    }
    return resources, series, sum(restarts.values())


def app_metrics_view(
    app: str,
    since: str,
    step: int,
    grid: list[int],
    requests: list[RequestPoint],
    usage: list[UsagePoint],
    releases: list[tuple[int, str]],
) -> dict[str, Any]:
    summary, req_series = request_view(requests, grid)
    resources, use_series, restarts = usage_view(usage, grid)
    return {
        "app": app,
        "since": since,
        "step": step,
        "from": grid[0] if grid else None,
        "to": grid[-1] if grid else None,
        "requests": summary,
        "series": {**req_series, **use_series},
        "restarts": restarts,
        "resources": resources,
        "releases": [[t, name] for t, name in sorted(releases) if not grid or t >= grid[0]],
    }
