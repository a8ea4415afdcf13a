"""``forge run`` (a one-off command in the live release) and ``forge cron`` (an app's schedules)."""

from __future__ import annotations

import base64
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from forge.cli import Ctx, cli, pass_ctx
from forge.cli.output import age, emit, table
from forge.cli.resources import OUTPUT
from forge.errors import ForgeError, Gone
from forge.manifest import parse_duration
from forge.models import LABEL_APP, LABEL_CRON, LABEL_PROCESS
from forge.textsafe import printable

ENDED = {"Succeeded", "Failed", "Stopped", "Lost", "Skipped"}
CHUNK = 8 * 1024  # the API's largest stdin chunk


def _exit_code(inst: dict[str, Any]) -> int:
    st = inst.get("status") or {}
    if st.get("phase") == "Succeeded":
        return 0
    code = st.get("exitCode")
    if st.get("reason") == "Timeout":
        return 124
    if isinstance(code, int) and code != 0:
        return code if 0 < code < 256 else 1
    return 1


class _Output:
    """The run's output copied to our stdout once each (a follow stream, then a final read)."""

    def __init__(self, ctx: Ctx, app: str, inst: str, raw: bool) -> None:
        self.ctx, self.app, self.inst, self.raw = ctx, app, inst, raw
        self.after = 0
        self.closed = False
        self.lock = threading.Lock()

    def _print(self, line: dict[str, Any]) -> None:
        with self.lock:
            if self.closed or int(line.get("id") or 0) <= self.after:
                return
            self.after = int(line["id"])
            text = str(line.get("line", ""))
            sys.stdout.write((text if self.raw else printable(text)) + "\n")
            sys.stdout.flush()

    def _lines(self, follow: bool) -> Iterator[dict[str, Any]]:
        params = {
            "follow": "true" if follow else "false",
            "source": "app",
            "instance": self.inst,
            "timeoutSeconds": 3600,
        }
        yield from self.ctx.client.stream_lines(f"/api/v1/apps/{self.app}/logs", params)

    def follow(self) -> None:
        while not self.closed:
            try:
                for line in self._lines(True):
                    self._print(line)
            except ForgeError:
                time.sleep(0.5)

    def finish(self) -> None:
        """The run ended: its whole output is stored; print what the stream has not yet."""
        with self.lock:
            self.closed = True
            after = self.after
        for line in self._lines(False):
            if int(line.get("id") or 0) > after:
                text = str(line.get("line", ""))
                sys.stdout.write((text if self.raw else printable(text)) + "\n")
        sys.stdout.flush()


def _send_stdin(ctx: Ctx, inst: str, stop: threading.Event) -> None:
    offset = 0
    fd = sys.stdin.fileno()
    while not stop.is_set():
        data = os.read(fd, CHUNK)
        body = {"offset": offset, "data": base64.b64encode(data).decode(), "eof": not data}
        for attempt in range(5):
            try:
                ctx.client.request("POST", f"/api/v1/instances/{inst}/stdin", json=body)
                break
            except ForgeError:
                if attempt == 4:
                    return
                time.sleep(0.5)
        offset += len(data)
        if not data:
            return


def _wait(ctx: Ctx, app: str, inst: dict[str, Any]) -> dict[str, Any]:
    """The run's record once it ended (watching its changes)."""
    name = inst["metadata"]["name"]
    rv = int(inst["metadata"].get("resourceVersion") or 0)
    while True:
        try:
            for _type, obj in ctx.client.watch("instances", rv, {LABEL_APP: app}, timeout_seconds=300):
                meta = obj.get("metadata") or {}
                rv = max(rv, int(meta.get("resourceVersion") or 0))
                if meta.get("name") == name and (
                    (obj.get("status") or {}).get("phase") in ENDED or _type == "DELETED"
                ):
                    return obj
        except Gone:
            pass
        except ForgeError:
            time.sleep(1.0)
        cur = ctx.client.get("instances", name)
        if (cur.get("status") or {}).get("phase") in ENDED:
            return cur
        rv = int(cur["metadata"].get("resourceVersion") or rv)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--interactive", is_flag=True, help="Attach stdin (a shell, a REPL).")
@click.option("--timeout", default="1h", show_default=True, help="Kill it after this long (1s–24h).")
@click.option("--raw", is_flag=True, help="Pass control characters through to the terminal.")
@pass_ctx
def run(ctx: Ctx, name: str, command: tuple[str, ...], interactive: bool, timeout: str, raw: bool) -> None:
    """Run COMMAND once in a fresh sandbox of NAME's live release (its code, config, secrets and
    limits); prints its output and exits with its exit code. ``forge run APP -- CMD ARGS...``"""
    argv = list(command[1:] if command and command[0] == "--" else command)
    if not argv:
        raise click.UsageError("say what to run: forge run APP -- COMMAND ARGS...")
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--timeout") from None
    if not 1 <= seconds <= 86400:
        raise click.BadParameter("between 1s and 24h", param_hint="--timeout")
    inst = ctx.client.request(
        "POST",
        f"/api/v1/apps/{name}/runs",
        json={"argv": argv, "interactive": interactive, "timeoutSeconds": seconds},
    )
    iname = inst["metadata"]["name"]
    click.echo(f"running {shlex.join(argv)} as {iname} ({inst['spec']['deployment']})", err=True)
    done = threading.Event()

    def interrupt(_sig: int, _frame: Any) -> None:
        click.echo(f"\nstopping {iname}", err=True)
        try:
            ctx.client.patch("instances", iname, {"spec": {"desired": "Stopped"}})
        finally:
            os._exit(130)

    signal.signal(signal.SIGINT, interrupt)
    output = _Output(ctx, name, iname, raw)
    threading.Thread(target=output.follow, daemon=True).start()
    if interactive:
        threading.Thread(target=_send_stdin, args=(ctx, iname, done), daemon=True).start()
    ended = _wait(ctx, name, inst)
    done.set()
    output.finish()
    st = ended.get("status") or {}
    if st.get("phase") != "Succeeded" and st.get("reason") not in ("", None, "Error"):
        click.echo(f"{iname}: {st.get('reason')}: {st.get('message', '')}", err=True)
    sys.exit(_exit_code(ended))


@cli.command()
@click.argument("name")
@OUTPUT
@pass_ctx
def cron(ctx: Ctx, name: str, fmt: str) -> None:
    """An app's cron schedules with their last and next run."""
    from forge.controllers.cron import schedules_of
    from forge.cron import next_after
    from forge.models import Deployment

    app = ctx.client.get("apps", name)
    live = (app.get("status") or {}).get("liveDeployment")
    if not live:
        click.echo(f"{name} has no live release, so no schedules run")
        return
    dep = ctx.client.get("deployments", live)
    jobs = schedules_of(Deployment.model_validate(dep).status.manifest)
    runs, _ = ctx.client.list("instances", f"{LABEL_APP}={name},{LABEL_PROCESS}=cron")
    rows, data = [], []
    now = time.time()
    for job in jobs:
        mine = sorted(
            (r for r in runs if r["metadata"].get("labels", {}).get(LABEL_CRON) == job.name),
            key=lambda r: r["spec"]["oneshot"].get("scheduledTime") or "",
        )
        last = mine[-1] if mine else None
        nxt = next_after(job.schedule, job.timezone, now)
        last_desc = "never"
        if last is not None:
            st = last.get("status") or {}
            last_desc = (
                f"{st.get('phase') or 'Pending'} {age(last['spec']['oneshot'].get('scheduledTime'))} ago"
            )
            if st.get("exitCode") is not None:
                last_desc += f" (exit {st['exitCode']})"
        next_text = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(nxt))
        rows.append(
            [
                job.name,
                job.schedule + ("" if job.timezone == "UTC" else f" {job.timezone}"),
                last_desc,
                next_text,
                job.command[:40],
            ]
        )
        data.append(
            {
                **job.dump(),
                "lastRun": last["metadata"]["name"] if last else None,
                "lastPhase": (last or {}).get("status", {}).get("phase"),
                "nextRun": next_text,
            }
        )
    emit(
        data,
        fmt,
        lambda: (
            table(["NAME", "SCHEDULE", "LAST", "NEXT", "COMMAND"], rows)
            if rows
            else f"{live} has no cron schedules"
        ),
    )
