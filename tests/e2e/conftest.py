"""Fixtures of the end-to-end tests: a real ``forge up`` per module."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Forge, new_forge


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (make setup)")
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-USER to 0700 whenever a session
    # starts, which would lock the apps' own uids out of their release dirs mid-run.
    root = Path(tempfile.mkdtemp(prefix="forge-e2e-"))
    f = new_forge(root, FORGE_MODE="dev")
    f.start()
    try:
        yield f
    finally:
        f.stop()
        shutil.rmtree(root, ignore_errors=True)
