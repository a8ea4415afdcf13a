"""Conformance: per-app time series — additive points at two resolutions, batches counted once,
bounded by age, the same through two handles on one database (two API hosts)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import falcon.testing
import pytest

from forge.api import create_app
from forge.appmetrics import RequestSample, bucket_index
from forge.clock import FakeClock
from forge.config import Config
from forge.series import BATCH_KEEP_SECONDS, FINE_KEEP_SECONDS, ROLLUP_KEEP_SECONDS, UsageSample, rollup_of
from tests.store.store_helpers import Backend, app

T0 = 1_800_000_000


def req(at: int, ok: int = 1, err: int = 0, app: str = "hello", release: str = "hello-1") -> RequestSample:
    s = RequestSample(app, release, at)
    for _ in range(ok):
        s.observe(200, 0.02)
    for _ in range(err):
        s.observe(500, 1.5)
    return s


def test_points_add_up_in_fine_points_and_rollups(backend: Backend) -> None:
    """Samples for one key add; each lands in its 10 s point and its 5-minute rollup."""
    store = backend.open(FakeClock(T0 + 5))
    try:
        assert store.add_requests("proxy/a", "1", [req(T0 - 10, 2), req(T0 - 10, 1, 1), req(T0 - 300, 4)])
        assert not store.add_requests("proxy/a", "1", [req(T0 - 10, 100)])  # the same batch again
        fine = store.read_requests("hello", 10, T0 - 600, T0)
        assert [(p.at, p.total, p.by_class) for p in fine] == [
            (T0 - 300, 4, {"2xx": 4}),
            (T0 - 10, 4, {"2xx": 3, "5xx": 1}),
        ]
        assert fine[1].buckets[bucket_index(1.5)] == 1 and abs(fine[1].sum_seconds - 1.56) < 1e-9
        roll = store.read_requests("hello", 300, T0 - 600, T0)
        assert [(p.at, p.total) for p in roll] == [(T0 - 300, 8)]
        store.add_usage("node/n1", "u", [("hello", UsageSample("hello-1-0", T0 - 10, 0.5, 100))])
        store.add_usage("node/n1", "v", [("hello", UsageSample("hello-1-0", T0 - 10, None, 300, 2))])
        (u,) = store.read_usage("hello", 10, T0 - 600, T0)
        assert (u.cpu, u.memory, u.memory_max, u.restarts, u.n) == (0.5, 200.0, 300, 2, 2)
        store.add_usage("node/n2", "w", [("hello", UsageSample("hello-1-1", T0 - 10, None, 1000, 1))])
        store.add_usage("node/n2", "x", [("hello", UsageSample("hello-1-1", T0 - 20, None, 10))])
        (a, b) = store.read_app_usage("hello", 10, T0 - 600, T0)  # every Instance together, per point
        assert (a.at, a.cpu, a.memory, a.memory_max, a.restarts) == (T0 - 20, None, 10.0, 10, 0)
        assert (b.at, b.cpu, b.memory, b.memory_max, b.restarts) == (T0 - 10, 0.5, 1200.0, 1300, 3)
        (r,) = store.read_app_usage("hello", 300, T0 - 600, T0)
        assert (r.cpu, r.memory, r.memory_max, r.restarts) == (0.5, 200.0 + 505.0, 1300, 3)
        assert store.delete_app_series("hello") == 8  # 3 request rows, 2 usage rows
        assert store.read_requests("hello", 300, 0, T0) == [] and store.read_usage("hello", 10, 0, T0) == []
    finally:
        store.close()


def test_retention_bounds_each_resolution(backend: Backend) -> None:
    """Pruning keeps 10 s points 48 h and rollups 30 days, and forgets batch ids with the fine points."""
    clock = FakeClock(T0 + 5)
    store = backend.open(clock)
    try:
        store.add_requests("proxy/a", "1", [req(T0 - 10)])
        store.add_usage("node/n1", "1", [("hello", UsageSample("hello-1-0", T0 - 10, 0.1, 1))])
        clock.advance(FINE_KEEP_SECONDS + 20)
        assert store.prune_series() == 4  # two fine points, two batch ids
        assert (
            store.read_requests("hello", 10, 0, T0) == []
            and len(store.read_requests("hello", 300, 0, T0)) == 1
        )
        assert len(store.read_usage("hello", 300, 0, T0)) == 1
        assert store.add_requests("proxy/a", "1", [])  # its id was forgotten
        clock.advance(ROLLUP_KEEP_SECONDS)
        store.prune_series()
        assert store.read_requests("hello", 300, 0, T0) == [] and store.read_usage("hello", 300, 0, T0) == []
    finally:
        store.close()


def test_two_hosts_adding_at_once_count_everything_once(backend: Backend) -> None:
    """Two handles (two API hosts) add 2 × 20 batches for the same keys concurrently, each batch
    also retried on the other host: every request is counted exactly once."""
    a, b = backend.open(FakeClock(T0 + 5)), backend.open(FakeClock(T0 + 5))
    try:
        errors: list[BaseException] = []

        def send(first: object, second: object, proxy: str) -> None:
            try:
                for i in range(20):
                    batch = [req(T0 - 10 * (1 + i % 3), 1), req(T0 - 10, 0, 1)]
                    first.add_requests(f"proxy/{proxy}", str(i), batch)  # type: ignore[attr-defined]
                    second.add_requests(f"proxy/{proxy}", str(i), batch)  # type: ignore[attr-defined]
            except BaseException as exc:  # noqa: BLE001 — reported by the test thread
                errors.append(exc)

        threads = [
            threading.Thread(target=send, args=(a, b, "p1")),
            threading.Thread(target=send, args=(b, a, "p2")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        for store in (a, b):
            fine = store.read_requests("hello", 10, 0, T0)
            assert sum(p.total for p in fine) == 80
            assert sum(p.by_class.get("5xx", 0) for p in fine) == 40
            assert sum(p.total for p in store.read_requests("hello", 300, 0, T0)) == 80
    finally:
        a.close()
        b.close()


def test_two_api_hosts_on_one_store_answer_alike(backend: Backend, tmp_path: Path) -> None:
    """A proxy's batch taken by host A and retried on host B counts once; a node's usage sent to
    B; both hosts answer GET /apps/APP/metrics with the same numbers."""
    clock = FakeClock(T0 + 5)
    stores = [backend.open(clock), backend.open(clock)]
    config = Config(data_dir=tmp_path, admin_token="t0ken-for-two-hosts", domain="forge.test")
    hosts = [falcon.testing.TestClient(create_app(config, s, clock)) for s in stores]
    auth = {"Authorization": "Bearer t0ken-for-two-hosts"}
    try:
        stores[0].create(app("hello"))
        body = {"proxy": "edge-1", "id": "b1", "samples": [req(T0 - 10, 3, 1).to_json()]}
        assert hosts[0].simulate_post("/api/v1/metrics/requests", json=body, headers=auth).json["duplicate"] is False
        assert hosts[1].simulate_post("/api/v1/metrics/requests", json=body, headers=auth).json["duplicate"] is True
        body["proxy"], body["samples"] = "edge-2", [req(T0 - 10, 2).to_json()]
        hosts[1].simulate_post("/api/v1/metrics/requests", json=body, headers=auth)
        answers = [h.simulate_get("/api/v1/apps/hello/metrics", params={"since": "10m"}, headers=auth).json for h in hosts]
        assert answers[0] == answers[1]
        assert answers[0]["requests"]["total"] == 6 and answers[0]["requests"]["byClass"]["5xx"] == 1
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("seed", range(4))
def test_any_sequence_of_batches_retries_and_prunes_keeps_rollups_equal_to_their_points(
    backend: Backend, seed: int
) -> None:
    """Seeded sequences of new batches (two proxies, samples up to 3 days late), retries of
    earlier ones and clock steps with pruning: every request is counted once, and every
    rollup the fine points still cover equals their sum."""
    rnd = random.Random(seed)
    clock = FakeClock(T0)
    store = backend.open(clock)
    sent: dict[tuple[str, str], tuple[int, list[RequestSample]]] = {}  # id → (claimed at, samples)
    counted: list[RequestSample] = []
    try:
        for step in range(80):
            op = rnd.random()
            if op < 0.6 or not sent:
                now = int(clock.now())
                batch = [
                    req(now - now % 10 - 10 * rnd.randrange(0, 3 * 8640), rnd.randrange(0, 5), rnd.randrange(0, 2),
                        release=rnd.choice(["hello-1", "hello-2"]))
                    for _ in range(rnd.randrange(1, 6))
                ]
                key = (rnd.choice(["proxy/a", "proxy/b"]), f"s{seed}-{step}")
                assert store.add_requests(key[0], key[1], batch)
                sent[key] = (now, batch)
                counted += batch
            elif op < 0.85:
                key = rnd.choice(sorted(sent))
                assert not store.add_requests(key[0], key[1], sent[key][1])  # remembered: not counted again
            else:
                clock.advance(rnd.choice([60, 3600, 20 * 3600]))
                store.prune_series()
                # Ids are remembered 48 h: only those may be retried and expected to count once.
                sent = {k: v for k, v in sent.items() if v[0] >= clock.now() - BATCH_KEEP_SECONDS}
        now = int(clock.now())
        fine = store.read_requests("hello", 10, 0, now + 600)
        roll = store.read_requests("hello", 300, 0, now + 600)
        fine_floor = now - FINE_KEEP_SECONDS
        want_roll = sum(s.total for s in counted if rollup_of(s.at) >= now - ROLLUP_KEEP_SECONDS)
        assert sum(p.total for p in roll) == want_roll
        for r in roll:
            if r.at >= fine_floor:  # fully covered by fine points still kept
                inside = [p for p in fine if r.at <= p.at < r.at + 300 and p.release == r.release]
                assert r.total == sum(p.total for p in inside), r
                assert list(r.buckets) == [sum(col) for col in zip(*(p.buckets for p in inside), strict=True)]
    finally:
        store.close()
