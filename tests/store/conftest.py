"""Store conformance fixtures: every backend runs the same tests through ``store``/``backend``.

A new backend adds its name to ``BACKENDS`` and a branch in ``Backend.open``. PostgreSQL runs
on one throwaway cluster per test session (``tests/pgcluster.py``), a fresh database per test;
when the server binaries are missing its tests fail (never skip) telling to run ``make setup``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.clock import FakeClock
from forge.store.base import Store
from tests.pgcluster import PgCluster
from tests.store.store_helpers import Backend

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    try:
        cluster = PgCluster.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a PostgreSQL test cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database on the session cluster."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        return Backend("postgresql", url, tmp_path / "unused.db")
    path = tmp_path / "forge.db"
    return Backend(request.param, f"sqlite:///{path}", path)


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = backend.open()
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked_store(backend: Backend, clock: FakeClock) -> Iterator[Store]:
    s = backend.open(clock)
    yield s
    s.close()
