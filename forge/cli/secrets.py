"""``forge secrets set|unset|list APP``: an App's encrypted env as first-class verbs.

The same records as ``forge env set K=V --secret`` (``Secret/APP``); names are shown, values
never (the API does not return them either).
"""

from __future__ import annotations

import click

from forge.cli import Ctx, pass_ctx
from forge.cli.apps import _parse_pairs, _set_secrets, secrets
from forge.cli.output import dig, emit, table
from forge.cli.resources import OUTPUT
from forge.errors import NotFound


def secret_names(ctx: Ctx, app: str) -> list[str]:
    """Names of the App's secrets (after checking the App exists)."""
    ctx.client.get("apps", app)
    try:
        return sorted(dig(ctx.client.get("secrets", app), "status.keys", []) or [])
    except NotFound:
        return []


@secrets.command("set")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True)
@pass_ctx
def secrets_set(ctx: Ctx, name: str, pairs: tuple[str, ...]) -> None:
    """Set secrets K=V on app NAME (stored encrypted; rolls out a new release)."""
    values = _parse_pairs(pairs)
    _set_secrets(ctx, name, dict(values))
    click.echo(f"set secret {', '.join(sorted(values))} on {name} (values are never shown)")


@secrets.command("unset")
@click.argument("name")
@click.argument("keys", nargs=-1, required=True)
@pass_ctx
def secrets_unset(ctx: Ctx, name: str, keys: tuple[str, ...]) -> None:
    """Remove secrets K … from app NAME."""
    have = secret_names(ctx, name)
    missing = [k for k in keys if k not in have]
    if missing:
        known = ", ".join(have) if have else "none"
        raise click.ClickException(f"{name} has no secret {', '.join(missing)} (its secrets: {known})")
    ctx.client.patch("secrets", name, {"spec": {"data": {k: None for k in keys}}})
    click.echo(f"unset secret {', '.join(keys)} on {name}")


@secrets.command("list")
@click.argument("name")
@OUTPUT
@pass_ctx
def secrets_list(ctx: Ctx, name: str, fmt: str) -> None:
    """Names of app NAME's secrets (values are never shown). Also: forge secrets NAME."""
    names = secret_names(ctx, name)
    emit(
        {"app": name, "secrets": names},
        fmt,
        lambda: (
            table(["SECRET"], [[k] for k in names])
            if names
            else f"{name} has no secrets (forge secrets set {name} KEY=VALUE)"
        ),
    )
