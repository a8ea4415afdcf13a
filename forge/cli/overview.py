"""``forge status`` with no name: one line per app — live release, latest release, readiness, URL."""

from __future__ import annotations

from typing import Any

from forge.cli import Ctx
from forge.cli.output import dig, emit, table
from forge.models import deployment_number


def app_rows(apps: list[dict], deployments: list[dict], instances: list[dict]) -> list[dict[str, Any]]:
    """One summary per app (pure: from the three lists)."""
    rows = []
    for app in sorted(apps, key=lambda a: a["metadata"]["name"]):
        name = app["metadata"]["name"]
        deps = sorted(
            (d for d in deployments if dig(d, "spec.app") == name),
            key=lambda d: deployment_number(d["metadata"]["name"]),
        )
        live = dig(app, "status.liveDeployment")
        latest = deps[-1] if deps else None
        running = [
            i
            for i in instances
            if dig(i, "spec.app") == name
            and dig(i, "spec.desired") == "Running"
            and not dig(i, "spec.oneshot")
        ]
        live_insts = [i for i in running if dig(i, "spec.deployment") == live]
        latest_text = "-"
        if latest is not None and latest["metadata"]["name"] != live:
            latest_text = f"{latest['metadata']['name']} {dig(latest, 'status.phase') or 'Pending'}"
            if dig(latest, "status.reason"):
                latest_text += f" ({dig(latest, 'status.reason')})"
        rows.append(
            {
                "name": name,
                "live": live,
                "latest": latest_text,
                "ready": sum(1 for i in live_insts if dig(i, "status.ready")),
                "instances": len(live_insts),
                "url": dig(app, "status.url"),
            }
        )
    return rows


def overview(ctx: Ctx, fmt: str) -> None:
    apps, _ = ctx.client.list("apps")
    deployments, _ = ctx.client.list("deployments")
    instances, _ = ctx.client.list("instances")
    rows = app_rows(apps, deployments, instances)

    def human() -> str:
        if not rows:
            return "no apps yet: forge apps create NAME --repo OWNER/REPO"
        return table(
            ["APP", "LIVE", "LATEST (NOT LIVE)", "READY", "URL"],
            [
                [r["name"], r["live"] or "none", r["latest"], f"{r['ready']}/{r['instances']}", r["url"]]
                for r in rows
            ],
        )

    emit({"apps": rows}, fmt, human)
