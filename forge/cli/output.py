"""Printing records for people (tables) and scripts (json, yaml)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click
import yaml

from forge.clock import SystemClock, parse_iso
from forge.textsafe import printable


def age(ts: str | None, now: float | None = None) -> str:
    """``2026-11-28T03:00:00.000Z`` → ``5m``; ``-`` when unknown."""
    if not ts:
        return "-"
    try:
        secs = max(0, int((now if now is not None else SystemClock().now()) - parse_iso(ts)))
    except ValueError:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None or c == "" else printable(str(c)) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def dig(obj: dict | None, path: str, default: Any = None) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def condition(obj: dict, type_: str) -> str:
    for c in dig(obj, "status.conditions", []) or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return "-"


Column = tuple[str, Callable[[dict], Any]]

COLUMNS: dict[str, list[Column]] = {
    "App": [
        ("NAME", lambda o: o["metadata"]["name"]),
        ("REPO", lambda o: dig(o, "spec.repo")),
        ("BRANCHES", lambda o: ",".join(dig(o, "spec.branches", []) or [])),
        ("LIVE", lambda o: dig(o, "status.liveDeployment")),
        ("AVAILABLE", lambda o: condition(o, "Available")),
        ("URL", lambda o: dig(o, "status.url")),
        ("AGE", lambda o: age(dig(o, "metadata.createdAt"))),
    ],
    "Deployment": [
        ("NAME", lambda o: o["metadata"]["name"]),
        ("COMMIT", lambda o: (dig(o, "spec.commit") or "")[:7]),
        ("TRIGGER", lambda o: dig(o, "spec.trigger.type")),
        ("PHASE", lambda o: dig(o, "status.phase")),
        ("READY", lambda o: f"{dig(o, 'status.readyReplicas', 0)}/{dig(o, 'status.replicas', 0)}"),
        ("REASON", lambda o: dig(o, "status.reason")),
        ("AGE", lambda o: age(dig(o, "metadata.createdAt"))),
    ],
    "Instance": [
        ("NAME", lambda o: o["metadata"]["name"]),
        ("NODE", lambda o: dig(o, "spec.node")),
        ("DESIRED", lambda o: dig(o, "spec.desired")),
        ("PHASE", lambda o: dig(o, "status.phase")),
        (
            "ADDRESS",
            lambda o: (
                f"{dig(o, 'status.address') or '?'}:{dig(o, 'status.port')}"
                if dig(o, "status.port")
                else None
            ),
        ),
        ("READY", lambda o: dig(o, "status.ready")),
        ("RESTARTS", lambda o: dig(o, "status.restarts", 0)),
        ("REASON", lambda o: dig(o, "status.reason")),
        ("AGE", lambda o: age(dig(o, "metadata.createdAt"))),
    ],
    "Node": [
        ("NAME", lambda o: o["metadata"]["name"]),
        ("READY", lambda o: condition(o, "Ready")),
        ("ADDRESS", lambda o: dig(o, "spec.address")),
        ("CPU", lambda o: dig(o, "status.capacity.cpu")),
        ("MEMORY", lambda o: f"{int(dig(o, 'status.capacity.memory', 0) or 0) // (1 << 20)}Mi"),
        (
            "ISOLATION",
            lambda o: (
                f"cgroups={dig(o, 'status.isolation.cgroups')} bwrap={dig(o, 'status.isolation.bwrap')} "
                f"network={dig(o, 'status.isolation.network')}"
            ),
        ),
        ("HEARTBEAT", lambda o: age(dig(o, "status.lastHeartbeatTime"))),
    ],
    "Event": [
        ("LAST", lambda o: age(dig(o, "spec.lastTime"))),
        ("TYPE", lambda o: dig(o, "spec.type")),
        ("REASON", lambda o: dig(o, "spec.reason")),
        (
            "OBJECT",
            lambda o: (
                f"{dig(o, 'spec.involvedObject.kind', '').lower()}/{dig(o, 'spec.involvedObject.name')}"
            ),
        ),
        ("COUNT", lambda o: dig(o, "spec.count")),
        ("MESSAGE", lambda o: dig(o, "spec.message")),
    ],
    "Secret": [
        ("NAME", lambda o: o["metadata"]["name"]),
        ("APP", lambda o: dig(o, "spec.app")),
        ("KEYS", lambda o: ",".join(dig(o, "status.keys", []) or [])),
        ("UPDATED", lambda o: age(dig(o, "status.updatedTime") or dig(o, "metadata.updatedAt"))),
    ],
    "RepoCredential": [
        ("NAME", lambda o: o["metadata"]["name"]),
        ("SCOPE", lambda o: dig(o, "spec.scope")),
        ("AGE", lambda o: age(dig(o, "metadata.createdAt"))),
    ],
}
DEFAULT_COLUMNS: list[Column] = [
    ("NAME", lambda o: o["metadata"]["name"]),
    ("AGE", lambda o: age(dig(o, "metadata.createdAt"))),
]


def render(items: list[dict], kind: str, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(items[0] if len(items) == 1 and fmt == "json-one" else items, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump_all(items, sort_keys=False).rstrip()
    cols = COLUMNS.get(kind, DEFAULT_COLUMNS)
    return table([c[0] for c in cols], [[f(o) for _, f in cols] for o in items])


def emit(data: Any, fmt: str, human: Callable[[], str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        click.echo(human())  # human views are built from printable() cells and lines
