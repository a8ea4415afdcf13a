"""``--wait`` on App edits: the pure verdict over records as the API returns them."""

from __future__ import annotations

from typing import Any

import pytest

from forge.cli.apps import config_differences
from forge.cli.converge import verdict


def app(replicas: int = 2, env: dict[str, str] | None = None, generation: int = 3, observed: int = 3) -> dict[str, Any]:
    return {"metadata": {"name": "shop", "generation": generation},
            "spec": {"replicas": replicas, "env": env or {}, "domains": []},
            "status": {"observedGeneration": observed, "liveDeployment": "shop-2"}}


def dep(n: int, phase: str, replicas: int = 2, env: dict[str, str] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"shop-{n}"},
            "status": {"phase": phase, "appliedConfig": {"replicas": replicas, "env": env or {}, "domains": []},
                       **status}}


def inst(i: int, ready: bool = True, unrouted: bool = False, dep_name: str = "shop-2") -> dict[str, Any]:
    return {"metadata": {"name": f"{dep_name}-{i}"},
            "spec": {"deployment": dep_name, "desired": "Running", **({"unroutedTime": "t"} if unrouted else {})},
            "status": {"ready": ready}}


@pytest.mark.parametrize(("a", "deps", "insts", "want"), [
    (app(), [dep(1, "Superseded"), dep(2, "Live")], [inst(0), inst(1)], ""),
    (app(observed=2), [dep(2, "Live")], [inst(0), inst(1)], None),
    (app(), [dep(2, "Live", replicas=1)], [inst(0)], None),
    (app(), [dep(2, "Live")], [inst(0), inst(1, ready=False)], None),
    (app(replicas=1), [dep(2, "Live", replicas=1)], [inst(0), inst(1, unrouted=True)], None),
    (app(env={"A": "1"}), [dep(2, "Live"), dep(3, "Building", env={"A": "1"})], [inst(0), inst(1)], None),
    (app(env={"A": "1"}), [dep(2, "Live"), dep(3, "Failed", reason="BuildFailed", message="x\ny")],
     [inst(0), inst(1)], "shop-3 failed: BuildFailed: x\n    y"),
], ids=["converged", "not-observed", "counts-not-applied", "not-ready", "surplus-still-draining",
        "release-in-flight", "edit-release-failed"])
def test_verdict(a: dict, deps: list[dict], insts: list[dict], want: str | None) -> None:
    """Converged only when the live release runs the App's spec with every slot ready; a failed
    release made for the edit ends the wait with its reason (as text)."""
    assert verdict(a, deps, insts, after=2) == want


def test_config_differences_names_what_the_live_release_does_not_run() -> None:
    """forge status says when the App's spec differs from the live release's config."""
    spec = {"replicas": 2, "processes": {"worker": 3}, "env": {"A": "1", "B": "2"}, "domains": ["x.example"]}
    applied = {"replicas": 1, "env": {"A": "1"}, "domains": []}
    got = config_differences(spec, applied, {"web": 1, "worker": 1})
    assert got == ["web=2 (runs 1)", "worker=3 (runs 1)", "env B", "domains"]
    assert config_differences({"replicas": 1, "env": {}}, {"replicas": 1}, {"web": 1}) == []
