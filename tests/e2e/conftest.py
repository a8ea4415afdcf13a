"""Fixtures of the end-to-end tests: a real ``forge up`` per module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Forge, running_forge


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (make setup)")
    with running_forge("forge-e2e-", FORGE_MODE="dev") as f:
        yield f
