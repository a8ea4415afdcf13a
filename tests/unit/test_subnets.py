"""The instance-subnet rule the API and the route installer share (``forge.subnets``)."""

from __future__ import annotations

import ipaddress

import pytest

from forge.config import Config
from forge.errors import Invalid
from forge.subnets import check_subnet, parse_pool

POOL = ipaddress.ip_network("10.213.0.0/16")
HOST = [
    (ipaddress.ip_network("10.213.77.0/24"), "the route on eth1"),
    (ipaddress.ip_network("10.213.90.5/32"), "the address on lo"),
]


@pytest.mark.parametrize(
    ("subnet", "why"),
    [
        ("140.82.112.0/20", "outside the instance pool"),
        ("169.254.169.0/24", "link-local"),
        ("127.0.0.0/16", "loopback"),
        ("224.1.0.0/16", "multicast"),
        ("0.0.0.0/8", "this network"),
        ("255.255.255.0/24", "reserved"),
        ("10.213.0.0/8", "not an IPv4 network"),  # host bits set
        ("10.0.0.0/8", "no sane size"),
        ("10.213.1.0/30", "no sane size"),
        ("10.213.1.0/32", "no sane size"),
        ("fd00::/64", "not IPv4"),
        ("nonsense", "not an IPv4 network"),
        ("10.214.0.0/24", "outside the instance pool"),
        ("10.213.77.128/25", "overlaps the route on eth1"),
        ("10.213.90.0/24", "overlaps the address on lo"),
    ],
    ids=lambda v: v.replace("/", "_") if isinstance(v, str) else v,
)
def test_a_subnet_outside_the_rule_is_refused_naming_field_and_pool(subnet: str, why: str) -> None:
    with pytest.raises(Invalid) as err:
        check_subnet(subnet, POOL, HOST)
    assert why in err.value.message and "10.213.0.0/16" in err.value.message, err.value.message
    assert err.value.details == [
        {"path": "status.instanceSubnet", "message": err.value.details[0]["message"]}
    ]


@pytest.mark.parametrize("subnet", ["10.213.1.0/24", "10.213.0.0/16", "10.213.5.16/28", "10.213.128.0/17"])
def test_a_subnet_inside_the_pool_is_accepted(subnet: str) -> None:
    assert check_subnet(subnet, POOL) == ipaddress.ip_network(subnet)
    assert check_subnet("10.213.1.0/24", POOL, HOST) == ipaddress.ip_network("10.213.1.0/24")


@pytest.mark.parametrize(
    "pool",
    [
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/0",
        "10.0.0.0/4",
        "10.0.0.0/30",
        "fd00::/48",
        "10.213.0.1/16",
        "junk",
    ],
)
def test_an_operator_pool_cannot_open_the_special_ranges(pool: str) -> None:
    with pytest.raises(Invalid, match="FORGE_INSTANCE_POOL"):
        parse_pool(pool)


def test_the_pool_comes_from_the_environment() -> None:
    assert Config.from_env(env={}).pool == POOL
    assert Config.from_env(env={"FORGE_INSTANCE_POOL": "172.20.0.0/14"}).pool == ipaddress.ip_network(
        "172.20.0.0/14"
    )
    with pytest.raises(Invalid, match="FORGE_INSTANCE_POOL"):
        Config.from_env(env={"FORGE_INSTANCE_POOL": "127.0.0.0/8"})
