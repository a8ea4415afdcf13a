"""``forge notify``: webhooks (Slack-compatible) that hear of failed deploys, rollbacks, crash
loops and error-rate alerts — for one App, or the whole install when no APP is given.

    forge notify [APP]                       list (URLs are masked; they are credentials)
    forge notify add [APP] [URL|-]           URL from stdin when '-' or left out (keeps it out of ps)
    forge notify remove [APP] URL|NAME|-     by URL (stdin with '-') or by the NAME the list shows
    forge notify test [APP]                  send a test message and wait for each receiver's answer
"""

from __future__ import annotations

import sys
from typing import Any, Final

import click

from forge.cli import Ctx, ListByDefault, cli, pass_ctx
from forge.cli.output import age, dig, emit, table
from forge.cli.resources import OUTPUT
from forge.clock import SystemClock
from forge.errors import ForgeError, Gone
from forge.models import NOTIFY_EVENTS

TEST_WAIT_SECONDS: Final[float] = 60.0
WATCH_SLICE: Final[int] = 5


def _is_url(text: str) -> bool:
    return "://" in text


def _read_url(prompt: str) -> str:
    if sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=True)).strip()
    line = sys.stdin.readline().strip()
    if not line:
        raise click.UsageError("no URL on stdin")
    return line


def _scope(args: tuple[str, ...], usage: str) -> tuple[str, str | None]:
    """(app, url-or-name) from ``[APP] [URL]``: a first argument with :// is the URL."""
    if len(args) > 2:
        raise click.UsageError(usage)
    if not args:
        return "", None
    if len(args) == 1:
        return ("", args[0]) if _is_url(args[0]) or args[0] == "-" else (args[0], None)
    return args[0], args[1]


def _where(app: str) -> str:
    return f"app {app}" if app else "the whole install"


@cli.group(cls=ListByDefault, invoke_without_command=True)
@click.pass_context
def notify(click_ctx: click.Context) -> None:
    """Webhooks told of failed deploys, rollbacks, crash loops and error-rate alerts."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(notify_list, app=None, fmt="table")


@notify.command("list")
@click.argument("app", required=False)
@OUTPUT
@pass_ctx
def notify_list(ctx: Ctx, app: str | None, fmt: str) -> None:
    """Notifiers of APP (and the install's, which APP hears too), or every notifier."""
    if app:
        ctx.client.get("apps", app)
    items = ctx.client.request("GET", "/api/v1/notifiers")["items"]
    if app:
        items = [n for n in items if n["app"] in ("", app)]
    rows = [
        [
            n["name"],
            n["app"] or "(install)",
            n["urlHint"],
            n["format"],
            ",".join(n["events"]) or "all",
            age(n.get("createdAt")),
        ]
        for n in items
    ]
    emit(
        {"items": items},
        fmt,
        lambda: (
            table(["NAME", "SCOPE", "URL", "FORMAT", "EVENTS", "AGE"], rows)
            if rows
            else f"no notifiers for {_where(app or '')} (forge notify add {app + ' ' if app else ''}URL)"
        ),
    )


@notify.command("add")
@click.argument("args", nargs=-1)
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice([e for e in NOTIFY_EVENTS if e != "Test"]),
    help="Only these events (repeatable; default: all).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["slack", "generic"]),
    default=None,
    help="slack: text and blocks; generic: the same plus a structured 'forge' object "
    "(default: slack for *.slack.com, else generic).",
)
@pass_ctx
def notify_add(ctx: Ctx, args: tuple[str, ...], events: tuple[str, ...], fmt: str | None) -> None:
    """Add a webhook URL for APP, or for the whole install without APP (URL '-' or none: stdin)."""
    app, url = _scope(args, "forge notify add [APP] [URL|-]")
    if url is None or url == "-":
        url = _read_url("Webhook URL")
    body: dict[str, Any] = {"app": app, "url": url, "events": list(events)}
    if fmt:
        body["format"] = fmt
    out = ctx.client.request("POST", "/api/v1/notifiers", json=body)
    click.echo(f"notifier {out['name']} ({out['urlHint']}, {out['format']}) for {_where(app)}")


@notify.command("remove")
@click.argument("args", nargs=-1, required=True)
@pass_ctx
def notify_remove(ctx: Ctx, args: tuple[str, ...]) -> None:
    """Remove a notifier of APP (or of the install) by its URL ('-': stdin) or its NAME."""
    app, what = _scope(args, "forge notify remove [APP] URL|NAME|-")
    if what is None:  # one argument that is not a URL: a notifier's NAME
        what, app = args[0], ""
        name = what
    elif what == "-" or _is_url(what):
        url = _read_url("Webhook URL") if what == "-" else what
        name = ctx.client.request("POST", "/api/v1/notifiers/lookup", json={"app": app, "url": url})["name"]
    else:
        name = what
    out = ctx.client.request("DELETE", f"/api/v1/notifiers/{name}")
    click.echo(f"removed notifier {out['name']} ({out['urlHint']}) of {_where(out['app'])}")


@notify.command("test")
@click.argument("app", required=False)
@click.option("--no-wait", is_flag=True, help="Do not wait for the receivers' answers.")
@pass_ctx
def notify_test(ctx: Ctx, app: str | None, no_wait: bool) -> None:
    """Send a test message to APP's notifiers (or the install's) and report each answer."""
    made = ctx.client.request("POST", "/api/v1/notifiers/test", json={"app": app or ""})
    name = made["metadata"]["name"]
    targets = made["spec"]["targets"]
    click.echo(f"test message {name} queued for {', '.join(targets)}")
    if no_wait:
        return
    note = _wait_delivered(ctx, name, made)
    failed = False
    for target in targets:
        d = (dig(note, "status.deliveries") or {}).get(target) or {}  # names hold dots: no dig
        state = d.get("state", "Pending")
        failed = failed or state != "Sent"
        extra = f": {d['message']}" if d.get("message") else ""
        click.echo(f"  {target}: {state}{extra}")
    if failed:
        raise SystemExit(1)


def _wait_delivered(ctx: Ctx, name: str, note: dict[str, Any]) -> dict[str, Any]:
    """Follow the Notification until every target is answered (bounded), waking on its changes."""
    clock = SystemClock()
    deadline = clock.monotonic() + TEST_WAIT_SECONDS
    rv = int(dig(note, "metadata.resourceVersion") or 0)
    while dig(note, "status.finishedTime") is None and clock.monotonic() < deadline:
        try:
            for type_, obj in ctx.client.watch("notifications", rv, timeout_seconds=WATCH_SLICE):
                rv = max(rv, int(dig(obj, "metadata.resourceVersion") or 0))
                if type_ != "BOOKMARK" and dig(obj, "metadata.name") == name:
                    note = obj
                    break
            else:
                note = ctx.client.get("notifications", name)
        except Gone:
            note = ctx.client.get("notifications", name)
        except ForgeError:
            note = ctx.client.get("notifications", name)
        rv = max(rv, int(dig(note, "metadata.resourceVersion") or 0))
    return note
