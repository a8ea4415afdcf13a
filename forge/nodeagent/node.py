"""This machine as a Node: what it offers (from /proc and PATH) and its heartbeat Lease."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from forge import errors
from forge.client import ForgeClient
from forge.clock import Clock
from forge.models import (
    COND_AGENT_READY,
    Capacity,
    Isolation,
    Node,
    NodeStatus,
    derive_node_readiness,
    set_condition,
)

AGENT_VERSION = "0.1.0"
RUNTIME_CANDIDATES: tuple[str, ...] = (
    "python3",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
    "node",
    "deno",
    "bun",
    "ruby",
    "go",
    "java",
    "php",
    "perl",
    "dotnet",
    "rustc",
    "cargo",
)
RESERVED_CPU = 0.1  # cores kept back for the agent and the system
RESERVED_MEMORY = 256 * 1024 * 1024
REASON_AGENT_READY = "AgentReady"


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def capacity() -> tuple[Capacity, Capacity]:
    """(capacity, allocatable): CPUs and MemTotal, minus a small reserve for allocatable."""
    cpu = float(os.cpu_count() or 1)
    mem = meminfo().get("MemTotal", 0)
    alloc = Capacity(
        cpu=max(0.0, round(cpu - RESERVED_CPU, 3)), memory=max(0, mem - min(RESERVED_MEMORY, mem // 4))
    )
    return Capacity(cpu=cpu, memory=mem), alloc


def runtimes(path: str = "/usr/local/bin:/usr/bin:/bin") -> list[str]:
    return [r for r in RUNTIME_CANDIDATES if shutil.which(r, path=path)]


def node_status(
    current: dict[str, Any],
    isolation: Isolation,
    metrics_address: str | None,
    now_iso: str,
    subnet: str | None = None,
) -> dict[str, Any]:
    cap, alloc = capacity()
    status = NodeStatus.model_validate(current or {})
    status.capacity, status.allocatable = cap, alloc
    status.isolation = isolation
    status.instance_subnet = subnet
    status.runtimes = runtimes()
    status.agent_version = AGENT_VERSION
    status.metrics_address = metrics_address
    status.last_heartbeat_time = now_iso
    message = "agent is running" + (
        f"; isolation missing: {'; '.join(isolation.missing)}" if isolation.missing else ""
    )
    # The agent's own word only: the Node's Ready and phase are derived from it and the nodes
    # controller's NodeLost (forge.models.derive_node_readiness). A node written off stays
    # NotReady until its Lease is renewed, which the agent does only after stopping what is no
    # longer assigned here.
    set_condition(status, COND_AGENT_READY, "True", REASON_AGENT_READY, message, now_iso)
    derive_node_readiness(status)
    return status.dump()


def register(
    client: ForgeClient,
    name: str,
    address: str,
    isolation: Isolation,
    metrics_address: str | None,
    clock: Clock,
    subnet: str | None = None,
) -> dict[str, Any]:
    """Create or update our Node (spec.address), then write its status; returns the Node."""
    try:
        node = client.get("nodes", name)
    except errors.NotFound:
        body = Node.model_validate({"metadata": {"name": name}, "spec": {"address": address}}).dump()
        try:
            node = client.create("nodes", body)
        except errors.AlreadyExists:
            node = client.get("nodes", name)
    if node.get("spec", {}).get("address") != address:
        node["spec"] = {**node.get("spec", {}), "address": address}
        node = client.replace("nodes", name, node)
    for _ in range(5):
        node["status"] = node_status(
            node.get("status") or {}, isolation, metrics_address, clock.now_iso(), subnet
        )
        try:
            return client.replace_status("nodes", name, node)
        except errors.SubnetTaken:
            raise  # not a race: another node has this subnet (the agent picks another)
        except errors.Conflict:
            node = client.get("nodes", name)
    raise errors.Conflict(f"node {name}: status kept changing under us")


def renew_lease(
    client: ForgeClient, name: str, duration: float, clock: Clock, last: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Renew (or create) Lease ``node.NAME`` held by this node; returns the Lease as written.

    ``last``: the Lease this agent wrote last time. Renewing it is one PUT with its
    resourceVersion (200 idle nodes cost the API one request per heartbeat each, not two); a
    Conflict or NotFound falls back to reading it first."""
    lease_name = f"node.{name}"
    now = clock.now_iso()
    if last is not None and (last.get("spec") or {}).get("holder") == name:
        body = {**last, "spec": {**last["spec"], "renewTime": now, "durationSeconds": duration}}
        try:
            return dict(client.replace("leases", lease_name, body))
        except (errors.Conflict, errors.NotFound):
            pass
    try:
        lease = client.get("leases", lease_name)
    except errors.NotFound:
        body = {
            "metadata": {"name": lease_name},
            "spec": {"holder": name, "renewTime": now, "acquireTime": now, "durationSeconds": duration},
        }
        try:
            return dict(client.create("leases", body))
        except errors.AlreadyExists:
            lease = client.get("leases", lease_name)
    spec = dict(lease.get("spec") or {})
    if spec.get("holder") != name:
        spec["acquireTime"] = now
        spec["transitions"] = int(spec.get("transitions") or 0) + 1
    spec.update({"holder": name, "renewTime": now, "durationSeconds": duration})
    lease["spec"] = spec
    return dict(client.replace("leases", lease_name, lease))
