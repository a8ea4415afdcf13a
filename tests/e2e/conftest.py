"""Fixtures of the end-to-end tests: a real ``forge up`` per module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ADMIN_TOKEN, WEBHOOK_SECRET, Forge, free_port


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (make setup)")
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-USER to 0700 whenever a session
    # starts, which would lock the apps' own uids out of their release dirs mid-run.
    root = Path(tempfile.mkdtemp(prefix="forge-e2e-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(FORGE_ADMIN_TOKEN=ADMIN_TOKEN, FORGE_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
               FORGE_GIT_URL_TEMPLATE=f"file://{root}/remotes/{{full_name}}.git", FORGE_MODE="dev",
               PYTHONUNBUFFERED="1")
    f = Forge(root=root, data=root / "data", api=f"http://127.0.0.1:{free_port()}", http=f"http://127.0.0.1:{free_port()}",
              env=env)
    f.start()
    try:
        yield f
    finally:
        f.stop()
        shutil.rmtree(root, ignore_errors=True)
