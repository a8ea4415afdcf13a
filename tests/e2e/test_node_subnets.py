"""A node token cannot make the control plane route what is not the cluster's (issue 19).

The control plane runs in a network namespace of its own (``tests/e2e/multihost.py``, no
workers), so whatever its router installs lands in that namespace, never on the machine. A
rogue node (its own token, an on-link address) claims public, link-local, loopback, out-of-pool
and host-overlapping instance subnets: the API refuses each with 400 Invalid naming the field
and the pool. The same subnets written straight into the store (past the API) are refused again
by the route installer, with a Warning Event naming the node, and no route appears.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forge.models import Node
from forge.store.factory import open_store
from tests.e2e.harness import needs_caddy, wait_for
from tests.e2e.multihost import Cluster

pytestmark = [needs_caddy, pytest.mark.timeout(300)]

POOL = "10.216.0.0/16"  # the operator's pool: it holds the control plane's own LAN (multihost.POOL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("nftables and iproute2 are needed")
    root = Path(tempfile.mkdtemp(prefix="forge-subnets-"))
    c = Cluster(root, workers=0)
    c.env["FORGE_INSTANCE_POOL"] = POOL
    try:
        c.build()
        c.start_control_plane()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def routes(c: Cluster) -> dict[str, str]:
    """The control plane's IPv4 routes, every table: destination → the rest of the line."""
    out = subprocess.run(
        ["ip", "-n", c.cp.netns, "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return {r.get("dst", ""): json.dumps(r) for r in json.loads(out or "[]")}


def route_events(c: Cluster, node: str) -> list[str]:
    with c.client as h:
        items = h.get("/api/v1/events").json()["items"]
    return [
        e["spec"]["message"]
        for e in items
        if e["spec"]["involvedObject"]["name"] == node
        and e["spec"]["reason"] == "NodeRouteFailed"
        and e["spec"]["type"] == "Warning"
    ]


def test_a_node_token_can_route_only_its_own_subnet_inside_the_pool(cluster: Cluster) -> None:
    c = cluster
    node = f"rogue-{c.tag}"
    address = str(list(c.net.hosts())[8])  # on the control plane's link: it would get a host route
    with c.client as h:
        token = h.post(f"/api/v1/nodes/{node}/token", json={}).json()["token"]
    rogue = httpx.Client(base_url=c.api, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    with rogue:
        r = rogue.post("/api/v1/nodes", json={"metadata": {"name": node}, "spec": {"address": address}})
        assert r.status_code == 201, r.text
        own_lan = c.net  # the control plane's own network (its eth0 route)
        own_address = ipaddress.ip_network(f"{c.cp.address}/28", strict=False)
        bad = {
            "public": "140.82.112.0/20",
            "link-local": "169.254.169.0/24",
            "loopback": "127.0.0.0/16",
            "outside the pool": "10.213.5.0/24",
            "host route": str(own_lan),
            "host address": str(own_address),
            "too big": "10.216.0.0/15",
        }
        for what, subnet in bad.items():
            r = rogue.patch(f"/api/v1/nodes/{node}/status", json={"status": {"instanceSubnet": subnet}})
            assert r.status_code == 400, (what, subnet, r.text)
            body = r.json()
            assert body["error"] == "Invalid" and body["details"][0]["path"] == "status.instanceSubnet", body
            assert POOL in body["message"], body
        assert subnet not in routes(c)
        # A subnet inside the pool, clear of the host, is accepted and routed (the control).
        good = next(
            str(n)
            for n in ipaddress.ip_network(POOL).subnets(new_prefix=24)
            if not n.overlaps(own_lan) and n.network_address.packed[2] > 200
        )
        r = rogue.patch(f"/api/v1/nodes/{node}/status", json={"status": {"instanceSubnet": good}})
        assert r.status_code == 200, r.text
    wait_for(lambda: address in routes(c).get(good, ""), 30, f"{good} routed via {address}")

    # The same subnets written past the API, straight into the store: the route installer refuses
    # each again, names the node in a Warning Event, and installs nothing.
    store = open_store(f"sqlite:///{c.cp.data / 'forge.db'}")
    try:
        for what, subnet in bad.items():
            n = store.get(Node, node)
            n.status.instance_subnet = subnet
            store.update_status(n)
            wait_for(
                lambda s=subnet: any(s in m for m in route_events(c, node)),
                40,
                f"a NodeRouteFailed Event for {what} {subnet}",
            )
            table = routes(c)
            assert subnet not in table or address not in table[subnet], (what, table.get(subnet))
            assert good not in table, "the node's earlier route is withdrawn"
        messages = route_events(c, node)
        assert all(node in m for m in messages) and any(POOL in m for m in messages), messages
    finally:
        store.close()
