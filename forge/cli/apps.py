"""App-centred verbs: apps, status, deploy, rollback, releases, logs, env, scale, domains, creds, nodes, secrets."""

from __future__ import annotations

import re
import sys
import threading
from typing import Any

import click

from forge.cli import Ctx, ListByDefault, cli, pass_ctx
from forge.cli.converge import newest_number, wait_converged
from forge.cli.output import age, dig, emit, render, table
from forge.cli.resources import OUTPUT, delete_app, event_line
from forge.errors import Conflict, ForgeError, Gone, Invalid, NotFound
from forge.models import COMMIT, ENV_KEY, LABEL_APP, deployment_number
from forge.textsafe import printable, printable_text

TERMINAL = {"Live", "Failed", "Cancelled", "Superseded"}


def _releases(ctx: Ctx, app: str) -> list[dict]:
    items, _ = ctx.client.list("deployments", f"{LABEL_APP}={app}")
    return sorted(items, key=lambda d: deployment_number(d["metadata"]["name"]), reverse=True)


def _patch_app(ctx: Ctx, name: str, mutate: Any) -> dict:
    """Read-modify-write of an App's spec with its resourceVersion, retried on Conflict."""
    for attempt in range(5):
        app = ctx.client.get("apps", name)
        if not mutate(app["spec"]):
            return app
        try:
            return ctx.client.replace(
                "apps", name, {k: app[k] for k in ("apiVersion", "kind", "metadata", "spec")}
            )
        except Conflict:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- apps


@cli.group(invoke_without_command=True)
@OUTPUT
@click.pass_context
def apps(cctx: click.Context, fmt: str) -> None:
    """List apps, or manage them (create, delete)."""
    if cctx.invoked_subcommand is None:
        items, _ = cctx.ensure_object(Ctx).client.list("apps")
        click.echo(
            render(items, "App", fmt)
            if items or fmt != "table"
            else "no apps yet: forge apps create NAME --repo OWNER/REPO"
        )


@apps.command("create")
@click.argument("name")
@click.option("--repo", required=True, help="GitHub repository, owner/name.")
@click.option(
    "--branch", "branches", multiple=True, help="Branch to deploy on push (repeatable; default main)."
)
@click.option("--domain", "domains", multiple=True, help="Custom domain (repeatable).")
@click.option("--replicas", type=click.IntRange(0, 100), default=1, show_default=True)
@click.option("--no-auto-deploy", is_flag=True, help="Do not deploy on push.")
@OUTPUT
@pass_ctx
def apps_create(
    ctx: Ctx,
    name: str,
    repo: str,
    branches: tuple[str, ...],
    domains: tuple[str, ...],
    replicas: int,
    no_auto_deploy: bool,
    fmt: str,
) -> None:
    """Register an app that deploys REPO on push."""
    body: dict[str, Any] = {
        "apiVersion": "forge/v1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {
            "repo": repo,
            "branches": list(branches) or ["main"],
            "domains": list(domains),
            "replicas": replicas,
            "autoDeploy": not no_auto_deploy,
        },
    }
    obj = ctx.client.create("apps", body)
    emit(
        obj,
        fmt,
        lambda: created_message(ctx, name, repo, body["spec"]["branches"], not no_auto_deploy),
    )


def created_message(ctx: Ctx, name: str, repo: str, branches: list[str], auto: bool) -> str:
    """What to do next: deploy by hand now; a push deploys only once GitHub reaches this install."""
    lines = [
        f"app/{name} created. Deploy it now: forge deploy {name} --ref {branches[0]} --wait",
    ]
    if auto:
        lines.append(
            f"Pushes to {repo} ({', '.join(branches)}) deploy it once GitHub sends this install its "
            f"webhooks: forge github connect, or a webhook to {ctx.client.url}/api/v1/webhook/github "
            "(see README, With GitHub)."
        )
    return "\n".join(lines)


@apps.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask; required without a terminal.")
@pass_ctx
def apps_delete(ctx: Ctx, name: str, yes: bool) -> None:
    """Delete an app: its processes stop, its routes go away, and within 30 s its releases, logs
    and persistent storage (if it has any) are deleted from its nodes. Asks first; without a
    terminal it needs --yes."""
    delete_app(ctx, name, yes)


# ----------------------------------------------------------------------------- status / releases


def instance_address(inst: dict[str, Any]) -> str | None:
    """``ADDRESS:PORT`` an Instance is reached at (its own namespace address, or its node's)."""
    port = dig(inst, "status.port")
    if not port:
        return None
    return f"{dig(inst, 'status.address') or '?'}:{port}"


def config_differences(spec: dict[str, Any], applied: dict[str, Any], procs: dict[str, int]) -> list[str]:
    """What the App's spec asks for that its live release does not run (yet)."""
    out = []
    if int(spec.get("replicas", 1)) != procs.get("web"):
        out.append(f"web={spec.get('replicas', 1)} (runs {procs.get('web')})")
    for proc, n in (spec.get("processes") or {}).items():
        if proc in procs and procs[proc] != n:
            out.append(f"{proc}={n} (runs {procs[proc]})")
    env, live_env = spec.get("env") or {}, applied.get("env") or {}
    changed = sorted(k for k in set(env) | set(live_env) if env.get(k) != live_env.get(k))
    if changed:
        out.append("env " + ", ".join(changed))
    if sorted(spec.get("domains") or []) != sorted(applied.get("domains") or []):
        out.append("domains")
    return out


@cli.command()
@click.argument("name", required=False)
@OUTPUT
@pass_ctx
def status(ctx: Ctx, name: str | None, fmt: str) -> None:
    """Live release, commit, URL, Instances and the last Events of an app; with no NAME, an
    overview of every app."""
    if name is None:
        from forge.cli.overview import overview

        overview(ctx, fmt)
        return
    app = ctx.client.get("apps", name)
    releases = _releases(ctx, name)
    live = dig(app, "status.liveDeployment")
    insts, _ = ctx.client.list("instances", f"{LABEL_APP}={name}")
    evs, _ = ctx.client.list("events", f"{LABEL_APP}={name}")
    evs = sorted(evs, key=lambda e: dig(e, "spec.lastTime") or "")[-8:]
    data = {"app": app, "releases": releases[:5], "instances": insts, "events": evs}

    def human() -> str:
        live_rel = next((d for d in releases if d["metadata"]["name"] == live), None)
        lines = [
            f"App:       {name}  ({dig(app, 'spec.repo')} @ {','.join(dig(app, 'spec.branches', []))})",
            f"URL:       {dig(app, 'status.url') or '-'}",
            f"Live:      {live or 'none'}"
            + (f"  commit {dig(live_rel, 'spec.commit', '')[:12]}" if live_rel else ""),
        ]
        if releases and releases[0]["metadata"]["name"] != live:
            r = releases[0]
            lines.append(
                f"Latest:    {r['metadata']['name']}  {dig(r, 'status.phase') or 'Pending'}"
                + (
                    f"  {dig(r, 'status.reason')}: {printable_text(str(dig(r, 'status.message')))}"
                    if dig(r, "status.reason")
                    else ""
                )
            )
        manifest = dig(live_rel, "status.manifest") or {}
        if manifest.get("storage"):
            node = dig(app, "status.storageNode")
            lines.append(
                f"Storage:   {manifest['storage'].get('size', 0) // 2**20} MiB at /storage"
                + (f", on node {node} (the app is pinned to it)" if node else " (not placed yet)")
            )
        applied = dig(live_rel, "status.appliedConfig") or dig(live_rel, "spec.config") or {}
        procs = {"web": applied.get("replicas", dig(app, "spec.replicas", 1))}
        for proc, spec in (manifest.get("processes") or {}).items():
            procs[proc] = (applied.get("processes") or {}).get(proc, spec.get("replicas", 1))
        if live_rel is not None:
            differs = config_differences(app["spec"], applied, procs)
            if differs:
                lines.append(f"Pending:   the App's spec differs from {live}: {'; '.join(differs)}")
        lines.append(
            "Processes: "
            + ", ".join(f"{k}={v}" for k, v in procs.items())
            + (
                f"; {len(manifest.get('cron') or [])} cron schedule(s) (forge cron {name})"
                if manifest.get("cron")
                else ""
            )
        )
        active = [i for i in insts if dig(i, "spec.desired") == "Running"]
        lines += [
            "",
            "Instances:",
            table(
                ["NAME", "TYPE", "NODE", "PHASE", "ADDRESS", "READY", "RESTARTS", "REASON"],
                [
                    [
                        dig(i, "metadata.name"),
                        dig(i, "spec.oneshot.type") or dig(i, "spec.process") or "web",
                        dig(i, "spec.node"),
                        dig(i, "status.phase"),
                        instance_address(i),
                        dig(i, "status.ready"),
                        dig(i, "status.restarts", 0),
                        dig(i, "status.reason"),
                    ]
                    for i in active
                ],
            )
            if active
            else "  none",
        ]
        lines += ["", "Events:"] + ([event_line(e) for e in evs] or ["  none"])
        return "\n".join(lines)

    emit(data, fmt, human)


@cli.command()
@click.argument("name")
@OUTPUT
@pass_ctx
def releases(ctx: Ctx, name: str, fmt: str) -> None:
    """Release history: release, commit, trigger, phase, reason, age."""
    ctx.client.get("apps", name)
    items = _releases(ctx, name)
    emit(
        items,
        fmt,
        lambda: (
            table(
                ["RELEASE", "COMMIT", "TRIGGER", "PHASE", "REASON", "AGE"],
                [
                    [
                        d["metadata"]["name"],
                        dig(d, "spec.commit", "")[:7],
                        dig(d, "spec.trigger.type"),
                        dig(d, "status.phase") or "Pending",
                        dig(d, "status.reason"),
                        age(dig(d, "metadata.createdAt")),
                    ]
                    for d in items
                ],
            )
            if items
            else "no releases yet"
        ),
    )


def follow_release(ctx: Ctx, name: str, app: str) -> dict:
    """Follow a Deployment's phases (and its build log) until it is terminal; return it."""
    stop = threading.Event()
    printed: set[Any] = set()
    lock = threading.Lock()
    seen_phase = ""
    params = {"deployment": name, "source": "build"}

    def show(line: dict) -> None:
        with lock:
            if line.get("id") not in printed:
                printed.add(line.get("id"))
                click.echo(f"  | {printable(str(line.get('line', '')))}", err=True)

    def tail_build() -> None:
        try:
            for line in ctx.client.stream_lines(
                f"/api/v1/apps/{app}/logs", {**params, "follow": "true", "timeoutSeconds": 900}
            ):
                if stop.is_set():
                    return
                show(line)
        except ForgeError:
            return

    def drain_build() -> None:
        """The build lines the follower has not printed yet (it may lag the phase change)."""
        stop.set()
        try:
            for line in ctx.client.stream_lines(f"/api/v1/apps/{app}/logs", {**params, "follow": "false"}):
                show(line)
        except ForgeError:
            return

    threading.Thread(target=tail_build, daemon=True).start()
    dep = ctx.client.get("deployments", name)
    rv = int(dep["metadata"]["resourceVersion"])
    while True:
        phase = dig(dep, "status.phase") or "Pending"
        if phase in TERMINAL:
            drain_build()
        if phase != seen_phase:
            click.echo(
                f"{name}: {phase}"
                + (
                    f" ({dig(dep, 'status.reason')}: {printable_text(str(dig(dep, 'status.message')))})"
                    if dig(dep, "status.reason")
                    else ""
                ),
                err=True,
            )
            seen_phase = phase
        if phase in TERMINAL:
            return dep
        try:
            for type_, obj in ctx.client.watch("deployments", rv, f"{LABEL_APP}={app}", timeout_seconds=30):
                rv = int(obj.get("metadata", {}).get("resourceVersion", rv))
                if type_ != "BOOKMARK" and obj["metadata"]["name"] == name:
                    dep = obj
                    break
            else:
                dep = ctx.client.get("deployments", name)
        except Gone:  # compacted past our revision: re-read and watch on from there
            dep = ctx.client.get("deployments", name)
            rv = int(dep["metadata"]["resourceVersion"])


@cli.command()
@click.argument("name")
@click.option(
    "--ref",
    default=None,
    help="Branch or tag to deploy (its commit on the remote now); with --commit, just recorded.",
)
@click.option(
    "--commit", default=None, help="Commit SHA (40 hex) to deploy; default: the live release's commit."
)
@click.option("--wait", is_flag=True, help="Follow the release; exit 0 only when it is Live.")
@click.option(
    "--force", is_flag=True, help="Release and rebuild even when this commit and config are already live."
)
@OUTPUT
@pass_ctx
def deploy(
    ctx: Ctx, name: str, ref: str | None, commit: str | None, wait: bool, force: bool, fmt: str
) -> None:
    """Write a new release (Deployment) for an app (nothing new when its commit and config are
    already live or on their way, unless --force)."""
    if commit is not None and not COMMIT.match(commit):
        raise click.BadParameter("must be 40 lowercase hex characters", param_hint="--commit")
    body: dict[str, Any] = {}
    if ref:
        body["ref"] = ref
    if commit:
        body["commit"] = commit
    if force:
        body["force"] = True
    dep = ctx.client.request("POST", f"/api/v1/apps/{name}/deploy", json=body)
    dname = dep["metadata"]["name"]
    if not wait:
        phase = dig(dep, "status.phase")
        what = (
            f"{dname} is already {'live' if phase == 'Live' else 'on its way'} with this commit and config "
            "(--force releases it again)"
            if phase
            else f"{dname} created"
        )
        emit(dep, fmt, lambda: f"{what} (commit {dig(dep, 'spec.commit', '')[:12]})")
        return
    _wait_and_exit(ctx, dname, name, fmt)


def _wait_and_exit(ctx: Ctx, dname: str, app: str, fmt: str) -> None:
    final = follow_release(ctx, dname, app)
    phase = dig(final, "status.phase")
    emit(
        final,
        fmt,
        lambda: (
            f"{dname} is {phase}"
            + (
                f": {dig(final, 'status.reason')}: {printable_text(str(dig(final, 'status.message')))}"
                if phase != "Live"
                else ""
            )
        ),
    )
    if phase != "Live":
        raise SystemExit(1)


@cli.command()
@click.argument("name")
@click.option(
    "--to", "to", default=None, help="Release to go back to (APP-N); default: the one before the live one."
)
@click.option("--wait", is_flag=True, help="Follow the rollback release until it is Live.")
@click.option("--force", is_flag=True, help="Go back to a release even though it had failed.")
@OUTPUT
@pass_ctx
def rollback(ctx: Ctx, name: str, to: str | None, wait: bool, force: bool, fmt: str) -> None:
    """Roll an app back to an earlier release (its code and config)."""
    body: dict[str, Any] = {"to": to} if to else {}
    if force:
        body["force"] = True
    dep = ctx.client.request("POST", f"/api/v1/apps/{name}/rollback", json=body)
    dname = dep["metadata"]["name"]
    if wait:
        _wait_and_exit(ctx, dname, name, fmt)
        return
    emit(dep, fmt, lambda: f"{dname} created: rolling back to {dig(dep, 'spec.rollbackOf')}")


# ----------------------------------------------------------------------------- logs

_SINCE = re.compile(r"^(\d+)([smhd])$")


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines.")
@click.option("--build", is_flag=True, help="Build output instead of the app's.")
@click.option("--deployment", default=None, help="Only this release (APP-N).")
@click.option("--since", default=None, help="Only lines newer than this (10s, 5m, 2h, 1d).")
@click.option("--all", "both", is_flag=True, help="Build and app output together.")
@click.option("--raw", is_flag=True, help="Print the app's bytes as they are (control characters included).")
@click.option(
    "--release", "release_cmd", is_flag=True, help="The release command's output (with --deployment APP-N)."
)
@click.option("--instance", default=None, help="Only this Instance (a cron or forge run record, a replica).")
@pass_ctx
def logs(
    ctx: Ctx,
    name: str,
    follow: bool,
    build: bool,
    deployment: str | None,
    since: str | None,
    both: bool,
    raw: bool,
    release_cmd: bool,
    instance: str | None,
) -> None:
    """Print an app's logs (runtime by default; --build for the build). Control characters in
    the app's output are shown escaped (\\x1b), never sent to the terminal, unless --raw."""
    params: dict[str, Any] = {"follow": "true" if follow else "false"}
    if not both:
        params["source"] = "build" if build else "app"
    if deployment:
        params["deployment"] = deployment
    if release_cmd:
        if not deployment:
            raise click.UsageError("--release needs --deployment APP-N (whose release command)")
        instance = f"{deployment}-release"
    if instance:
        params["instance"] = instance
    if since:
        if not _SINCE.match(since):
            raise click.BadParameter("use a number and a unit: 30s, 10m, 2h, 1d", param_hint="--since")
        params["since"] = since
    if follow:
        params["timeoutSeconds"] = 3600
    for line in ctx.client.stream_lines(f"/api/v1/apps/{name}/logs", params):
        text = str(line.get("line", ""))
        click.echo(
            f"{line.get('time', '')} {line.get('instance', '')} [{line.get('source', '')}] "
            f"{text if raw else printable(text)}",
            color=True if raw else None,
        )  # --raw: bytes as they are


# ----------------------------------------------------------------------------- env / scale / domains


def _parse_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not ENV_KEY.match(key):
            raise click.BadParameter(
                f"{p.split('=')[0]!r}: use KEY=VALUE with a valid variable name", param_hint="K=V"
            )
        out[key] = value
    return out


@cli.group()
def env() -> None:
    """An app's environment (rolls out a new release; values are never printed)."""


@env.command("set")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True)
@click.option("--secret", is_flag=True, help="Store as encrypted secrets instead of plain env.")
@click.option(
    "--wait", is_flag=True, help="Return once the live release runs the change (exit 1 if it fails)."
)
@pass_ctx
def env_set(ctx: Ctx, name: str, pairs: tuple[str, ...], secret: bool, wait: bool) -> None:
    """Set K=V pairs."""
    values = _parse_pairs(pairs)
    after = newest_number(ctx.client, name)
    if secret:
        _set_secrets(ctx, name, values)
    else:

        def mutate(spec: dict) -> bool:
            old = dict(spec.get("env", {}))
            spec["env"] = {**old, **values}
            return spec["env"] != old

        _patch_app(ctx, name, mutate)
    click.echo(f"set {', '.join(sorted(values))} on {name}")
    if wait:
        wait_converged(ctx.client, name, after)


def _set_secrets(ctx: Ctx, app: str, values: dict[str, Any]) -> None:
    ctx.client.get("apps", app)
    try:
        ctx.client.patch("secrets", app, {"spec": {"data": values}})
    except NotFound:
        if any(v is None for v in values.values()):
            return
        ctx.client.create(
            "secrets",
            {
                "apiVersion": "forge/v1",
                "kind": "Secret",
                "metadata": {"name": app, "labels": {LABEL_APP: app}},
                "spec": {"app": app, "data": values},
            },
        )


@env.command("unset")
@click.argument("name")
@click.argument("keys", nargs=-1, required=True)
@click.option(
    "--wait", is_flag=True, help="Return once the live release runs the change (exit 1 if it fails)."
)
@pass_ctx
def env_unset(ctx: Ctx, name: str, keys: tuple[str, ...], wait: bool) -> None:
    """Remove variables (plain and secret)."""
    after = newest_number(ctx.client, name)
    _patch_app(ctx, name, lambda spec: any(spec.get("env", {}).pop(k, None) is not None for k in list(keys)))
    try:
        sec = ctx.client.get("secrets", name)
        drop = [k for k in keys if k in (dig(sec, "status.keys", []) or [])]
        if drop:
            ctx.client.patch("secrets", name, {"spec": {"data": {k: None for k in drop}}})
    except NotFound:
        pass
    click.echo(f"unset {', '.join(keys)} on {name}")
    if wait:
        wait_converged(ctx.client, name, after)


@env.command("list")
@click.argument("name")
@OUTPUT
@pass_ctx
def env_list(ctx: Ctx, name: str, fmt: str) -> None:
    """Variable names (values are never printed)."""
    app = ctx.client.get("apps", name)
    plain = sorted(dig(app, "spec.env", {}) or {})
    try:
        secret = sorted(dig(ctx.client.get("secrets", name), "status.keys", []) or [])
    except NotFound:
        secret = []
    rows = [[k, "env"] for k in plain] + [[k, "secret"] for k in secret]
    emit(
        {"env": plain, "secrets": secret},
        fmt,
        lambda: table(["NAME", "KIND"], rows) if rows else "no variables",
    )


def parse_scale(args: tuple[str, ...]) -> dict[str, int]:
    """``3`` (web), or ``TYPE=N`` pairs: ``web=2 worker=3``."""
    from forge.models import RESERVED_PROCESS_NAMES, is_dns_label

    out: dict[str, int] = {}
    for arg in args:
        kind, sep, n = arg.rpartition("=") if "=" in arg else ("web", "=", arg)
        if not n.isdigit() or not 0 <= int(n) <= 100:
            raise click.BadParameter(f"{arg!r}: replicas are a number from 0 to 100", param_hint="TYPE=N")
        if not sep or not is_dns_label(kind, 30) or (kind != "web" and kind in RESERVED_PROCESS_NAMES):
            raise click.BadParameter(
                f"{arg!r}: use N or TYPE=N with a process type from forge.yaml", param_hint="TYPE=N"
            )
        out[kind] = int(n)
    if not out:
        raise click.BadParameter(
            "say how many: forge scale APP 3, or forge scale APP web=2 worker=3", param_hint="TYPE=N"
        )
    return out


@cli.command()
@click.argument("name")
@click.argument("counts", nargs=-1, required=True, metavar="N | TYPE=N...")
@click.option(
    "--wait", is_flag=True, help="Return once the live release runs the change (exit 1 if it fails)."
)
@pass_ctx
def scale(ctx: Ctx, name: str, counts: tuple[str, ...], wait: bool) -> None:
    """Set the number of Instances of an app's web process (N) or of each process type (TYPE=N).

    The live release is scaled in place: Instances are started or stopped, no new release is made
    and the Instances that stay keep running."""
    want = parse_scale(counts)
    after = newest_number(ctx.client, name)

    def mutate(spec: dict) -> bool:
        before = (spec.get("replicas"), dict(spec.get("processes") or {}))
        if "web" in want:
            spec["replicas"] = want["web"]
        spec["processes"] = {**(spec.get("processes") or {}), **{k: v for k, v in want.items() if k != "web"}}
        return before != (spec.get("replicas"), spec["processes"])

    _patch_app(ctx, name, mutate)
    if list(want) == ["web"]:
        click.echo(f"{name} scaled to {want['web']}")
    else:
        click.echo(f"{name} scaled: " + ", ".join(f"{k}={v}" for k, v in want.items()))
    if wait:
        wait_converged(ctx.client, name, after)


@cli.group(cls=ListByDefault)
def domains() -> None:
    """Custom domains of an app."""


@domains.command("add")
@click.argument("name")
@click.argument("domain")
@click.option(
    "--wait", is_flag=True, help="Return once the live release runs the change (exit 1 if it fails)."
)
@pass_ctx
def domains_add(ctx: Ctx, name: str, domain: str, wait: bool) -> None:
    """Serve the app at DOMAIN too."""
    d = domain.lower().rstrip(".")

    def mutate(spec: dict) -> bool:
        if d in spec.get("domains", []):
            return False
        spec["domains"] = spec.get("domains", []) + [d]
        return True

    after = newest_number(ctx.client, name)
    _patch_app(ctx, name, mutate)
    click.echo(f"{d} added to {name}")
    if wait:
        wait_converged(ctx.client, name, after)


@domains.command("remove")
@click.argument("name")
@click.argument("domain")
@click.option(
    "--wait", is_flag=True, help="Return once the live release runs the change (exit 1 if it fails)."
)
@pass_ctx
def domains_remove(ctx: Ctx, name: str, domain: str, wait: bool) -> None:
    """Stop serving the app at DOMAIN."""
    d = domain.lower().rstrip(".")

    def mutate(spec: dict) -> bool:
        if d not in spec.get("domains", []):
            raise Invalid(f"{name} has no domain {d}")
        spec["domains"] = [x for x in spec["domains"] if x != d]
        return True

    after = newest_number(ctx.client, name)
    _patch_app(ctx, name, mutate)
    click.echo(f"{d} removed from {name}")
    if wait:
        wait_converged(ctx.client, name, after)


# ----------------------------------------------------------------------------- creds / secrets / nodes


@cli.group()
def creds() -> None:
    """Git credentials for private repositories."""


@creds.command("set")
@click.argument("scope")
@click.option("--token-stdin", is_flag=True, required=True, help="Read the token from standard input.")
@pass_ctx
def creds_set(ctx: Ctx, scope: str, token_stdin: bool) -> None:
    """Store a token for OWNER or OWNER/REPO (the more specific wins)."""
    token = sys.stdin.readline().strip()
    if not token:
        raise Invalid("no token on standard input")
    name = re.sub(r"[^a-z0-9-]+", "-", scope.lower()).strip("-")[:63] or "cred"
    body = {
        "apiVersion": "forge/v1",
        "kind": "RepoCredential",
        "metadata": {"name": name},
        "spec": {"scope": scope, "token": token},
    }
    try:
        cur = ctx.client.get("repocredentials", name)
        body["metadata"] = cur["metadata"]
        ctx.client.replace("repocredentials", name, body)
    except NotFound:
        ctx.client.create("repocredentials", body)
    click.echo(f"credential for {scope} stored")


@cli.group(cls=ListByDefault)
def secrets() -> None:
    """An app's encrypted secrets (env vars whose values are never shown): set, unset, list."""


@secrets.command("rotate-key")
@pass_ctx
def secrets_rotate(ctx: Ctx) -> None:
    """Re-encrypt every secret under a fresh key."""
    out = ctx.client.request("POST", "/api/v1/secrets/rotate-key", json={})
    count = out.get("rotated", out.get("reencrypted"))
    click.echo(
        f"re-encrypted {count if isinstance(count, int) else 'every'} secret value(s) under a new key"
        + (f" {out['keyId']}" if out.get("keyId") else "")
    )
