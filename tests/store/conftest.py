"""Store conformance fixtures: every backend runs the same tests through ``store``/``backend``.

A new backend adds its name to ``BACKENDS`` and a branch in ``Backend.open``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.clock import FakeClock
from forge.store.base import Store
from tests.store.store_helpers import Backend

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
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


