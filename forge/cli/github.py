"""``forge github connect``: create Forge's GitHub App with GitHub's manifest flow (one click on
GitHub), then have the server exchange the code for the App's id, key and webhook secret and
keep them sealed (``forge.github.connect``). ``forge github app`` shows what is connected."""

from __future__ import annotations

import os
import socket

import click

from forge.cli import Ctx, api_url, cli, pass_ctx
from forge.errors import Unavailable
from forge.github.connect import DEFAULT_GITHUB_URL, CallbackServer, build_manifest, new_app_url


@cli.group()
def github() -> None:
    """Connect Forge to GitHub as a GitHub App."""


def _show(app: dict) -> None:
    click.echo(
        f"GitHub App {app.get('slug') or '?'} (id {app.get('appId')}) owned by {app.get('owner') or '?'}"
    )
    if app.get("htmlUrl"):
        click.echo(f"install it on your repositories: {app['htmlUrl']}/installations/new")


@github.command()
@click.option("--name", default=None, help="The App's name on GitHub (default forge-HOST).")
@click.option("--org", default=None, help="Create the App under this organization instead of your account.")
@click.option(
    "--url",
    "public_url",
    default=None,
    help="Forge's public URL, where GitHub sends webhooks (default FORGE_PUBLIC_URL, else FORGE_URL).",
)
@click.option(
    "--github-url",
    envvar="FORGE_GITHUB_URL",
    default=DEFAULT_GITHUB_URL,
    show_default=True,
    help="GitHub's web address (a GitHub Enterprise Server's, for one).",
)
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    help="Where this command waits for GitHub's redirect.",
)
@click.option(
    "--code", default=None, help="Exchange a manifest code obtained elsewhere (skips the browser step)."
)
@click.option("--timeout", type=click.FloatRange(10, 3600), default=900, show_default=True)
@pass_ctx
def connect(
    ctx: Ctx,
    name: str | None,
    org: str | None,
    public_url: str | None,
    github_url: str,
    listen: str,
    code: str | None,
    timeout: float,
) -> None:
    """Create the App on GitHub (one click) and store its key and webhook secret in Forge."""
    if code is None:
        base = public_url or os.environ.get("FORGE_PUBLIC_URL") or api_url()
        app_name = name or f"forge-{socket.gethostname().split('.')[0]}"[:34]
        server = CallbackServer(
            listen,
            lambda redirect: build_manifest(app_name, base, redirect),
            lambda state: new_app_url(github_url, org, state),
        )
        try:
            click.echo(f"Open {server.url}/ in a browser on this machine and confirm on GitHub.")
            code = server.wait(timeout)
        finally:
            server.close()
        if code is None:
            raise Unavailable(server.error or f"GitHub did not send the browser back within {timeout:.0f}s")
    app = ctx.client.request("POST", "/api/v1/github/connect", json={"code": code})
    _show(app)
    click.echo("restart Forge (forge up, or forge server and forge controllers) to act as the App")


@github.command("app")
@pass_ctx
def show_app(ctx: Ctx) -> None:
    """Show the connected GitHub App."""
    _show(ctx.client.request("GET", "/api/v1/github/app"))
