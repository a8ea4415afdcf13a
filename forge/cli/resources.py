"""Generic record verbs: get, apply, delete, events."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from forge.cli import Ctx, cli, pass_ctx
from forge.cli.output import dig, render
from forge.errors import Conflict, Gone, Invalid, NotFound
from forge.models import LABEL_APP, deployment_number, kind_class
from forge.textsafe import printable_text

OUTPUT = click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def resolve_kind(kind: str) -> tuple[str, str]:
    """``app``/``apps``/``App`` → (``App``, ``apps``); a clear error for anything else."""
    try:
        cls = kind_class(kind)
    except KeyError:
        known = ", ".join(sorted(c.PLURAL for c in _public_kinds()))
        raise click.BadParameter(f"unknown kind {kind!r} (known: {known})", param_hint="KIND") from None
    return cls.KIND, cls.PLURAL


def _public_kinds() -> list[Any]:
    from forge.models import KINDS

    return [c for c in KINDS.values() if c.KIND not in ("NodeToken", "LogDrain")]  # drains: forge drains


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-l", "--selector", default=None, help="Label selector, e.g. forge.dev/app=hello.")
@OUTPUT
@pass_ctx
def get(ctx: Ctx, kind: str, name: str | None, selector: str | None, fmt: str) -> None:
    """Show records of KIND (one when NAME is given)."""
    kind_name, plural = resolve_kind(kind)
    if name:
        obj = ctx.client.get(plural, name)
        click.echo(json.dumps(obj, indent=2) if fmt == "json" else render([obj], kind_name, fmt))
        return
    items, _ = ctx.client.list(plural, selector)
    if fmt == "table" and not items:
        click.echo(f"no {plural} found", err=True)
        return
    click.echo(render(items, kind_name, fmt))


def load_documents(path: str) -> list[dict]:
    """YAML (several ``---`` documents) or JSON (an object or a list) from a file or ``-``."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}") from None
    if len(text) > 4 * 1024 * 1024:
        raise Invalid(f"{path} is larger than 4 MiB")
    try:
        if text.lstrip().startswith(("{", "[")):
            data = json.loads(text)
            docs = data if isinstance(data, list) else [data]
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (ValueError, yaml.YAMLError) as exc:
        raise Invalid(f"{path} is not valid YAML or JSON: {str(exc).splitlines()[0]}") from None
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not isinstance(d.get("metadata"), dict) or "kind" not in d:
            raise Invalid(f"{path}: document {i + 1} needs kind and metadata.name")
    return docs


@cli.command()
@click.option(
    "-f",
    "--filename",
    "path",
    required=True,
    help="File with one or more records (YAML or JSON); - for stdin.",
)
@pass_ctx
def apply(ctx: Ctx, path: str) -> None:
    """Create or update the records in a file."""
    for doc in load_documents(path):
        kind_name, plural = resolve_kind(str(doc["kind"]))
        doc.setdefault("apiVersion", "forge/v1")
        name = str(doc["metadata"].get("name", ""))
        doc.pop("status", None)
        for attempt in range(3):
            try:
                cur = ctx.client.get(plural, name)
            except NotFound:
                ctx.client.create(plural, doc)
                click.echo(f"{kind_name.lower()}/{name} created")
                break
            body = dict(doc)
            meta = dict(cur["metadata"])
            meta["labels"] = doc["metadata"].get("labels", meta.get("labels", {}))
            body["metadata"] = meta
            try:
                ctx.client.replace(plural, name, body)
            except Conflict:
                if attempt == 2:
                    raise
                continue
            click.echo(f"{kind_name.lower()}/{name} configured")
            break


@cli.command()
@click.argument("kind")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask before deleting an app; required without a terminal.")
@pass_ctx
def delete(ctx: Ctx, kind: str, name: str, yes: bool) -> None:
    """Delete one record. An app is deleted as `forge apps delete` does it: after saying what goes
    with it (releases, logs, persistent storage) and asking."""
    kind_name, plural = resolve_kind(kind)
    if kind_name == "App":
        delete_app(ctx, name, yes)
        return
    ctx.client.delete(plural, name)
    click.echo(f"{kind_name.lower()}/{name} deleted")


def delete_app(ctx: Ctx, name: str, yes: bool) -> None:
    """Delete an App after saying what goes with it; asks on a terminal, else needs ``yes``."""
    app = ctx.client.get("apps", name)
    node = dig(app, "status.storageNode")
    items, _ = ctx.client.list("deployments", f"{LABEL_APP}={name}")
    releases = sorted(items, key=lambda d: deployment_number(d["metadata"]["name"]), reverse=True)
    lost = [
        f"{len(releases)} release(s)" + (f" ({releases[0]['metadata']['name']} newest)" if releases else ""),
        "its logs",
    ]
    if node:
        lost.insert(0, f"its PERSISTENT STORAGE on node {node}")
    what = ", ".join(lost)
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(
                f"not deleting app {name} without --yes (no terminal to ask on): it would delete {what}"
            )
        click.confirm(f"delete app {name}, stop all its processes and delete {what}?", abort=True)
    ctx.client.delete("apps", name)
    try:  # its secret env goes with it: a later app of the same name must not inherit it
        if dig(ctx.client.get("secrets", name), "spec.app") == name:
            ctx.client.delete("secrets", name)
    except NotFound:
        pass
    click.echo(
        f"app/{name} deleted" + (f"; its persistent storage on node {node} is deleted too" if node else "")
    )


def event_line(e: dict) -> str:
    spec = e.get("spec", {})
    obj = spec.get("involvedObject", {})
    return printable_text(
        f"{spec.get('lastTime', '')}  {spec.get('type', ''):7}  {spec.get('reason', ''):24}  "
        f"{obj.get('kind', '').lower()}/{obj.get('name', '')}  {spec.get('message', '')}"
        + (f"  (x{spec['count']})" if spec.get("count", 1) > 1 else "")
    )


@cli.command()
@click.option("-w", "--watch", is_flag=True, help="Keep printing Events as they happen.")
@click.option("--for", "for_name", default=None, help="Only Events about this app (and its releases).")
@OUTPUT
@pass_ctx
def events(ctx: Ctx, watch: bool, for_name: str | None, fmt: str) -> None:
    """Show Events, oldest first."""
    selector = f"forge.dev/app={for_name}" if for_name else None
    items, rv = ctx.client.list("events", selector)
    items.sort(key=lambda e: e.get("spec", {}).get("lastTime") or "")
    if fmt != "table":
        click.echo(render(items, "Event", fmt))
    else:
        for e in items:
            click.echo(event_line(e))
    while watch:
        try:
            for type_, obj in ctx.client.watch("events", rv, selector):
                rv = int(obj.get("metadata", {}).get("resourceVersion", rv))
                if type_ in ("ADDED", "MODIFIED"):
                    click.echo(json.dumps(obj) if fmt == "json" else event_line(obj))
        except Gone:  # our revision was compacted away: carry on from now
            _, rv = ctx.client.list("events", selector)
