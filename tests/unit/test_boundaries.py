"""The architecture's boundaries, checked on the source: who may import whom, and ruff is clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORGE = ROOT / "forge"
# The runtime frame and shared pure helpers every controller may use.
CONTROLLER_SHARED = {"base", "runtime", "cache", "leader", "manager", "deploystate"}


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def modules(package: str) -> list[Path]:
    return sorted((FORGE / package).rglob("*.py"))


@pytest.mark.parametrize("path", [p for p in modules("controllers") if p.stem not in CONTROLLER_SHARED],
                         ids=lambda p: p.stem)
def test_controllers_never_import_each_other(path: Path) -> None:
    """A controller module imports no other controller (they meet only in the store)."""
    others = {f"forge.controllers.{p.stem}" for p in modules("controllers") if p.stem not in CONTROLLER_SHARED | {path.stem}}
    assert not (imports(path) & others)


@pytest.mark.parametrize("package,banned", [
    ("api", "forge.controllers"),
    ("nodeagent", "forge.store"),
    ("nodeagent", "forge.controllers"),
    ("cli", "forge.controllers.rollout"),
], ids=["api-not-controllers", "agent-not-store", "agent-not-controllers", "cli-not-controllers"])
def test_package_boundaries(package: str, banned: str) -> None:
    """The API never imports controllers; the agent reaches the control plane over HTTP only."""
    offenders = [str(p.relative_to(ROOT)) for p in modules(package)
                 if any(i == banned or i.startswith(banned + ".") for i in imports(p))]
    assert offenders == []


def test_only_the_store_speaks_sql_and_only_cgroups_touch_cgroupfs() -> None:
    """sqlite3 is imported only under forge/store; /sys/fs/cgroup appears only under forge/cgroups."""
    sql = [p for p in FORGE.rglob("*.py") if "sqlite3" in imports(p) and "store" not in p.relative_to(FORGE).parts]
    cgroupfs = [p for p in FORGE.rglob("*.py") if "/sys/fs/cgroup" in p.read_text()
                and "cgroups" not in p.relative_to(FORGE).parts]
    assert sql == [] and cgroupfs == []


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed (make setup installs it)")
def test_ruff_is_clean() -> None:
    """ruff (the rules in pyproject.toml) finds nothing in forge, tests and bench."""
    ruff = Path(sys.executable).parent / "ruff"
    r = subprocess.run([str(ruff) if ruff.exists() else "ruff", "check", "forge", "tests", "bench"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:]
