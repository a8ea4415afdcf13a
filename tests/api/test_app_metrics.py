"""Per-app metrics through the API (#25): request samples in from proxies, usage in from node
agents, ``GET /apps/APP/metrics`` out — over a real SQLite store and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from forge.api import create_app
from forge.appmetrics import MAX_SAMPLES_PER_BATCH, RequestSample, quantile
from forge.clock import FakeClock, iso
from forge.config import Config
from forge.series import FINE_KEEP_SECONDS, ROLLUP_KEEP_SECONDS, UsageSample
from forge.store.sqlite import SqliteStore
from tests.api.conftest import COMMIT1, TOKEN, Api, app_body

T0 = 1_800_000_000  # a multiple of 300: FakeClock's default start


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 5)


@pytest.fixture
def api(tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    config = Config(data_dir=tmp_path, admin_token=TOKEN, domain="forge.test")
    store = SqliteStore(str(tmp_path / "forge.db"), clock=clock)
    a = Api(falcon.testing.TestClient(create_app(config, store, clock)), store, config)
    a.create("apps", app_body("hello"))
    yield a
    store.close()


def sample(
    at: int, codes: dict[int, int], duration: float = 0.03, app: str = "hello", release: str = "hello-1"
) -> dict[str, Any]:
    s = RequestSample(app, release, at)
    for code, n in codes.items():
        for _ in range(n):
            s.observe(code, duration)
    return s.to_json()


def post(
    api: Api,
    samples: list[dict[str, Any]],
    batch: str = "b1",
    proxy: str = "host-a",
    token: str | None = TOKEN,
) -> falcon.testing.Result:
    return api.req(
        "POST",
        "/api/v1/metrics/requests",
        token=token,
        json={"proxy": proxy, "id": batch, "samples": samples},
    )


def metrics(api: Api, since: str = "10m") -> dict[str, Any]:
    r = api.req("GET", "/api/v1/apps/hello/metrics", params={"since": since})
    assert r.status_code == 200, r.text
    return r.json


def test_requests_are_counted_exactly_by_class_with_percentiles(api: Api) -> None:
    """Counts by class are exact, the series add up to the total, percentiles come from the histogram."""
    r = post(api, [sample(T0 - 60, {200: 7, 404: 2}), sample(T0 - 50, {500: 3, 301: 1}, duration=0.7)])
    assert r.status_code == 200 and r.json == {"accepted": 2, "dropped": 0, "duplicate": False}
    m = metrics(api)
    assert m["requests"]["total"] == 13
    assert m["requests"]["byClass"] == {"2xx": 7, "3xx": 1, "4xx": 2, "5xx": 3}
    assert sum(v for _, v in m["series"]["requests"]) == 13
    assert sum(v for _, v in m["series"]["errors"]) == 3
    assert dict(map(tuple, m["series"]["errors"]))[T0 - 50] == 3
    want = [0] * 12
    for s in (sample(T0 - 60, {200: 7, 404: 2}), sample(T0 - 50, {500: 3, 301: 1}, duration=0.7)):
        want = [a + b for a, b in zip(want, s["buckets"], strict=True)]
    assert m["requests"]["p50"] == pytest.approx(quantile(want, 0.5), abs=1e-6)
    assert m["requests"]["p99"] == pytest.approx(quantile(want, 0.99), abs=1e-6)
    assert 0.5 < m["requests"]["p99"] <= 1.0
    p95 = dict(map(tuple, m["series"]["p95"]))
    assert p95[T0 - 60] is not None and p95[T0 - 60] < 0.05 and p95[T0 - 40] is None
    assert m["step"] == 10 and [t for t, _ in m["series"]["requests"]] == [t for t, _ in m["series"]["cpu"]]


def test_a_retried_batch_counts_once_and_two_proxies_add_up(api: Api) -> None:
    """The same batch id from one proxy is acknowledged and not counted again; another proxy's adds."""
    s = [sample(T0 - 30, {200: 5})]
    assert post(api, s, "b1", "host-a").json["duplicate"] is False
    again = post(api, s, "b1", "host-a")
    assert again.status_code == 200 and again.json == {"accepted": 0, "dropped": 0, "duplicate": True}
    assert post(api, s, "b1", "host-b").json["duplicate"] is False  # ids are per proxy
    assert post(api, [sample(T0 - 30, {503: 1})], "b2", "host-a").status_code == 200
    m = metrics(api)
    assert m["requests"]["total"] == 11 and m["requests"]["byClass"]["5xx"] == 1
    assert dict(map(tuple, m["series"]["requests"]))[T0 - 30] == 11


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (
            {
                "proxy": "a",
                "id": "b",
                "samples": [{"app": "hello", "release": "r", "at": 5, "byClass": {}, "buckets": [0] * 12}],
            },
            "samples[0].at",
        ),
        (
            {
                "proxy": "a",
                "id": "b",
                "samples": [
                    {
                        "app": "hello",
                        "release": "r",
                        "at": 10,
                        "byClass": {"6xx": 1},
                        "buckets": [1] + [0] * 11,
                    }
                ],
            },
            "samples[0].byClass.6xx",
        ),
        (
            {
                "proxy": "a",
                "id": "b",
                "samples": [
                    {
                        "app": "hello",
                        "release": "r",
                        "at": 10,
                        "byClass": {"2xx": 2},
                        "buckets": [1] + [0] * 11,
                    }
                ],
            },
            "samples[0].buckets",
        ),
        (
            {"proxy": "a", "id": "b", "samples": [{"app": "", "at": 10, "buckets": [0] * 12}]},
            "samples[0].app",
        ),
        ({"proxy": "a", "id": "b", "samples": "x"}, "samples"),
        ({"proxy": "a", "samples": []}, "id"),
        ({"id": "b", "samples": []}, "proxy"),
        ({"proxy": "", "id": "b", "samples": []}, "proxy"),
        ({"proxy": "a", "id": "b", "samples": [], "extra": 1}, "extra"),
        ({"proxy": "a", "id": "b 1", "samples": []}, "id"),
    ],
    ids=[
        "at",
        "class",
        "buckets",
        "app",
        "samples",
        "no-id",
        "no-proxy",
        "empty-proxy",
        "unknown-field",
        "spaced-id",
    ],
)
def test_a_bad_batch_is_400_naming_the_field(api: Api, body: dict[str, Any], path: str) -> None:
    """Each malformed batch is refused whole, with the field's path, and counts nothing."""
    r = api.req("POST", "/api/v1/metrics/requests", json=body)
    assert r.status_code == 400, r.text
    assert r.json["details"][0]["path"] == path
    assert metrics(api)["requests"]["total"] == 0


def test_batches_over_the_bounds_are_413(api: Api) -> None:
    """More samples than the contract allows, or a body over the byte limit, is 413."""
    many = [sample(T0 - 10, {200: 1})] * (MAX_SAMPLES_PER_BATCH + 1)
    assert post(api, many).status_code == 413
    huge = api.req(
        "POST",
        "/api/v1/metrics/requests",
        body=b'{"proxy":"a","id":"b","samples":[' + b" " * (5 << 20) + b"]}",
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    assert metrics(api)["requests"]["total"] == 0


def test_who_may_send_and_read(api: Api) -> None:
    """The proxy's (admin) token only: no token and a wrong one are 401, a node token 403."""
    node_token = api.req("POST", "/api/v1/nodes/n1/token").json["token"]
    assert post(api, [], token=None).status_code == 401
    assert post(api, [], token="wrong").status_code == 401
    assert post(api, [], token=node_token).status_code == 403
    assert api.req("GET", "/api/v1/apps/hello/metrics", token=node_token).status_code == 403


def test_an_empty_admin_token_authenticates_nobody(tmp_path: Path, clock: FakeClock) -> None:
    """With FORGE_ADMIN_TOKEN empty, an empty bearer token is never the proxy's."""
    config = Config(data_dir=tmp_path, admin_token="", domain="forge.test")
    store = SqliteStore(str(tmp_path / "forge.db"), clock=clock)
    client = falcon.testing.TestClient(create_app(config, store, clock))
    for header in ("Bearer ", "Bearer", ""):
        r = client.simulate_post(
            "/api/v1/metrics/requests",
            headers={"Authorization": header},
            json={"proxy": "a", "id": "b", "samples": []},
        )
        assert r.status_code == 401
    store.close()


def test_unknown_app_is_404_and_its_samples_are_dropped(api: Api) -> None:
    """GET of an app that does not exist is 404; samples for one are dropped, not stored."""
    assert api.req("GET", "/api/v1/apps/nope/metrics").status_code == 404
    r = post(api, [sample(T0 - 10, {200: 1}, app="nope"), sample(T0 - 10, {200: 2})])
    assert r.json == {"accepted": 1, "dropped": 1, "duplicate": False}
    assert api.store.read_requests("nope", 10, 0, T0 + 100) == []


@pytest.mark.parametrize("since", ["abc", "10", "31d", "30s", "-5m", "1w", "2h30m"])
def test_since_is_validated(api: Api, since: str) -> None:
    """A window that is not N s/m/h/d between 1m and 30d is 400 on ``since``."""
    r = api.req("GET", "/api/v1/apps/hello/metrics", params={"since": since})
    assert r.status_code == 400 and r.json["details"][0]["path"] == "since"
    assert "10m" in r.json["message"] or "30d" in r.json["message"] or "1m" in r.json["message"]


@pytest.mark.parametrize(
    ("since", "step", "points"), [("10m", 10, 61), ("6h", 10, 2161), ("7d", 300, 2017), ("30d", 300, 8641)]
)
def test_the_window_picks_the_resolution(api: Api, since: str, step: int, points: int) -> None:
    """Up to 6 h: 10 s points; longer: 5-minute rollups, on one grid for every series."""
    m = metrics(api, since)
    assert m["step"] == step
    assert {len(v) for v in m["series"].values()} == {points}


def test_rollups_outlive_fine_points_and_everything_is_pruned_by_age(api: Api, clock: FakeClock) -> None:
    """A sample lands in its 10 s point and its 5-min rollup; writes prune each past its retention."""
    post(api, [sample(T0 - 20, {200: 4}), sample(T0 - 10, {500: 1})], "old")
    assert metrics(api, "7d")["requests"]["total"] == 5  # the rollup holds the same counts
    assert metrics(api, "7d")["requests"]["byClass"]["5xx"] == 1
    clock.advance(FINE_KEEP_SECONDS + 120)
    post(api, [sample(int(clock.now()) // 10 * 10 - 10, {200: 1})], "new")  # a write prunes
    assert api.store.read_requests("hello", 10, 0, T0) == []
    assert metrics(api, "7d")["requests"]["total"] == 6
    clock.advance(ROLLUP_KEEP_SECONDS)
    post(api, [], "newer")
    assert api.store.read_requests("hello", 300, 0, int(clock.now())) == []
    # The batch ids went too (kept as long as fine points): the store holds nothing of that past.
    assert post(api, [], "old").json["duplicate"] is False


def test_samples_out_of_range_are_not_stored(api: Api) -> None:
    """Samples older than 30 days or from a clock far ahead are dropped by the store."""
    r = post(
        api,
        [sample(T0 - ROLLUP_KEEP_SECONDS - 600, {200: 1}), sample(T0 + 3600, {200: 1}), sample(T0, {200: 1})],
    )
    assert r.json == {"accepted": 1, "dropped": 2, "duplicate": False}
    assert [p.at for p in api.store.read_requests("hello", 300, 0, T0 + 7200)] == [T0]


# ------------------------------------------------------------------ usage from node agents


def _instance(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"forge.dev/app": "hello", "forge.dev/node": node}},
        "spec": {
            "app": "hello",
            "deployment": "hello-1",
            "repo": "acme/hello",
            "commit": COMMIT1,
            "node": node,
        },
    }


@pytest.fixture
def nodes(api: Api) -> dict[str, str]:
    tokens = {n: api.req("POST", f"/api/v1/nodes/{n}/token").json["token"] for n in ("n1", "n2")}
    api.create("instances", _instance("hello-1-0", "n1"))
    api.create("instances", _instance("hello-1-1", "n2"))
    return tokens


def usage(
    api: Api, node: str, token: str, samples: list[UsageSample], batch: str = "u1"
) -> falcon.testing.Result:
    return api.req(
        "POST",
        f"/api/v1/nodes/{node}/usage",
        token=token,
        json={"id": batch, "samples": [s.to_json() for s in samples]},
    )


def test_usage_of_a_nodes_instances_becomes_cpu_and_memory_series(api: Api, nodes: dict[str, str]) -> None:
    """Two nodes' Instances add up per point; now and peak come from the newest and largest points."""
    assert (
        usage(api, "n1", nodes["n1"], [UsageSample("hello-1-0", T0 - 20, None, 100 << 20)]).status_code == 200
    )
    usage(api, "n1", nodes["n1"], [UsageSample("hello-1-0", T0 - 10, 0.25, 120 << 20, restarts=1)], "u2")
    r = usage(api, "n2", nodes["n2"], [UsageSample("hello-1-1", T0 - 10, 0.5, 80 << 20)])
    assert r.json == {"accepted": 1, "dropped": 0, "duplicate": False}
    assert usage(api, "n2", nodes["n2"], [UsageSample("hello-1-1", T0 - 10, 0.5, 80 << 20)]).json["duplicate"]
    m = metrics(api)
    cpu, mem = dict(map(tuple, m["series"]["cpu"])), dict(map(tuple, m["series"]["memory"]))
    assert cpu[T0 - 20] is None and cpu[T0 - 10] == pytest.approx(0.75)
    assert mem[T0 - 20] == 100 << 20 and mem[T0 - 10] == 200 << 20 and mem[T0 - 30] is None
    assert m["restarts"] == 1 and dict(map(tuple, m["series"]["restarts"]))[T0 - 10] == 1
    assert m["resources"] == {
        "cpu": {"now": 0.75, "peak": 0.75},
        "memory": {"now": 200 << 20, "peak": 200 << 20},
    }


def test_a_node_reports_only_its_own_instances(api: Api, nodes: dict[str, str]) -> None:
    """Another node's Instance or another node's URL is 403; a deleted Instance is dropped."""
    assert usage(api, "n1", nodes["n1"], [UsageSample("hello-1-1", T0 - 10, 0.1, 1)]).status_code == 403
    assert usage(api, "n2", nodes["n1"], [UsageSample("hello-1-0", T0 - 10, 0.1, 1)]).status_code == 403
    r = usage(
        api,
        "n1",
        nodes["n1"],
        [UsageSample("gone-1-0", T0 - 10, 0.1, 1), UsageSample("hello-1-0", T0 - 10, 0.1, 1)],
    )
    assert r.json == {"accepted": 1, "dropped": 1, "duplicate": False}
    bad = api.req(
        "POST",
        "/api/v1/nodes/n1/usage",
        token=nodes["n1"],
        json={"id": "x", "samples": [{"instance": "hello-1-0", "at": 10, "memory": -1}]},
    )
    assert bad.status_code == 400 and bad.json["details"][0]["path"] == "samples[0].memory"


def test_release_markers_are_when_each_release_went_live(api: Api) -> None:
    """``releases`` lists [time, name] for releases that went Live inside the window."""
    for n, live in ((1, T0 - 3 * 3600), (2, T0 - 300), (3, None)):
        d = api.create(
            "deployments",
            {
                "metadata": {"name": f"hello-{n}", "labels": {"forge.dev/app": "hello"}},
                "spec": {"app": "hello", "commit": COMMIT1},
            },
        )
        if live is not None:
            d["status"] = {"phase": "Live", "liveTime": iso(live)}
            assert api.req("PUT", f"/api/v1/deployments/hello-{n}/status", json=d).status_code == 200
    assert metrics(api)["releases"] == [[T0 - 300, "hello-2"]]
    assert metrics(api, "1d")["releases"] == [[T0 - 3 * 3600, "hello-1"], [T0 - 300, "hello-2"]]
