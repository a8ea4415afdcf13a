"""The proxy's tests: a real SqliteStore on the system clock (a real API streams its watches from
it), the controllers' record factories, and the install's kernel objects removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.clock import SystemClock
from forge.store.base import Store
from tests.controllers.conftest import (  # noqa: F401 - fixtures
    config,
    make_app,
    make_deployment,
    make_instance,
    make_node,
)


@pytest.fixture
def clock() -> SystemClock:
    return SystemClock()


@pytest.fixture
def store(tmp_path: Path, clock: SystemClock) -> Iterator[Store]:
    from forge.store.sqlite import SqliteStore

    s = SqliteStore(str(tmp_path / "forge.db"), clock=clock)
    yield s
    s.close()
