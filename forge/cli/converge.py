"""``--wait`` for App edits (scale, env, domains): follow the App until its live release runs the
spec the edit wrote.

Converged means: the rollout controller has seen the App's generation, no release is in flight,
the live release applied the App's env, domains and counts, and every slot of it has a ready
Instance (a scale-down's surplus has stopped). A release made for the edit that fails ends the
wait with its reason. The CLI wakes on the store's changes (a watch on the App's Instances,
bounded), re-reading the records after each.
"""

from __future__ import annotations

from typing import Any, Final

import click

from forge.cli.output import dig
from forge.clock import SystemClock
from forge.errors import ForgeError, Gone
from forge.models import LABEL_APP, deployment_number
from forge.textsafe import printable_text

TERMINAL: Final[frozenset[str]] = frozenset({"Failed", "Cancelled", "Superseded"})
WAIT_SECONDS: Final[float] = 600.0
WATCH_SLICE: Final[int] = 5


def _counts(spec: dict[str, Any]) -> tuple[int, dict[str, int]]:
    return int(spec.get("replicas", 1)), dict(spec.get("processes") or {})


def verdict(
    app: dict[str, Any], deps: list[dict[str, Any]], insts: list[dict[str, Any]], after: int
) -> str | None:
    """None while converging; "" when the live release runs the App's spec; else why it failed.

    ``after``: the release number the App had before the edit (a newer release is the edit's)."""
    if int(dig(app, "status.observedGeneration") or 0) < int(dig(app, "metadata.generation") or 0):
        return None
    deps = sorted(deps, key=lambda d: deployment_number(d["metadata"]["name"]))
    mine = [d for d in deps if deployment_number(d["metadata"]["name"]) > after]
    failed = [d for d in mine if dig(d, "status.phase") == "Failed"]
    if failed and failed[-1] is mine[-1]:
        d = failed[-1]
        return f"{d['metadata']['name']} failed: {dig(d, 'status.reason')}: {printable_text(str(dig(d, 'status.message')))}"
    if any(dig(d, "status.phase") not in TERMINAL | {"Live"} for d in deps):
        return None
    live = next((d for d in deps if d["metadata"]["name"] == dig(app, "status.liveDeployment")), None)
    cfg = dig(live, "status.appliedConfig") if live else None
    if live is None or cfg is None:
        return None
    spec = app["spec"]
    if cfg.get("env", {}) != spec.get("env", {}) or sorted(cfg.get("domains", [])) != sorted(
        spec.get("domains", [])
    ):
        return None
    replicas, procs = _counts(spec)
    if int(cfg.get("replicas", 1)) != replicas or any(
        (cfg.get("processes") or {}).get(k) != v for k, v in procs.items()
    ):
        return None
    name = live["metadata"]["name"]
    running = [
        i
        for i in insts
        if dig(i, "spec.deployment") == name
        and dig(i, "spec.desired") == "Running"
        and not dig(i, "spec.oneshot")
    ]
    web = [i for i in running if (dig(i, "spec.process") or "web") == "web"]
    if any(dig(i, "spec.unroutedTime") for i in running) or len(web) != replicas:
        return None
    if not all(dig(i, "status.ready") or (dig(i, "spec.process") or "web") != "web" for i in running):
        return None
    return ""


def wait_converged(client: Any, app_name: str, after: int, timeout: float = WAIT_SECONDS) -> None:
    """Block until ``verdict`` is settled; exit 1 (with the reason) when the edit's release failed."""
    selector = f"{LABEL_APP}={app_name}"
    clock = SystemClock()
    deadline = clock.monotonic() + timeout
    while True:
        app = client.get("apps", app_name)
        deps, _ = client.list("deployments", selector)
        insts, rv = client.list("instances", selector)
        result = verdict(app, deps, insts, after)
        if result == "":
            live = dig(app, "status.liveDeployment")
            click.echo(f"{app_name}: {live} runs the new config", err=True)
            return
        if result is not None:
            click.echo(f"{app_name}: {result}", err=True)
            raise SystemExit(1)
        if clock.monotonic() >= deadline:
            click.echo(f"{app_name}: not converged after {timeout:.0f}s", err=True)
            raise SystemExit(1)
        try:
            for type_, _obj in client.watch("instances", rv, selector, timeout_seconds=WATCH_SLICE):
                if type_ != "BOOKMARK":
                    break
        except (Gone, ForgeError):
            pass


def newest_number(client: Any, app_name: str) -> int:
    deps, _ = client.list("deployments", f"{LABEL_APP}={app_name}")
    return max((deployment_number(d["metadata"]["name"]) for d in deps), default=0)
