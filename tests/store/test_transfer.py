"""``forge migrate-store``: sqlite → PostgreSQL → sqlite with every revision, uid, time, log line
and mark intact; a non-empty target is refused unless told; bad arguments are one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forge.appmetrics import RequestSample
from forge.clock import FakeClock, iso
from forge.models import Node, ObjectMeta
from forge.series import UsageSample
from forge.store.sqlite import SqliteStore
from forge.store.transfer import Snapshot
from tests.store.store_helpers import app

RECORDS = 1000


def forge(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    return subprocess.run([sys.executable, "-m", "forge", *args], capture_output=True, text=True, env=env, timeout=120)


def seeded(path: Path) -> SqliteStore:
    """1,000 live records after creates, spec and status updates, deletes and a compaction,
    plus log lines, marks and time-series points."""
    clock = FakeClock()
    store = SqliteStore(str(path), clock=clock)
    for i in range(RECORDS + 50):
        store.create(app(f"a{i:04d}", labels={"tier": str(i % 3)}) if i % 2 else Node(metadata=ObjectMeta(name=f"n{i:04d}")))
        clock.advance(0.25)
    for i in range(RECORDS, RECORDS + 50):
        store.delete("App" if i % 2 else "Node", f"{'a' if i % 2 else 'n'}{i:04d}")
    for name in ("a0001", "a0003"):
        obj = store.get("App", name)
        obj.spec.replicas = 3
        obj = store.update(obj)
        obj.status.phase = "Ready"
        store.update_status(obj)
    store.compact(keep=500)
    store.append_logs("a0001-1-0", "a0001", "a0001-1", "app", [(i, iso(1_900_000_000 + i), f"line {i}") for i in range(30)])
    store.mark("forge_deployments_total", "uid-1", "Live", 4.5)
    store.mark("forge_deployments_total", "uid-2", "Failed")
    sample = RequestSample("a0001", "a0001-1", 1_800_000_000, {"2xx": 3, "5xx": 1}, [1, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 2.5)
    store.add_requests("proxy/edge", "b1", [sample])
    store.add_usage("node/n1", "u1", [("a0001", UsageSample("a0001-1-0", 1_800_000_000, 0.25, 64 << 20, 1))])
    return store


def test_round_trip_keeps_every_revision(tmp_path: Path, pg_url: str) -> None:
    """sqlite → PostgreSQL → sqlite: 1,000 records, the change log, counters, log lines and marks
    come back identical, and the copies work as stores afterwards."""
    src = seeded(tmp_path / "src.db")
    before = Snapshot.of(src)
    src.close()
    assert len(before.records) == RECORDS and before.counters["compacted"] > 0

    out = forge("migrate-store", "--from", f"sqlite:///{tmp_path / 'src.db'}", "--to", pg_url)
    assert out.returncode == 0, out.stderr
    assert f"copied {RECORDS} records" in out.stdout and "verified" in out.stdout
    out = forge("migrate-store", "--from", pg_url, "--to", f"sqlite:///{tmp_path / 'back.db'}")
    assert out.returncode == 0, out.stderr

    back = SqliteStore(str(tmp_path / "back.db"))
    try:
        assert Snapshot.of(back).normalised() == before.normalised()
        obj = back.get("App", "a0003")
        assert (obj.spec.replicas, obj.status.phase, obj.metadata.generation) == (3, "Ready", 2)
        rev = back.revision()
        assert back.create(app("after")).metadata.resource_version == rev + 1
        assert [ln.line for ln in back.read_logs("a0001")][-1] == "line 29"
        assert back.tally("forge_deployments_total") == {"Failed": 1, "Live": 1}
        (point,) = back.read_requests("a0001", 10, 0, 2_000_000_000)
        assert point.by_class == {"2xx": 3, "5xx": 1} and point.sum_seconds == 2.5
        (use,) = back.read_usage("a0001", 300, 0, 2_000_000_000)
        assert (use.cpu, use.memory_max, use.restarts) == (0.25, 64 << 20, 1)
        assert not back.add_requests("proxy/edge", "b1", [])  # the batch ids came along
    finally:
        back.close()


def test_non_empty_target_is_refused_unless_overwrite(tmp_path: Path, pg_url: str) -> None:
    """A second copy into a store that holds data fails with one line; --overwrite replaces it."""
    store = SqliteStore(str(tmp_path / "src.db"))
    store.create(app("hello"))
    store.close()
    src = f"sqlite:///{tmp_path / 'src.db'}"
    assert forge("migrate-store", "--from", src, "--to", pg_url).returncode == 0
    again = forge("migrate-store", "--from", src, "--to", pg_url)
    assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert forge("migrate-store", "--from", src, "--to", pg_url, "--overwrite").returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--from", "sqlite:///nonexistent/forge.db", "--to", "sqlite:///x.db"], "does not exist"),
     (["--from", "sqlite:///a.db", "--to", "sqlite:///a.db"], "same store"),
     (["--from", "mysql://u:pw@h/db", "--to", "sqlite:///x.db"], "postgresql://")],
    ids=["missing-source", "same-store", "unknown-scheme"],
)
def test_bad_arguments_are_one_line_errors(args: list[str], message: str) -> None:
    """Bad URLs and paths are clear errors, never a traceback or a password."""
    out = forge("migrate-store", *args)
    assert out.returncode != 0 and message in out.stderr
    assert "Traceback" not in out.stderr and ":pw@" not in out.stderr
