"""``forge up`` child command lines: the controllers serve their metrics where ``forge up`` says."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from forge.config import Config
from forge.up import Supervisor


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy missing (make setup installs it)")
@pytest.mark.parametrize(("listen", "expected"), [("127.0.0.1:9109", ["--metrics-listen", "127.0.0.1:9109"]), (None, [])],
                         ids=["default", "none"])
def test_controllers_child_gets_metrics_listen(tmp_path: Path, listen: str | None, expected: list[str]) -> None:
    """build_children passes --metrics-listen to forge controllers exactly when one is configured."""
    cfg = Config(data_dir=tmp_path / "data", admin_token="t" * 32)
    sup = Supervisor(cfg, metrics_listen="127.0.0.1:9108", node_name="n1", env={}, controllers_metrics_listen=listen)
    sup.prepare()
    children = {c.name: c for c in sup.build_children({})}
    argv = children["controllers"].argv
    got = argv[argv.index("--metrics-listen"):argv.index("--metrics-listen") + 2] if "--metrics-listen" in argv else []
    assert got == expected
    assert "--metrics-listen" not in children["api"].argv
