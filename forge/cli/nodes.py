"""``forge nodes``: the machines — list with capacity, allocation and lease; cordon, uncordon, drain.

Drain is desired state, not a loop here: it sets ``spec.unschedulable`` and ``spec.drain`` on
the Node, and the rollout controller moves each Instance (a replacement elsewhere becomes
ready before the old one stops, as in a deploy). This command then watches, bounded, until the
node runs nothing that can move, and says what went where. An app whose persistent storage
lives on the node cannot move: drain leaves it running, names it, and exits 2 so a script
does not power the machine off under it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click

from forge.cli import Ctx, cli, pass_ctx
from forge.cli.output import age, dig, render, table
from forge.cli.resources import OUTPUT
from forge.clock import SystemClock
from forge.errors import Invalid, NotFound, Unavailable
from forge.models import LABEL_NODE

TERMINAL = {"Stopped", "Failed", "Lost", "Succeeded", "Skipped"}
EXIT_PINNED = 2
EXIT_TIMEOUT = 3


def _mi(n: float) -> str:
    return f"{int(n) // (1 << 20)}Mi"


def is_active(inst: dict) -> bool:
    """Asked to run and not finished: it holds resources on its node."""
    return dig(inst, "spec.desired") == "Running" and dig(inst, "status.phase") not in TERMINAL


def node_rows(
    nodes: list[dict], instances: list[dict], leases: dict[str, dict], now: float
) -> list[list[Any]]:
    """One table row per node: status, capacity vs requests, Instances, lease age, conditions."""
    rows = []
    for n in nodes:
        name = n["metadata"]["name"]
        mine = [i for i in instances if dig(i, "spec.node") == name and is_active(i)]
        cpu = sum(float(dig(i, "spec.resources.cpu", 0) or 0) for i in mine)
        mem = sum(int(dig(i, "spec.resources.memory", 0) or 0) for i in mine)
        ready = next((c for c in dig(n, "status.conditions", []) or [] if c.get("type") == "Ready"), None)
        status = "Ready" if ready and ready.get("status") == "True" else "NotReady"
        if dig(n, "spec.drain"):
            status += ",Draining"
        elif dig(n, "spec.unschedulable"):
            status += ",SchedulingDisabled"
        lease = leases.get(f"node.{name}")
        conds = " ".join(
            f"{c.get('type')}={c.get('status')}" + (f"({c['reason']})" if c.get("reason") else "")
            # Ready (derived from the others) first: it is the summary people read
            for c in sorted(dig(n, "status.conditions", []) or [], key=lambda c: c.get("type") != "Ready")
        )
        rows.append(
            [
                name,
                status,
                dig(n, "spec.address"),
                f"{cpu:g}/{dig(n, 'status.allocatable.cpu', 0):g}",
                f"{_mi(mem)}/{_mi(dig(n, 'status.allocatable.memory', 0) or 0)}",
                len(mine),
                age(dig(lease, "spec.renewTime") if lease else None, now),
                conds,
            ]
        )
    return rows


HEADERS = [
    "NAME",
    "STATUS",
    "ADDRESS",
    "CPU(req/alloc)",
    "MEMORY(req/alloc)",
    "INSTANCES",
    "LEASE",
    "CONDITIONS",
]


@cli.group(invoke_without_command=True)
@OUTPUT
@click.pass_context
def nodes(cctx: click.Context, fmt: str) -> None:
    """List nodes (capacity, allocated, Instances, lease age, conditions); cordon, drain, tokens."""
    if cctx.invoked_subcommand is not None:
        return
    client = cctx.ensure_object(Ctx).client
    items, _ = client.list("nodes")
    if fmt != "table":
        click.echo(render(items, "Node", fmt))
        return
    if not items:
        click.echo("no nodes have joined yet")
        return
    instances, _ = client.list("instances")
    leases = {lease["metadata"]["name"]: lease for lease in client.list("leases")[0]}
    click.echo(table(HEADERS, node_rows(items, instances, leases, SystemClock().now())))


@nodes.group("token")
def nodes_token() -> None:
    """Node join tokens."""


@nodes_token.command("create")
@click.argument("name")
@pass_ctx
def nodes_token_create(ctx: Ctx, name: str) -> None:
    """Mint a join token for node NAME (printed once)."""
    out = ctx.client.request("POST", f"/api/v1/nodes/{name}/token", json={})
    click.echo(out["token"])


def _set(ctx: Ctx, name: str, spec: dict[str, bool]) -> dict:
    try:
        return ctx.client.patch("nodes", name, {"spec": spec})
    except NotFound:
        raise Invalid(f"no node {name!r} (forge nodes lists them)") from None


@nodes.command("cordon")
@click.argument("name")
@pass_ctx
def nodes_cordon(ctx: Ctx, name: str) -> None:
    """Schedule nothing new on NAME (what runs there stays)."""
    _set(ctx, name, {"unschedulable": True})
    click.echo(f"node {name} cordoned: nothing new is scheduled there")


@nodes.command("uncordon")
@click.argument("name")
@pass_ctx
def nodes_uncordon(ctx: Ctx, name: str) -> None:
    """Schedule on NAME again (and stop draining it)."""
    _set(ctx, name, {"unschedulable": False, "drain": False})
    click.echo(f"node {name} uncordoned: it takes new Instances again")


def replacement_of(old: dict, instances: list[dict]) -> dict | None:
    """The newest incarnation of ``old``'s replica slot, when it is another Instance."""
    slot = (dig(old, "spec.deployment"), dig(old, "spec.process", "web"), dig(old, "spec.index", 0))
    same = [
        i
        for i in instances
        if (dig(i, "spec.deployment"), dig(i, "spec.process", "web"), dig(i, "spec.index", 0)) == slot
        and not dig(i, "spec.oneshot")
        and i["metadata"]["name"] != old["metadata"]["name"]
        and i["metadata"]["name"].startswith(old["metadata"]["name"] + "-r")
    ]
    return max(same, key=lambda i: i["metadata"]["name"], default=None) if same else None


@nodes.command("drain")
@click.argument("name")
@click.option(
    "--timeout",
    "timeout",
    type=click.FloatRange(1, 3600),
    default=300,
    show_default=True,
    help="Seconds to wait for the node to empty.",
)
@pass_ctx
def nodes_drain(ctx: Ctx, name: str, timeout: float) -> None:
    """Cordon NAME and move its Instances elsewhere, each replacement ready before the old one stops."""
    client = ctx.client
    _set(ctx, name, {"unschedulable": True, "drain": True})
    selector = {LABEL_NODE: name}
    start, _ = client.list("instances", selector)
    moving = {i["metadata"]["name"]: i for i in start if is_active(i)}
    pinned_apps = {
        a["metadata"]["name"] for a in client.list("apps")[0] if dig(a, "status.storageNode") == name
    }
    click.echo(
        f"node {name} cordoned and draining: {len(moving)} Instance(s) to move"
        + (
            f"; apps pinned here by persistent storage stay: {', '.join(sorted(pinned_apps))}"
            if pinned_apps
            else ""
        )
    )
    clock = SystemClock()
    deadline = clock.monotonic() + timeout
    while clock.monotonic() < deadline:
        items, rv = client.list("instances", selector)
        current = {i["metadata"]["name"]: i for i in items}
        if not _movable(current.values(), pinned_apps):
            break
        try:  # follow this node's Instances until none is left to move (bounded by the deadline)
            for type_, obj in client.watch(
                "instances", rv, selector, timeout_seconds=max(1, int(min(30, deadline - clock.monotonic())))
            ):
                if type_ == "BOOKMARK":
                    continue  # the stream's keep-alive (and its first line): nothing changed
                if type_ == "DELETED":
                    current.pop(obj["metadata"]["name"], None)
                else:
                    current[obj["metadata"]["name"]] = obj
                if not _movable(current.values(), pinned_apps):
                    break
        except Unavailable:
            clock.sleep(1.0)
    everything, _ = client.list("instances")
    rows = []
    for old_name, old in sorted(moving.items()):
        new = replacement_of(old, everything)
        if dig(old, "spec.app") in pinned_apps:
            rows.append([old_name, "stays (persistent storage lives here)", ""])
        elif new is not None:
            rows.append([old_name, new["metadata"]["name"], dig(new, "spec.node") or "(not scheduled yet)"])
        else:
            rows.append([old_name, "(stopped, not replaced)", ""])
    if rows:
        click.echo(table(["INSTANCE", "MOVED TO", "NODE"], rows))
    left = _left(client, selector, pinned_apps)
    if left:
        click.echo(
            f"error: node {name} still runs {', '.join(sorted(i['metadata']['name'] for i in left))} "
            f"after {timeout:g}s (see forge events)",
            err=True,
        )
        raise SystemExit(EXIT_TIMEOUT)
    if pinned_apps:
        click.echo(
            f"node {name} drained except the apps pinned to it: {', '.join(sorted(pinned_apps))} "
            "(their storage lives on this node)",
            err=True,
        )
        raise SystemExit(EXIT_PINNED)
    click.echo(f"node {name} drained: it runs no Instances")


def _movable(instances: Iterable[dict], pinned_apps: set[str]) -> list[dict]:
    """The active Instances among ``instances`` that a drain moves (not pinned by storage)."""
    return [i for i in instances if is_active(i) and dig(i, "spec.app") not in pinned_apps]


def _left(client: Any, selector: dict[str, str], pinned_apps: set[str]) -> list[dict]:
    return _movable(client.list("instances", selector)[0], pinned_apps)
