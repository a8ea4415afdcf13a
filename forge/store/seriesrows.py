"""What both time-series backends share: the tables, the additive upserts and the row shapes.

A sample is added to its fine point and to its rollup point with ``INSERT … ON CONFLICT DO
UPDATE SET x = x + excluded.x`` — one statement per row that both SQLite and PostgreSQL run
atomically, so two API hosts adding samples of two proxies for one key both count. A batch id
is inserted in the same transaction (``batches``, keyed by the sender and the id): when it is
already there the whole batch is skipped, so a batch retried after a lost acknowledgement is
counted once. Rows are written in key order, so two concurrent transactions on PostgreSQL
take their row locks in the same order and never deadlock.

Only ``{ph}`` (the placeholder) and the larger-of function differ between dialects.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from forge.appmetrics import CODE_CLASSES, RequestSample
from forge.series import (
    BATCH_KEEP_SECONDS,
    FINE_STEP,
    KEEP_SECONDS,
    N_BUCKETS,
    ROLLUP_STEP,
    RequestPoint,
    UsagePoint,
    UsageSample,
    in_range,
    rollup_of,
)

CLASS_COLS: Final[tuple[str, ...]] = tuple(f"c{c[0]}xx" for c in CODE_CLASSES)
BUCKET_COLS: Final[tuple[str, ...]] = tuple(f"b{i}" for i in range(N_BUCKETS))
REQ_VALUES: Final[tuple[str, ...]] = (*CLASS_COLS, *BUCKET_COLS, "sum_s")
USAGE_VALUES: Final[tuple[str, ...]] = ("cpu_sum", "cpu_n", "memory_sum", "memory_max", "restarts", "n")
PRUNE_EVERY_SECONDS: Final[float] = 60.0


def schema(real: str) -> tuple[str, ...]:
    """Tables and indexes (``real``: the dialect's double type)."""
    ints = ", ".join(f"{c} BIGINT NOT NULL" for c in (*CLASS_COLS, *BUCKET_COLS))
    return (
        f"""CREATE TABLE IF NOT EXISTS req_points (
            app TEXT NOT NULL, rel TEXT NOT NULL, step INTEGER NOT NULL, t BIGINT NOT NULL,
            {ints}, sum_s {real} NOT NULL,
            PRIMARY KEY (app, step, t, rel))""",
        "CREATE INDEX IF NOT EXISTS req_points_age ON req_points (step, t)",
        f"""CREATE TABLE IF NOT EXISTS usage_points (
            app TEXT NOT NULL, instance TEXT NOT NULL, step INTEGER NOT NULL, t BIGINT NOT NULL,
            cpu_sum {real} NOT NULL, cpu_n BIGINT NOT NULL, memory_sum {real} NOT NULL,
            memory_max BIGINT NOT NULL, restarts BIGINT NOT NULL, n BIGINT NOT NULL,
            PRIMARY KEY (app, step, t, instance))""",
        "CREATE INDEX IF NOT EXISTS usage_points_age ON usage_points (step, t)",
        """CREATE TABLE IF NOT EXISTS series_batches (
            source TEXT NOT NULL, id TEXT NOT NULL, t BIGINT NOT NULL,
            PRIMARY KEY (source, id))""",
        "CREATE INDEX IF NOT EXISTS series_batches_age ON series_batches (t)",
    )


def upsert_requests(ph: str) -> str:
    cols = ("app", "rel", "step", "t", *REQ_VALUES)
    sets = ", ".join(f"{c} = req_points.{c} + excluded.{c}" for c in REQ_VALUES)
    return (
        f"INSERT INTO req_points ({', '.join(cols)}) VALUES ({', '.join([ph] * len(cols))}) "
        f"ON CONFLICT (app, step, t, rel) DO UPDATE SET {sets}"
    )


def upsert_usage(ph: str, greatest: str) -> str:
    cols = ("app", "instance", "step", "t", *USAGE_VALUES)
    sets = ", ".join(
        f"{c} = {greatest}(usage_points.{c}, excluded.{c})"
        if c == "memory_max"
        else f"{c} = usage_points.{c} + excluded.{c}"
        for c in USAGE_VALUES
    )
    return (
        f"INSERT INTO usage_points ({', '.join(cols)}) VALUES ({', '.join([ph] * len(cols))}) "
        f"ON CONFLICT (app, step, t, instance) DO UPDATE SET {sets}"
    )


def claim_batch(ph: str) -> str:
    return f"INSERT INTO series_batches (source, id, t) VALUES ({ph}, {ph}, {ph}) ON CONFLICT DO NOTHING"


def select_requests(ph: str) -> str:
    return (
        f"SELECT t, rel, {', '.join(REQ_VALUES)} FROM req_points "
        f"WHERE app = {ph} AND step = {ph} AND t >= {ph} AND t <= {ph} ORDER BY t, rel"
    )


def select_usage(ph: str) -> str:
    return (
        f"SELECT t, instance, {', '.join(USAGE_VALUES)} FROM usage_points "
        f"WHERE app = {ph} AND step = {ph} AND t >= {ph} AND t <= {ph} ORDER BY t, instance"
    )


def select_app_usage(ph: str) -> str:
    """The app's Instances together, one row per point: CPU and memory are the sums of each
    Instance's average (so the answer does not grow with the Instances times the points)."""
    return (
        "SELECT t, '', COALESCE(SUM(CASE WHEN cpu_n > 0 THEN cpu_sum / cpu_n END), 0), "
        "MAX(CASE WHEN cpu_n > 0 THEN 1 ELSE 0 END), SUM(memory_sum / n), SUM(memory_max), "
        f"SUM(restarts), 1 FROM usage_points WHERE app = {ph} AND step = {ph} AND t >= {ph} AND t <= {ph} "
        "GROUP BY t ORDER BY t"
    )


def request_rows(samples: Iterable[RequestSample], now: float) -> list[tuple[Any, ...]]:
    """One row per (app, release, step, at), fine and rollup, summed, in key order; samples
    out of range are left out, and fine rows older than the fine retention too."""
    acc: dict[tuple[str, int, int, str], list[float]] = {}
    for s in samples:
        if not in_range(s.at, now):
            continue
        values = [s.by_class.get(c, 0) for c in CODE_CLASSES] + list(s.buckets) + [s.sum_seconds]
        steps = [(ROLLUP_STEP, rollup_of(s.at))]
        if s.at >= now - KEEP_SECONDS[FINE_STEP]:
            steps.append((FINE_STEP, s.at))
        for step, at in steps:
            key = (s.app, step, at, s.release)
            cur = acc.get(key)
            acc[key] = list(values) if cur is None else [a + b for a, b in zip(cur, values, strict=True)]
    return [(app, rel, step, at, *vals) for (app, step, at, rel), vals in sorted(acc.items())]


def usage_rows(samples: Iterable[tuple[str, UsageSample]], now: float) -> list[tuple[Any, ...]]:
    """``(app, sample)`` pairs → one row per (app, instance, step, at), in key order."""
    acc: dict[tuple[str, int, int, str], list[float]] = {}
    for app, s in samples:
        if not in_range(s.at, now):
            continue
        values = [s.cpu or 0.0, 0 if s.cpu is None else 1, float(s.memory), s.memory, s.restarts, 1]
        steps = [(ROLLUP_STEP, rollup_of(s.at))]
        if s.at >= now - KEEP_SECONDS[FINE_STEP]:
            steps.append((FINE_STEP, s.at))
        for step, at in steps:
            key = (app, step, at, s.instance)
            cur = acc.get(key)
            if cur is None:
                acc[key] = list(values)
            else:
                acc[key] = [a + b for a, b in zip(cur, values, strict=True)]
                acc[key][3] = max(cur[3], values[3])
    return [
        (app, inst, step, at, v[0], int(v[1]), v[2], int(v[3]), int(v[4]), int(v[5]))
        for (app, step, at, inst), v in sorted(acc.items())
    ]


def request_point(row: tuple[Any, ...]) -> RequestPoint:
    at, release, *vals = row
    n = len(CLASS_COLS)
    by_class = {c: int(v) for c, v in zip(CODE_CLASSES, vals[:n], strict=True) if v}
    return RequestPoint(int(at), str(release), by_class, tuple(int(v) for v in vals[n:-1]), float(vals[-1]))


def usage_point(row: tuple[Any, ...]) -> UsagePoint:
    at, inst, cpu_sum, cpu_n, mem_sum, mem_max, restarts, n = row
    return UsagePoint(
        int(at), str(inst), float(cpu_sum), int(cpu_n), float(mem_sum), int(mem_max), int(restarts), int(n)
    )


def prune_cutoffs(now: float) -> list[tuple[str, int, int]]:
    """(table, step, oldest ``at`` kept) for each table and resolution; batches by age."""
    out = []
    for table in ("req_points", "usage_points"):
        for step, keep in KEEP_SECONDS.items():
            out.append((table, step, int(now) - keep))
    return out


def batch_cutoff(now: float) -> int:
    return int(now) - BATCH_KEEP_SECONDS
