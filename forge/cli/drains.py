"""``forge drains add|remove APP URL`` and ``forge drains APP``: where an app's logs are sent.

URLs: ``syslog+tcp://HOST:PORT``, ``syslog+tls://HOST:PORT`` (RFC 5424, octet-counted; TLS
verified against the system's CAs, or the PEM file in the agents' ``FORGE_DRAIN_CA_FILE``) and
``https://…`` (Heroku-style batches). A URL's credentials are never printed: listings show it
masked (``https://user:***@host/path?token=***``).
"""

from __future__ import annotations

import sys

import click

from forge.cli import Ctx, ListByDefault, cli, pass_ctx
from forge.cli.output import emit, table
from forge.cli.resources import OUTPUT
from forge.drains import drain_id, mask_url
from forge.errors import NotFound


def _url(arg: str) -> str:
    if arg != "-":
        return arg
    text = str(sys.stdin.readline()).strip()
    if not text:
        raise click.BadParameter("no URL on stdin", param_hint="URL")
    return text


@cli.group(cls=ListByDefault)
def drains() -> None:
    """Log drains of an app (syslog over TCP or TLS, HTTPS)."""


@drains.command("add")
@click.argument("name")
@click.argument("url")
@pass_ctx
def drains_add(ctx: Ctx, name: str, url: str) -> None:
    """Send app NAME's log lines to URL too (URL ``-``: read it from stdin, keeping a URL with
    credentials out of the process list)."""
    url = _url(url)
    out = ctx.client.request("POST", f"/api/v1/apps/{name}/drains", json={"url": url})
    click.echo(f"{name} drains to {out.get('url') or mask_url(url)} (drain {out.get('id')})")


@drains.command("remove")
@click.argument("name")
@click.argument("url")
@pass_ctx
def drains_remove(ctx: Ctx, name: str, url: str) -> None:
    """Stop sending app NAME's log lines to URL (the URL, ``-`` for stdin, or the drain's id)."""
    url = _url(url)
    ident = url if "://" not in url else drain_id(name, url)
    try:
        ctx.client.request("DELETE", f"/api/v1/apps/{name}/drains/{ident}")
    except NotFound:
        raise click.ClickException(f"{name} has no drain {mask_url(url) if '://' in url else url}") from None
    click.echo(f"{name} no longer drains to {mask_url(url) if '://' in url else 'drain ' + url}")


@drains.command("list")
@click.argument("name")
@OUTPUT
@pass_ctx
def drains_list(ctx: Ctx, name: str, fmt: str) -> None:
    """App NAME's drains with what each delivered and dropped. Also: forge drains NAME."""
    items = ctx.client.request("GET", f"/api/v1/apps/{name}/drains").get("items") or []
    rows = [
        [
            d.get("id"),
            d.get("url"),
            d.get("delivered", 0),
            f"{d.get('dropped', 0)}" + (f" (+{d['droppedBytes']} B)" if d.get("droppedBytes") else ""),
            d.get("pendingBytes", 0),
            d.get("lastError") or "",
        ]
        for d in items
    ]
    emit(
        {"app": name, "drains": items},
        fmt,
        lambda: (
            table(["ID", "URL", "DELIVERED", "DROPPED", "PENDING-BYTES", "LAST-ERROR"], rows)
            if items
            else f"{name} has no log drains (forge drains add {name} syslog+tls://HOST:PORT)"
        ),
    )
