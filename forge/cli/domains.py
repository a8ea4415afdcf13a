"""``forge domains APP`` (``forge domains list APP``): an App's hostnames, where to point DNS,
and the state of each certificate (``GET /api/v1/apps/APP/domains``)."""

from __future__ import annotations

from typing import Any

import click

from forge.cli import Ctx, pass_ctx
from forge.cli.apps import domains
from forge.cli.output import dig, emit, table
from forge.cli.resources import OUTPUT


def render_domains(data: dict[str, Any]) -> str:
    rows = [
        [
            d.get("domain"),
            d.get("kind"),
            d.get("dnsTarget"),
            f"{dig(d, 'certificate.state', 'unknown')}: {dig(d, 'certificate.message', '')}".rstrip(": "),
        ]
        for d in data.get("items", [])
    ]
    return table(["DOMAIN", "KIND", "POINT DNS AT", "CERTIFICATE"], rows)


@domains.command("list")
@click.argument("name")
@OUTPUT
@pass_ctx
def domains_list(ctx: Ctx, name: str, fmt: str) -> None:
    """App NAME's domains, their DNS target and certificate state. Also: forge domains NAME."""
    data = ctx.client.request("GET", f"/api/v1/apps/{name}/domains")
    emit(data, fmt, lambda: render_domains(data))
