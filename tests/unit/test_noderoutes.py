"""The proxy host's routes to other nodes' instance subnets (``forge.proxy.noderoutes.plan``), the
node side's proxy sources (the API's refusal of overlapping subnets: tests/api/test_node_subnets.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from forge.errors import Invalid
from forge.models import Node
from forge.nodeagent.network import NodeNetwork, _avoided, default_proxy_sources, parse_proxy_sources
from forge.proxy.noderoutes import plan


def node(name: str, address: str, subnet: str | None, created: str = "2026-01-01T00:00:00Z") -> Node:
    return Node.model_validate({"metadata": {"name": name, "createdAt": created}, "spec": {"address": address},
                                "status": {"instanceSubnet": subnet} if subnet else {}})


LAN = [(ipaddress.ip_network("10.0.0.0/24"), "eth0")]


def test_each_remote_node_is_routed_via_its_address() -> None:
    want, problems = plan([node("a", "10.0.0.3", "10.213.1.0/24"), node("b", "10.0.0.4", "10.213.2.0/24")],
                          {"10.0.0.2"}, LAN, {})
    assert want == {"10.213.1.0/24": "10.0.0.3", "10.213.2.0/24": "10.0.0.4"} and problems == {}


def test_this_hosts_own_agent_and_nodes_without_a_subnet_need_no_route() -> None:
    want, problems = plan([node("local", "10.0.0.2", "10.213.9.0/24"), node("lo", "127.0.0.1", "10.213.8.0/24"),
                           node("shared", "10.0.0.5", None)], {"10.0.0.2"}, LAN, {})
    assert want == {} and problems == {}


def test_an_overlapping_subnet_is_refused_for_the_younger_node_and_named() -> None:
    old = node("old", "10.0.0.3", "10.213.1.0/24", created="2026-01-01T00:00:00Z")
    young = node("young", "10.0.0.4", "10.213.1.128/25", created="2026-02-01T00:00:00Z")
    want, problems = plan([young, old], set(), LAN, {})
    assert want == {"10.213.1.0/24": "10.0.0.3"}
    assert "overlaps node old's" in problems["young"] and "FORGE_INSTANCE_SUBNET" in problems["young"]
    # The local agent's subnet counts as claimed too.
    want, problems = plan([node("local", "10.0.0.2", "10.213.1.0/24"), young], {"10.0.0.2"}, LAN, {})
    assert want == {} and "overlaps node local's" in problems["young"]


def test_a_subnet_clashing_with_a_network_of_this_host_is_not_routed() -> None:
    wide = ipaddress.ip_network("10.0.0.0/8")  # an operator's pool that takes in the LAN
    want, problems = plan([node("a", "10.0.0.3", "10.0.0.0/25")], set(), LAN, {}, pool=wide)
    assert want == {} and "already has on eth0" in problems["a"]
    want, problems = plan([node("a", "10.0.0.3", "10.0.0.0/25")], set(), [], {}, pool=wide, host=LAN)
    assert want == {} and "overlaps eth0 of this host" in problems["a"]
    # ... unless the clashing route is the one we installed for that very node.
    mine = [(ipaddress.ip_network("10.213.1.0/24"), "eth0")]
    want, problems = plan([node("a", "10.0.0.3", "10.213.1.0/24")], set(), mine, {"10.213.1.0/24": "10.0.0.3"})
    assert want == {"10.213.1.0/24": "10.0.0.3"} and problems == {}


@pytest.mark.parametrize("subnet", ["140.82.112.0/20", "169.254.169.0/24", "127.0.0.0/16", "10.214.0.0/24",
                                    "10.213.0.0/8", "224.0.0.0/24", "10.213.1.0/30"])
def test_a_subnet_the_api_would_refuse_is_not_routed_and_named(subnet: str) -> None:
    """A record written past the API (straight into the store) routes nothing: the same rule."""
    want, problems = plan([node("rogue", "10.0.0.3", subnet), node("good", "10.0.0.4", "10.213.2.0/24")],
                          set(), LAN, {})
    assert want == {"10.213.2.0/24": "10.0.0.4"}
    assert "refused" in problems["rogue"] and "10.213.0.0/16" in problems["rogue"], problems


def test_a_node_off_this_hosts_links_is_left_to_the_network() -> None:
    """Workers in another subnet of a VPC: the VPC's route table carries their instance subnets."""
    nodes = [node("near", "10.0.0.3", "10.213.1.0/24"), node("far", "10.0.2.9", "10.213.2.0/24")]
    want, problems = plan(nodes, set(), LAN, {}, on_link=[ipaddress.ip_network("10.0.0.0/24")])
    assert want == {"10.213.1.0/24": "10.0.0.3"} and problems == {}
    # ... and its subnet still counts as claimed.
    clash = node("late", "10.0.0.4", "10.213.2.0/25", created="2027-01-01T00:00:00Z")
    _, problems = plan([*nodes, clash], set(), LAN, {}, on_link=[ipaddress.ip_network("10.0.0.0/24")])
    assert "overlaps node far's" in problems["late"]


def test_malformed_or_ipv6_addresses_are_named_not_raised() -> None:
    _, problems = plan([node("v6", "fd00::3", "10.213.1.0/24"), node("bad", "nowhere", "10.213.2.0/24")], set(), [], {})
    assert "only IPv4" in problems["v6"] and "not an IP" in problems["bad"]


def test_proxy_sources_parse_and_default_to_the_api_host() -> None:
    assert parse_proxy_sources("10.0.0.2, 10.0.1.0/24,10.0.0.2") == ("10.0.0.2", "10.0.1.0/24")
    for bad in ("10.0.0.300", "fd00::1", "api.example"):
        with pytest.raises(Invalid, match="FORGE_PROXY_FROM"):
            parse_proxy_sources(bad)
    assert default_proxy_sources("http://10.0.0.2:8080") == ("10.0.0.2",)
    assert default_proxy_sources("http://127.0.0.1:8080") == ()
    assert default_proxy_sources("http://localhost:8080") == ()
    assert default_proxy_sources("http://no-such-host.invalid:8080") == ()


def test_the_node_table_accepts_new_connections_only_from_the_proxy_sources(tmp_path: Path) -> None:
    net = NodeNetwork(tmp_path, subnet="10.213.7.0/24", proxy_sources=("10.0.0.2",))
    net.subnet = ipaddress.ip_network("10.213.7.0/24")
    table = net.host_table()
    accept = next(line for line in table.splitlines() if "10.0.0.2" in line)
    assert "ip saddr { 10.0.0.2 }" in accept and "ct state new accept" in accept and "tcp" in accept
    assert table.index(accept) < table.index(f'\n    oifname "{net.names.bridge}" drop')
    net.proxy_sources = ()
    assert "ct state new accept" not in net.host_table(), "a single-node install accepts nobody"


def test_avoided_subnets_are_read_leniently() -> None:
    assert _avoided({"avoid": ["10.213.1.0/24", "junk", 5]}) == [ipaddress.ip_network("10.213.1.0/24")]
    assert _avoided({"avoid": "10.213.1.0/24"}) == []
