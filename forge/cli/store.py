"""``forge migrate-store``: move an install's state between store backends (stopped install)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import click

from forge.cli import cli


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store URL (or bare path); None for any other scheme."""
    if url.startswith("sqlite://"):
        return Path(url[len("sqlite://") :])
    return None if "://" in url else Path(url)


@cli.command("migrate-store")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="URL",
    help="The store to copy: sqlite:///PATH or postgresql://…",
)
@click.option(
    "--to", "target", required=True, metavar="URL", help="The store to fill: sqlite:///PATH or postgresql://…"
)
@click.option("--overwrite", is_flag=True, help="Replace the target's contents when it is not empty.")
def migrate_store(source: str, target: str, overwrite: bool) -> None:
    """Copy every record (revisions, uids, resourceVersions and timestamps intact), the change
    log, log lines and metric marks from one store to another, then verify the copy.

    Stop the API and controllers first; start them on the new store afterwards
    (FORGE_STORE_URL).
    """
    from forge.store.base import redact_url
    from forge.store.factory import open_store
    from forge.store.transfer import Transferable, copy_store

    if source == target:
        raise click.BadParameter("--from and --to are the same store", param_hint="--to")
    src_path = _sqlite_path(source)
    if src_path is not None and not src_path.is_file():
        raise click.BadParameter(f"{src_path} does not exist", param_hint="--from")
    src = open_store(source)
    try:
        dst = open_store(target)
        try:
            # open_store returns a SqliteStore or PostgresStore: both implement Transferable.
            snap = copy_store(cast(Transferable, src), cast(Transferable, dst), overwrite=overwrite)
        finally:
            dst.close()
    finally:
        src.close()
    click.echo(f"copied {snap.summary()}")
    click.echo(
        f"from {redact_url(source)} to {redact_url(target)}: verified (counts, counters, revisions match)"
    )
