"""``forge previews APP``: the App's pull-request previews; ``forge previews approve APP N``: let
pull request N's current head build (a fork's, or an outside author's)."""

from __future__ import annotations

import click

from forge.cli import Ctx, cli, pass_ctx
from forge.cli.output import age, dig, table
from forge.models import LABEL_PREVIEW_OF


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, required=True)
@click.option("--sha", default=None, help="approve: only if the head is still this commit.")
@pass_ctx
def previews(ctx: Ctx, args: tuple[str, ...], sha: str | None) -> None:
    """List APP's previews (forge previews APP), or approve one (forge previews approve APP N)."""
    if args[0] == "approve":
        if len(args) != 3 or not args[2].isdigit():
            raise click.UsageError("forge previews approve APP N")
        name = f"{args[1]}-pr-{args[2]}"
        out = ctx.client.request("POST", f"/api/v1/previews/{name}/approve", json={"sha": sha} if sha else {})
        click.echo(
            f"preview {name}: approved {dig(out, 'spec.approvedSha')[:12]} (a new push needs a new approval)"
        )
        return
    if len(args) != 1:
        raise click.UsageError("forge previews APP")
    items, _ = ctx.client.list("previews", {LABEL_PREVIEW_OF: args[0]})
    rows = [
        [
            f"#{dig(p, 'spec.number')}",
            dig(p, "metadata.name"),
            (dig(p, "spec.headSha") or "")[:12],
            dig(p, "spec.author"),
            "yes"
            if dig(p, "spec.trusted")
            else ("approved" if dig(p, "spec.approvedSha") == dig(p, "spec.headSha") else "no"),
            dig(p, "status.phase"),
            dig(p, "status.url"),
            age(dig(p, "spec.headTime")),
        ]
        for p in sorted(items, key=lambda p: dig(p, "spec.number") or 0)
    ]
    click.echo(table(["PR", "PREVIEW", "HEAD", "AUTHOR", "TRUSTED", "PHASE", "URL", "PUSHED"], rows))
