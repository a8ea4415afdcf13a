"""``forge metrics APP [--since 1h]``: an app's requests, latency, CPU, memory and restarts at a
glance, from ``GET /api/v1/apps/APP/metrics`` (``-o json`` / ``--json``: that answer as is)."""

from __future__ import annotations

from typing import Any

import click

from forge.cli import Ctx, cli, pass_ctx
from forge.cli.output import emit
from forge.cli.resources import OUTPUT
from forge.clock import SystemClock
from forge.series import WindowError, parse_window
from forge.textsafe import printable

BARS = "▁▂▃▄▅▆▇█"
WIDTH = 40


def sparkline(values: list[float | None], width: int = WIDTH, total: bool = False) -> str:
    """``values`` squeezed into ``width`` columns (the sum or the peak of each column's
    values), drawn with eight bar heights; a blank where a column has no value. Counts
    (``total``) are scaled from zero, gauges from their lowest column (CPU and memory move
    within a band)."""
    if not values:
        return ""
    cols: list[float | None] = []
    per = max(1, -(-len(values) // width))
    for i in range(0, len(values), per):
        got = [v for v in values[i : i + per] if v is not None]
        cols.append((sum(got) if total else max(got)) if got else None)
    known = [c for c in cols if c is not None]
    top = max(known, default=0.0)
    low = 0.0 if total else min(known, default=0.0)
    if top <= low:
        return "".join(" " if c is None else BARS[0] for c in cols)
    return "".join(" " if c is None else BARS[min(7, int((c - low) / (top - low) * 7.999))] for c in cols)


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def cores(n: float | None) -> str:
    return "-" if n is None else f"{n:.2f} cores"


def ago(ts: float, now: float) -> str:
    secs = max(0, int(now - ts))
    for unit, div in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= div:
            return f"{secs // div}{unit} ago"
    return f"{secs}s ago"


def human(m: dict[str, Any], now: float) -> str:
    req, series, res = m["requests"], m["series"], m["resources"]
    values = {k: [v for _, v in pts] for k, pts in series.items()}
    total = req["total"]
    by = req["byClass"]
    share = f" ({by.get('5xx', 0) / total:.1%} 5xx)" if total else ""
    step = "10 s" if m["step"] == 10 else f"{m['step'] // 60} min"
    lines = [
        f"{printable(m['app'])}: the last {m['since']} ({step} points)",
        f"  requests  {total}{share}   "
        + "  ".join(f"{c} {by.get(c, 0)}" for c in ("2xx", "3xx", "4xx", "5xx")),
        f"  latency   p50 {ms(req['p50'])}   p95 {ms(req['p95'])}   p99 {ms(req['p99'])}",
        f"            requests {sparkline(values['requests'], total=True)}",
        f"            5xx      {sparkline(values['errors'], total=True)}",
        f"  cpu       now {cores(res['cpu']['now'])}   peak {cores(res['cpu']['peak'])}   {sparkline(values['cpu'])}",
        f"  memory    now {size(res['memory']['now'])}   peak {size(res['memory']['peak'])}   "
        + sparkline(values["memory"]),
        f"  restarts  {m['restarts']}",
    ]
    if m["releases"]:
        marks = ", ".join(f"{printable(name)} {ago(t, now)}" for t, name in m["releases"][-3:])
        lines.append(f"  releases  went live: {marks}")
    if not total and res["memory"]["now"] is None:
        lines.append(
            "  (nothing measured in this window: no requests through the proxy, no Instance reported)"
        )
    return "\n".join(lines)


@cli.command()
@click.argument("name")
@click.option("--since", default="1h", show_default=True, help="The window: 10m, 2h, 7d … (at most 30d).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer as JSON (same as -o json).")
@OUTPUT
@pass_ctx
def metrics(ctx: Ctx, name: str, since: str, as_json: bool, fmt: str) -> None:
    """An app's requests (by class, p50/p95/p99), CPU, memory and restarts over a window."""
    try:
        parse_window(since)
    except WindowError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    m = ctx.client.request("GET", f"/api/v1/apps/{name}/metrics", params={"since": since})
    emit(m, "json" if as_json else fmt, lambda: human(m, SystemClock().now()))
