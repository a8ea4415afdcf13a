"""``forge restart APP``: restart the live release's Instances in place, one at a time.

No new release and no build: each Instance's ``spec.restartGeneration`` is raised and its agent
stops the process (with its stop_timeout) and starts it again at the same address and port; a
restart asked for is not a crash. The next Instance is restarted only once the previous one is
ready again (with one replica there is a short gap while it restarts).
"""

from __future__ import annotations

import click

from forge.cli import Ctx, cli, pass_ctx
from forge.cli.output import dig
from forge.clock import SystemClock
from forge.errors import Gone
from forge.models import LABEL_DEPLOYMENT


def is_back(inst: dict, generation: int) -> bool:
    """The agent acted on the restart (it reports the new generation) and the process is ready."""
    return (dig(inst, "status.observedGeneration") or 0) >= generation and bool(dig(inst, "status.ready"))


def wait_back(ctx: Ctx, name: str, selector: str, generation: int, timeout: float) -> dict:
    clock = SystemClock()
    deadline = clock.monotonic() + timeout
    inst = ctx.client.get("instances", name)
    rv = int(inst["metadata"]["resourceVersion"])
    while not is_back(inst, generation):
        left = deadline - clock.monotonic()
        if left <= 0:
            raise click.ClickException(
                f"{name} is not ready again after {timeout:g}s: {dig(inst, 'status.phase')} "
                f"{dig(inst, 'status.reason') or ''} {dig(inst, 'status.message') or ''}".rstrip()
                + " (forge ps / forge logs show more; the remaining Instances were not restarted)"
            )
        try:
            for type_, obj in ctx.client.watch(
                "instances", rv, selector, timeout_seconds=max(1, int(min(left, 30)))
            ):
                rv = int(obj.get("metadata", {}).get("resourceVersion", rv))
                if type_ != "BOOKMARK" and obj["metadata"]["name"] == name:
                    inst = obj
                    if is_back(inst, generation):
                        break
        except Gone:
            inst = ctx.client.get("instances", name)
            rv = int(inst["metadata"]["resourceVersion"])
    return inst


@cli.command()
@click.argument("name")
@click.option(
    "--timeout", type=float, default=120.0, show_default=True, help="Seconds each Instance may take."
)
@pass_ctx
def restart(ctx: Ctx, name: str, timeout: float) -> None:
    """Restart an app's live Instances in place, one at a time (no new release, no build)."""
    app = ctx.client.get("apps", name)
    live = dig(app, "status.liveDeployment")
    if not live:
        raise click.ClickException(f"{name} has no live release to restart (forge deploy {name} --ref main)")
    selector = f"{LABEL_DEPLOYMENT}={live}"
    insts, _ = ctx.client.list("instances", selector)
    running = sorted(
        (i for i in insts if dig(i, "spec.desired") == "Running" and not dig(i, "spec.oneshot")),
        key=lambda i: i["metadata"]["name"],
    )
    if not running:
        raise click.ClickException(f"{live} has no running Instances (forge ps {name})")
    for inst in running:
        iname = inst["metadata"]["name"]
        patched = ctx.client.patch(
            "instances",
            iname,
            {"spec": {"restartGeneration": (dig(inst, "spec.restartGeneration") or 0) + 1}},
        )
        click.echo(f"restarting {iname} …", err=True)
        wait_back(ctx, iname, selector, int(patched["metadata"]["generation"]), timeout)
        click.echo(f"{iname} restarted and ready")
    click.echo(f"{name}: {len(running)} Instance(s) of {live} restarted")
