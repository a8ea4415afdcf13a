"""Which instance subnets a Node may claim: the one rule the API and the route installer share.

A Node's ``status.instanceSubnet`` becomes a route on every proxy host (``SUBNET via
NODE_ADDRESS``), so a node token that could claim any network could make the control plane
route the internet, its metadata service or its own loopback to a worker. A subnet is accepted
only when it is

* an IPv4 network of ``/MIN_PREFIX`` to ``/MAX_PREFIX`` (16 to 28: a /28 still holds a gateway
  and 13 Instances, a /16 is already a whole default pool),
* inside the cluster's instance pool (``FORGE_INSTANCE_POOL``, default ``10.213.0.0/16``, the
  pool the agents pick their /24 from),
* clear of loopback, link-local, multicast and the other special ranges (checked on the pool
  and on every subnet, so an operator's pool cannot open them either),
* clear of the host's own addresses and routes (the API checks the control-plane host it runs
  on; each proxy host checks its own before it installs a route). Forge's own bridges and the
  routes Forge installed to the cluster's nodes are not "the host's": they are the subnets.

``check_subnet`` raises ``Invalid`` naming the field and the pool; the route installer turns
the same message into a Warning Event on the Node.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import Final

from forge.errors import Invalid
from forge.proxy.nft import NetError, ip_json, ipv4_routes

log = logging.getLogger(__name__)

DEFAULT_POOL: Final[str] = "10.213.0.0/16"
MIN_PREFIX: Final[int] = 16
MAX_PREFIX: Final[int] = 28
FIELD: Final[str] = "status.instanceSubnet"
FORGE_BRIDGE_PREFIX: Final[str] = "fgb"  # forge.nodeagent.network.NetNames.bridge
SPECIAL: Final[tuple[tuple[ipaddress.IPv4Network, str], ...]] = tuple(
    (ipaddress.IPv4Network(net), what)
    for net, what in (
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
        ("169.254.0.0/16", "link-local and cloud metadata (169.254.0.0/16)"),
        ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
        ("240.0.0.0/4", "reserved and broadcast (240.0.0.0/4)"),
    )
)

HostNetworks = Sequence[tuple[ipaddress.IPv4Network, str]]  # (network, what it is on this host)


def parse_pool(text: str) -> ipaddress.IPv4Network:
    """``FORGE_INSTANCE_POOL``: an IPv4 network (/8 to /28) clear of the special ranges."""
    try:
        pool = ipaddress.ip_network((text or DEFAULT_POOL).strip(), strict=True)
    except ValueError as exc:
        raise Invalid(f"FORGE_INSTANCE_POOL: {exc}") from None
    if not isinstance(pool, ipaddress.IPv4Network) or not 8 <= pool.prefixlen <= MAX_PREFIX:
        raise Invalid(f"FORGE_INSTANCE_POOL: {text!r} must be an IPv4 network from /8 to /{MAX_PREFIX}")
    for net, what in SPECIAL:
        if pool.overlaps(net):
            raise Invalid(f"FORGE_INSTANCE_POOL: {pool} overlaps {what}")
    return pool


def _refuse(message: str, text: str) -> Invalid:
    return Invalid(f"{FIELD} {text!r}: {message}", [{"path": FIELD, "message": message}])


def check_subnet(text: str, pool: ipaddress.IPv4Network, host: HostNetworks = ()) -> ipaddress.IPv4Network:
    """The subnet ``text`` names, when a Node may have it (see the module docstring); otherwise
    ``Invalid`` naming ``status.instanceSubnet`` and the allowed pool."""
    allowed = (
        f"allowed: a /{MIN_PREFIX} to /{MAX_PREFIX} inside the instance pool {pool} (FORGE_INSTANCE_POOL)"
    )
    try:
        net = ipaddress.ip_network(str(text).strip(), strict=True)
    except ValueError:
        raise _refuse(f"not an IPv4 network address with a prefix; {allowed}", text) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise _refuse(f"not IPv4; {allowed}", text)
    for special, what in SPECIAL:
        if net.overlaps(special):
            raise _refuse(f"overlaps {what}; {allowed}", text)
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise _refuse(f"a /{net.prefixlen} is no sane size; {allowed}", text)
    if not net.subnet_of(pool):
        raise _refuse(f"outside the instance pool; {allowed}", text)
    for have, what in host:
        if net.overlaps(have):
            raise _refuse(f"overlaps {what} of this host ({have}); {allowed}", text)
    return net


def host_networks(exempt: Iterable[tuple[str, str]] = ()) -> list[tuple[ipaddress.IPv4Network, str]]:
    """This host's own IPv4 addresses (each a /32) and prefix routes, without Forge's bridges and
    without ``exempt`` ((subnet, gateway): the routes Forge installed to the cluster's nodes).
    Empty, with a warning, when iproute2 cannot be asked (the route installer checks again)."""
    skip = {(str(ipaddress.ip_network(s, strict=False)), g) for s, g in exempt}
    out: list[tuple[ipaddress.IPv4Network, str]] = []
    try:
        for link in ip_json("-4", "addr", "show"):
            dev = str(link.get("ifname", ""))
            if dev.startswith(FORGE_BRIDGE_PREFIX):
                continue
            for a in link.get("addr_info", []):
                try:
                    out.append((ipaddress.IPv4Network(f"{a.get('local')}/32"), f"the address on {dev}"))
                except ValueError:
                    continue
        for r in ipv4_routes("table", "all"):
            if r.dev.startswith(FORGE_BRIDGE_PREFIX) or r.type in ("broadcast", "local"):
                continue
            if (str(r.net), r.gateway or "") in skip or r.net.prefixlen == 0:
                continue
            out.append((r.net, f"the route on {r.dev}" + (f" via {r.gateway}" if r.gateway else "")))
    except (NetError, OSError, ValueError) as exc:
        log.warning("cannot read this host's addresses and routes (%s); not checked here", exc)
        return []
    return out
