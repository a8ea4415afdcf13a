"""``forge ps APP`` (an app's Instances) and ``forge open APP`` (its URL, in a browser if any)."""

from __future__ import annotations

import webbrowser

import click

from forge.cli import Ctx, cli, pass_ctx
from forge.cli.apps import instance_address
from forge.cli.output import age, dig, emit, table
from forge.cli.resources import OUTPUT
from forge.models import LABEL_APP


def state_of(inst: dict) -> str:
    phase = dig(inst, "status.phase") or "Pending"
    if phase == "Running" and not dig(inst, "status.ready"):
        phase = "Running (not ready)"
    reason = dig(inst, "status.reason")
    return f"{phase}: {reason}" if reason and phase != "Running" else phase


@cli.command()
@click.argument("name")
@click.option("--all", "show_all", is_flag=True, help="Also Instances stopped or being stopped.")
@OUTPUT
@pass_ctx
def ps(ctx: Ctx, name: str, show_all: bool, fmt: str) -> None:
    """An app's Instances: type, state, node, address, restarts, age."""
    ctx.client.get("apps", name)
    insts, _ = ctx.client.list("instances", f"{LABEL_APP}={name}")
    if not show_all:
        insts = [i for i in insts if dig(i, "spec.desired") == "Running"]
    insts.sort(key=lambda i: i["metadata"]["name"])

    def human() -> str:
        if not insts:
            return (
                f"{name} has no Instances running (forge deploy {name} --ref main, or forge scale {name} 1)"
            )
        return table(
            ["NAME", "TYPE", "STATE", "NODE", "ADDRESS", "RESTARTS", "AGE"],
            [
                [
                    i["metadata"]["name"],
                    dig(i, "spec.oneshot.type") or dig(i, "spec.process") or "web",
                    state_of(i),
                    dig(i, "spec.node"),
                    instance_address(i),
                    dig(i, "status.restarts", 0),
                    age(dig(i, "status.startedTime") or dig(i, "metadata.createdAt")),
                ]
                for i in insts
            ],
        )

    emit({"app": name, "instances": insts}, fmt, human)


@cli.command("open")
@click.argument("name")
@click.option("--no-browser", is_flag=True, help="Only print the URL.")
@pass_ctx
def open_app(ctx: Ctx, name: str, no_browser: bool) -> None:
    """Print an app's URL and open it in a browser when there is one."""
    app = ctx.client.get("apps", name)
    url = dig(app, "status.url")
    if not url:
        raise click.ClickException(
            f"{name} has no URL yet: it has no live release (forge status {name}; forge deploy {name} --ref main)"
        )
    click.echo(url)
    if no_browser:
        return
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        click.echo("(no browser found here: open the URL above yourself)", err=True)
        return
    if not browser.open(url):
        click.echo("(the browser did not open: open the URL above yourself)", err=True)
