"""The manifest crosses module boundaries typed: stored as JSON, read back as ``Manifest`` at the
store boundary, and records written before it was typed still load (a tolerant read, no
migration: ``{}`` — the old "no manifest" of an Instance — reads as None, and every manifest an
older Forge stored is a dump of an older ``Manifest``, whose fields all still exist)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from forge.clock import FakeClock
from forge.instancespec import instance_spec
from forge.manifest import parse_manifest
from forge.models import (
    App,
    AppSpec,
    Deployment,
    DeploymentConfig,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    Manifest,
    ObjectMeta,
)
from forge.nodeagent.spec import RunSpec
from forge.store.sqlite import SqliteStore

FORGE_YAML = """
run: {command: gunicorn app:app, stop_timeout: 3s}
build: {commands: [pip install -r requirements.txt], timeout: 5m}
resources: {memory: 128M, cpu: 0.25}
health: {path: /up, interval: 2s, timeout: 1s, min_ready: 4s}
env: {A: repo}
processes:
  worker: {command: python worker.py, replicas: 2, resources: {memory: 64M}}
cron:
  - {name: nightly, schedule: "0 3 * * *", command: python report.py}
release: {command: python manage.py migrate, timeout: 2m}
"""
COMMIT = "c" * 40

# What an older Forge stored (a dump of its Manifest, before build.detected, run.stopTimeoutSeconds,
# resources.disk, health.startPeriodSeconds, storage and processes existed).
OLD_STATUS_MANIFEST = {
    "run": {"command": "python3 app.py", "port": 8000},
    "build": {"commands": ["true"], "timeoutSeconds": 600.0},
    "resources": {"memory": 268435456, "cpu": 0.5, "pids": 512},
    "health": {
        "path": "/",
        "intervalSeconds": 10.0,
        "timeoutSeconds": 3.0,
        "retries": 3,
        "minReadySeconds": 10.0,
    },
    "env": {},
    "cron": [],
}


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(str(tmp_path / "forge.db"), clock=FakeClock())
    yield s  # type: ignore[misc]
    s.close()


def rewrite(db: Path, kind: str, name: str, edit) -> None:  # type: ignore[no-untyped-def]
    """Put a record's stored JSON into an older shape, as an older Forge left it."""
    con = sqlite3.connect(db)
    (data,) = con.execute("SELECT data FROM records WHERE kind = ? AND name = ?", (kind, name)).fetchone()
    obj = json.loads(data)
    edit(obj)
    con.execute("UPDATE records SET data = ? WHERE kind = ? AND name = ?", (json.dumps(obj), kind, name))
    con.commit()
    con.close()


def stored(db: Path, kind: str, name: str) -> dict:  # type: ignore[type-arg]
    con = sqlite3.connect(db)
    (data,) = con.execute("SELECT data FROM records WHERE kind = ? AND name = ?", (kind, name)).fetchone()
    con.close()
    return json.loads(data)  # type: ignore[no-any-return]


def test_a_manifest_is_stored_as_json_and_read_typed(store: SqliteStore, tmp_path: Path) -> None:
    """Deployment.status.manifest and the Instance spec built from it go in as JSON (camelCase,
    what the API serves) and come out of the store as the same Manifest."""
    m = parse_manifest(FORGE_YAML)
    dep = store.create(
        Deployment(metadata=ObjectMeta(name="hello-1"), spec=DeploymentSpec(app="hello", commit=COMMIT))
    )
    dep.status.manifest = m
    store.update_status(dep)
    raw = stored(tmp_path / "forge.db", "Deployment", "hello-1")["status"]["manifest"]
    assert raw["health"]["minReadySeconds"] == 4.0 and raw["processes"]["worker"]["replicas"] == 2
    got = store.get(Deployment, "hello-1")
    assert isinstance(got.status.manifest, Manifest) and got.status.manifest == m
    app = App(metadata=ObjectMeta(name="hello"), spec=AppSpec(repo="acme/hello"))
    spec = instance_spec(app, got, DeploymentConfig(replicas=1), None, 0, "worker")
    assert spec.resources.memory == 64 * 2**20 and spec.resources.cpu == 0.25 and spec.env == {"A": "repo"}
    inst = store.create(Instance(metadata=ObjectMeta(name="hello-1-worker-0"), spec=spec))
    back = store.get(Instance, inst.metadata.name)
    assert back.spec.manifest == m
    run = RunSpec.for_instance(back.spec)
    assert (run.command, run.kind, run.stop_timeout, run.build_timeout) == (
        "python worker.py",
        "worker",
        3.0,
        300.0,
    )
    web = RunSpec.for_instance(back.spec.model_copy(update={"process": "web"}))
    assert (web.command, web.health.path, web.health.interval_seconds) == ("gunicorn app:app", "/up", 2.0)


def test_records_from_before_the_typed_manifest_still_load(store: SqliteStore, tmp_path: Path) -> None:
    """An older Deployment's manifest (fewer fields) loads with today's defaults; an older
    Instance's ``"manifest": {}`` loads as no manifest — neither makes the record unreadable."""
    db = tmp_path / "forge.db"
    store.create(Deployment(metadata=ObjectMeta(name="old-1"), spec=DeploymentSpec(app="old", commit=COMMIT)))
    rewrite(
        db, "Deployment", "old-1", lambda o: o.setdefault("status", {}).update(manifest=OLD_STATUS_MANIFEST)
    )
    store.create(
        Instance(
            metadata=ObjectMeta(name="old-1-0"),
            spec=InstanceSpec(app="old", deployment="old-1", repo="acme/old", commit=COMMIT),
        )
    )
    rewrite(db, "Instance", "old-1-0", lambda o: o["spec"].update(manifest={}))
    dep = store.get(Deployment, "old-1")
    assert dep.status.manifest is not None
    assert dep.status.manifest.run.stop_timeout_seconds == 10.0 and dep.status.manifest.processes == {}
    assert dep.status.manifest.health.min_ready_seconds == 10.0
    assert store.get(Instance, "old-1-0").spec.manifest is None
    assert [i.metadata.name for i in store.list(Instance)[0]] == ["old-1-0"]
