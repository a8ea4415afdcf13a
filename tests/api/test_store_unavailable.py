"""Nothing hangs: when the store cannot be written within a few seconds, the API answers 503
(the webhook naming the delivery to redeliver) instead of holding the request.

The app opens its own store from ``config.store_url`` (as ``forge server`` does), so the
API's bounded wait is what is tested; the store is made unwritable the way it happens: another
process holding SQLite's write lock, or PostgreSQL stopped."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3  # noqa: TID251 - the test holds the store's lock as another process would
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from forge.api import create_app
from forge.api.app import STORE_WAIT_SECONDS
from forge.clock import SystemClock
from forge.config import Config
from forge.models import App, AppSpec, ObjectMeta
from forge.store.factory import open_store

TOKEN = "admin-test-token-0123456789"
SECRET = "webhook-test-secret"
GITHUB_PATIENCE = 10.0  # GitHub gives up on a delivery after 10 s


def push(after: str = "1" * 40) -> bytes:
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": after,
            "deleted": False,
            "head_commit": {"id": after, "message": "change"},
            "repository": {
                "name": "hello",
                "full_name": "acme/hello",
                "owner": {"login": "acme"},
                "default_branch": "main",
            },
            "sender": {"login": "acme"},
        }
    ).encode()


def deliver(client: falcon.testing.TestClient, delivery: str) -> falcon.testing.Result:
    raw = push()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "Content-Type": "application/json",
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest(),
    }
    return client.simulate_post("/api/v1/webhook/github", body=raw, headers=headers)


def client_for(tmp_path: Path, store_url: str) -> falcon.testing.TestClient:
    config = Config(data_dir=tmp_path, admin_token=TOKEN, webhook_secret=SECRET, store_url=store_url)
    seed = open_store(store_url)
    try:
        seed.create(App(metadata=ObjectMeta(name="hello"), spec=AppSpec(repo="acme/hello")))
    finally:
        seed.close()
    return falcon.testing.TestClient(create_app(config, None, SystemClock()))


def timed(fn: Any) -> tuple[Any, float]:
    """(result, seconds); the call runs in a thread so a hang fails the test instead of the run."""
    out: list[Any] = []
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    worker.join(timeout=GITHUB_PATIENCE * 3)
    assert out, "the request hung"
    return out[0], time.monotonic() - t0


def assert_503(client: falcon.testing.TestClient) -> None:
    r, took = timed(
        lambda: client.simulate_post(
            "/api/v1/apps",
            json={"metadata": {"name": "other"}, "spec": {"repo": "acme/other"}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    )
    assert r.status_code == 503, r.text
    assert r.json["error"] == "Unavailable"
    assert took < GITHUB_PATIENCE, f"answered after {took:.1f}s"
    r, took = timed(lambda: deliver(client, "delivery-7f3a"))
    assert r.status_code == 503, r.text
    assert "delivery-7f3a" in r.json["message"] and "redeliver" in r.json["message"]
    assert took < GITHUB_PATIENCE, f"webhook answered after {took:.1f}s"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'forge.db'}"


def test_sqlite_locked_by_another_process_answers_503(tmp_path: Path, sqlite_url: str) -> None:
    """Another process holds SQLite's write lock: an API write and a signed webhook are answered
    503 within the API's few seconds (the webhook's message names the delivery); once the lock
    is released the same delivery is accepted."""
    client = client_for(tmp_path, sqlite_url)
    holder = sqlite3.connect(str(tmp_path / "forge.db"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert STORE_WAIT_SECONDS < GITHUB_PATIENCE
        assert_503(client)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    r = deliver(client, "delivery-7f3a")
    assert r.status_code == 202, r.text


@pytest.fixture
def pg() -> Iterator[Any]:
    from tests.pgcluster import PgCluster

    try:
        cluster = PgCluster.start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_postgres_refusing_connections_answers_503(tmp_path: Path, pg: Any) -> None:
    """PostgreSQL stopped (connections refused): an API write and a signed webhook are answered
    503 within a few seconds, not held until the client gives up; the webhook names the delivery."""
    url = pg.url(pg.create_database())
    client = client_for(tmp_path, url)
    r = client.simulate_get("/api/v1/apps", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    pg.pg_ctl("stop")
    try:
        assert_503(client)
    finally:
        pg.pg_ctl("start")
