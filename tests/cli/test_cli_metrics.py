"""``forge metrics APP`` against a live ``forge server``: the summary at a glance, --json, errors."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from forge.appmetrics import RequestSample, bucket_of
from forge.cli.metrics import sparkline
from tests.cli.test_cli_server import TOKEN, forge, server  # noqa: F401  (the live server fixture)


@pytest.fixture(scope="module")
def shop(server: str) -> str:  # noqa: F811
    c = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}"})
    c.post("/api/v1/apps", json={"metadata": {"name": "shop"}, "spec": {"repo": "acme/shop"}}).raise_for_status()
    at = bucket_of(time.time()) - 20  # a point well inside the window
    s = RequestSample("shop", "shop-1", at)
    for code, n, secs in ((200, 90, 0.02), (404, 6, 0.004), (502, 4, 3.0)):
        for _ in range(n):
            s.observe(code, secs)
    r = c.post("/api/v1/metrics/requests", json={"proxy": "edge-1", "id": "cli-1", "samples": [s.to_json()]})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    return server


def test_metrics_at_a_glance(shop: str) -> None:
    """Totals by class, the 5xx share and percentiles print; --json is the API's answer."""
    r = forge(shop, "metrics", "shop", "--since", "10m")
    assert r.returncode == 0, r.stderr
    assert "requests  100 (4.0% 5xx)" in r.stdout and "2xx 90  3xx 0  4xx 6  5xx 4" in r.stdout, r.stdout
    assert "p50 " in r.stdout and "p99 2.5 s" not in r.stdout and "p99 10.0 s" not in r.stdout
    data = json.loads(forge(shop, "metrics", "shop", "--json").stdout)
    assert data["requests"]["byClass"] == {"2xx": 90, "3xx": 0, "4xx": 6, "5xx": 4}
    assert set(data["series"]) >= {"requests", "errors", "p95", "cpu", "memory"}
    assert json.loads(forge(shop, "metrics", "shop", "-o", "json").stdout)["requests"]["total"] == 100


@pytest.mark.parametrize(
    ("args", "message"),
    [(("metrics", "nope"), "nope"), (("metrics", "shop", "--since", "40d"), "30d"), (("metrics", "shop", "--since", "soon"), "10m")],
    ids=["unknown-app", "too-long", "not-a-duration"],
)
def test_metrics_errors_are_one_line(shop: str, args: tuple[str, ...], message: str) -> None:
    """An unknown app or a bad --since fails with one line naming it, never a traceback."""
    r = forge(shop, *args)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r


@pytest.mark.parametrize(
    ("values", "total", "want"),
    [
        ([], False, ""),
        ([None, None], False, "  "),
        ([0, 0], False, "▁▁"),
        ([1, 2, 4, 8], True, "▁▂▄█"),
        ([100, 101, 102], False, "▁▄█"),
        ([1, None, 8], False, "▁ █"),
        ([1] * 80, True, "█" * 40),
    ],
    ids=["empty", "no-data", "zeros", "rising-count", "gauge-band", "gap", "squeezed"],
)
def test_sparkline(values: list[float | None], total: bool, want: str) -> None:
    """Columns are the peak (or sum) of their values, scaled to the largest; gaps stay blank."""
    assert sparkline(values, total=total) == want
