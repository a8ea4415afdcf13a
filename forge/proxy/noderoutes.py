"""Routes from the proxy host to every other node's instance subnet: the flat, routed layout.

The service map DNATs a connection to ``INSTANCE_IP:PORT``; for an Instance on another node
that address lives in the node's ``status.instanceSubnet`` (a /24 behind the node's bridge),
so the proxy host needs ``SUBNET via NODE_ADDRESS`` — flannel's host-gw, Calico without
encapsulation: no tunnel, no extra header, the kernel forwards. The node's own filter table
accepts new connections to its bridge from the proxy host's address (``FORGE_PROXY_FROM``).

Only what this module added is ever removed: the routes it installed are kept in
``DATA/node-routes.json`` and deleted with their exact gateway. A node whose address is one of
this host's own (the local agent of ``forge up``) needs no route; a subnet the API would refuse
(``forge.subnets``: outside the instance pool, a special range, one of this host's own addresses
or routes — a record written past the API) gets no route, nor does one that overlaps a
network this host already has (its own bridge, a LAN) or another node's subnet gets no route
and a reason, which the router turns into a Warning Event on that Node. A node on a link of
this host gets a host route, as with host-gw; a node elsewhere (another subnet of a VPC, behind
a VPN) is left to the network, which must route its instance subnet to it (the Terraform
module adds those VPC routes).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from forge.atomicfile import write_atomic
from forge.errors import Invalid
from forge.models import Node
from forge.proxy.nft import NetError, ip, ip_json, ipv4_routes
from forge.subnets import DEFAULT_POOL, HostNetworks, check_subnet, host_networks, parse_pool

log = logging.getLogger(__name__)

Routes = dict[str, str]  # instance subnet -> the node address it is routed via


def plan(
    nodes: Iterable[Node],
    local_addresses: set[str],
    connected: list[tuple[ipaddress.IPv4Network, str]],
    ours: Routes,
    on_link: list[ipaddress.IPv4Network] | None = None,
    pool: ipaddress.IPv4Network | None = None,
    host: HostNetworks = (),
) -> tuple[Routes, dict[str, str]]:
    """(subnet → via for every node that needs a route, node name → why it gets none).

    Nodes are taken oldest first (by creation time, then name): of two nodes claiming
    overlapping subnets the one that was there first keeps its route. A node whose address is
    not on a link of this host (``on_link``; None: every address counts as on-link) is left to
    the network: a VPC route table or a VPN routes its subnet, as it must reach the address."""
    want: Routes = {}
    problems: dict[str, str] = {}
    claimed: list[tuple[ipaddress.IPv4Network, str]] = []
    for node in sorted(nodes, key=lambda n: (n.metadata.created_at or "", n.metadata.name)):
        subnet_text, address = node.status.instance_subnet, node.spec.address
        if not subnet_text or not address or node.metadata.deletion_timestamp is not None:
            continue
        try:
            subnet = ipaddress.ip_network(subnet_text, strict=False)
            via = ipaddress.ip_address(address)
        except ValueError:
            problems[node.metadata.name] = (
                f"instanceSubnet {subnet_text!r} or address {address!r} is not an IP"
            )
            continue
        if not isinstance(subnet, ipaddress.IPv4Network) or via.version != 4:
            problems[node.metadata.name] = f"{subnet_text} via {address}: only IPv4 is routed"
            continue
        if address in local_addresses or via.is_loopback:
            claimed.append((subnet, node.metadata.name))  # this host's own agent: its bridge is here
            continue
        try:  # the API's rule again: a record written past it routes nothing
            check_subnet(subnet_text, pool or parse_pool(DEFAULT_POOL), host)
        except Invalid as exc:
            problems[node.metadata.name] = f"refused: {exc.message}"
            continue
        other = next((who for net, who in claimed if net.overlaps(subnet)), None)
        if other is not None:
            problems[node.metadata.name] = (
                f"its instance subnet {subnet} overlaps node {other}'s; give it another "
                "with FORGE_INSTANCE_SUBNET"
            )
            continue
        clash = next((dev for net, dev in connected if net.overlaps(subnet)), None)
        if clash is not None and ours.get(str(subnet)) != address:
            problems[node.metadata.name] = (
                f"its instance subnet {subnet} overlaps a network this proxy host "
                f"already has on {clash}; give it another with FORGE_INSTANCE_SUBNET"
            )
            continue
        claimed.append((subnet, node.metadata.name))
        if on_link is not None and not any(via in net for net in on_link):
            continue  # routed by the network, not by a host route here
        want[str(subnet)] = address
    return want, problems


class NodeRoutes:
    """The routes of one proxy host (the router controller's, next to its service map)."""

    def __init__(self, data_dir: str | Path, pool: ipaddress.IPv4Network | None = None) -> None:
        self._path = Path(data_dir) / "node-routes.json"
        self.pool = pool or parse_pool(DEFAULT_POOL)
        self._lock = threading.Lock()

    def installed(self) -> Routes:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("node routes %s unreadable (%s); treating as none", self._path, exc)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save(self, routes: Routes) -> None:
        write_atomic(self._path, json.dumps(routes, indent=1, sort_keys=True).encode())

    def sync(self, nodes: Sequence[Node]) -> tuple[list[str], dict[str, str]]:
        """Make the kernel hold exactly the routes ``nodes`` need; (what changed, node → problem)."""
        with self._lock:
            ours = self.installed()
            local = _local_addresses()
            kernel = _kernel_routes()
            connected = [
                (net, dev) for net, (dev, via) in kernel.items() if via is None or ours.get(str(net)) != via
            ]
            on_link = [net for net, (_dev, via) in kernel.items() if via is None]
            host = host_networks(exempt=ours.items())
            want, problems = plan(nodes, local, connected, ours, on_link, self.pool, host)
            changed: list[str] = []
            for subnet, via in sorted(ours.items()):
                if want.get(subnet) != via:
                    ip(f"route del {subnet} via {via}", check=False)
                    changed.append(f"-{subnet} via {via}")
            kept: Routes = {}
            for subnet, via in sorted(want.items()):
                net = ipaddress.ip_network(subnet)
                have = kernel.get(net) if isinstance(net, ipaddress.IPv4Network) else None
                if have is not None and have[1] == via and ours.get(subnet) == via:
                    kept[subnet] = via
                    continue
                try:
                    ip(f"route replace {subnet} via {via}")
                except NetError as exc:
                    problems[_owner(nodes, subnet)] = f"cannot route {subnet} via {via}: {exc.message}"
                    continue
                kept[subnet] = via
                changed.append(f"+{subnet} via {via}")
            if kept != ours:
                self._save(kept)
            return changed, problems

    def teardown(self) -> None:
        with self._lock:
            for subnet, via in self.installed().items():
                ip(f"route del {subnet} via {via}", check=False)
            self._save({})


def _owner(nodes: Sequence[Node], subnet: str) -> str:
    return next(
        (
            n.metadata.name
            for n in nodes
            if n.status.instance_subnet
            and str(ipaddress.ip_network(n.status.instance_subnet, strict=False)) == subnet
        ),
        subnet,
    )


def _local_addresses() -> set[str]:
    return {str(a.get("local")) for link in ip_json("-4", "addr", "show") for a in link.get("addr_info", [])}


def _kernel_routes() -> dict[ipaddress.IPv4Network, tuple[str, str | None]]:
    """Main-table IPv4 routes with a prefix: network → (device, gateway or None)."""
    return {r.net: (r.dev, r.gateway) for r in ipv4_routes()}
