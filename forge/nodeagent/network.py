"""The node's data plane: every Instance and every build in its own network namespace.

Layout on a node (names derived from the agent's data dir, so two installs never meet)::

    host netns                                  instance netns  PREFIX-NAME
      bridge  fgbHHHHHH  GW/24  ◀── veth fvXXXX ══ eth0  ADDR/24, default via GW
      table inet fgnHHHHHH (filter + NAT)            lo; table ip forge: eth0 tcp → 127.0.0.1
                                                      (route_localnet, so an app bound to
                                                       127.0.0.1:$PORT answers on ADDR:$PORT)

* Bridge ports are ``isolated``: instances cannot reach each other at layer 2, and the
  forward hook drops bridge→bridge traffic at layer 3 as well.
* ``input`` from the bridge is dropped except replies (probes, proxying) and the host ports
  the operator opened (``FORGE_APP_HOST_PORTS``): Caddy's admin, the API, the metrics ports,
  sshd — nothing on the host answers an app. Link-local (169.254/16, cloud metadata) is
  dropped in ``forward``; everything else leaves through masquerade (egress stays open).
  IPv6 is off inside the namespaces, so none of this can be sidestepped over link-local v6.
* ``output``: a new connection from this host into the bridge must come from root, Forge's own
  user or the ``forge`` group (Caddy's under systemd; ``forge.hostperms.owner_refused``): other
  local users reach apps through Caddy only.
* DNS: the namespace gets its own ``resolv.conf`` (see ``resolv_conf``): the host's non-loopback
  resolvers, systemd-resolved's upstreams, or — when the host has only a loopback resolver —
  the gateway, DNAT-ed to that resolver.

Named namespaces outlive the agent (a restarted agent re-adopts the processes inside them);
``detach`` (stop) and ``sweep`` (orphans) remove them, ``teardown`` removes everything Forge
made here (``forge up`` on exit). Nothing touches a link, netns or table it did not name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from forge.atomicfile import write_atomic
from forge.errors import Invalid
from forge.hostperms import owner_refused
from forge.proxy.nft import NetError, Nft, in_netns, install_hash, ip, ip_json, ipv4_routes
from forge.subnets import DEFAULT_POOL, check_subnet, host_networks, parse_pool

log = logging.getLogger(__name__)

SUBNET_POOL: Final = parse_pool(DEFAULT_POOL)  # /24 per node; rare on LANs (FORGE_INSTANCE_POOL)
NETNS_DIR: Final[str] = "/run/netns"
LOOPBACK_RESOLVER: Final[str] = "127.0.0.53"


@dataclass(frozen=True)
class NetNames:
    """Every kernel object name of one node install (≤ 15 characters where the kernel says so)."""

    hash: str

    @property
    def bridge(self) -> str:
        return f"fgb{self.hash}"

    @property
    def table(self) -> str:
        return f"fgn{self.hash}"

    @property
    def bridge_mac(self) -> str:
        """Locally administered, unicast, stable per install."""
        h = self.hash
        return f"02:fb:{h[0:2]}:{h[2:4]}:{h[4:6]}:01"

    @property
    def netns_prefix(self) -> str:
        return f"fg{self.hash}-"

    def netns(self, name: str) -> str:
        return f"{self.netns_prefix}{name}"

    @staticmethod
    def veth(netns: str) -> str:
        return "fv" + hashlib.sha256(netns.encode()).hexdigest()[:11]


def parse_ports(text: str) -> tuple[int, ...]:
    """``FORGE_APP_HOST_PORTS``: ``5432,6379`` → (5432, 6379); anything else is an error naming it."""
    ports: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise Invalid(f"FORGE_APP_HOST_PORTS: {part!r} is not a TCP port (1-65535)")
        ports.append(int(part))
    return tuple(sorted(set(ports)))


def parse_build_env(names: str, environ: dict[str, str]) -> dict[str, str]:
    """``FORGE_BUILD_ENV=PIP_INDEX_URL,NPM_CONFIG_REGISTRY``: those variables of the agent's own
    environment, passed to builds (names only; a name not set is skipped)."""
    out: dict[str, str] = {}
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if not name.replace("_", "").isalnum() or name[0].isdigit():
            raise Invalid(f"FORGE_BUILD_ENV: {name!r} is not an environment variable name")
        if name in environ:
            out[name] = environ[name]
    return out


def parse_build_files(text: str) -> tuple[tuple[str, str], ...]:
    """``FORGE_BUILD_FILES=/etc/pip.conf,/root/.npmrc:/etc/npmrc``: host files (absolute paths)
    bound read-only into builds, at the same path or at ``:DEST``."""
    out = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        src, _, dest = item.partition(":")
        dest = dest or src
        for p in (src, dest):
            if not p.startswith("/") or ".." in p.split("/"):
                raise Invalid(f"FORGE_BUILD_FILES: {p!r} must be an absolute path without '..'")
        out.append((src, dest))
    return tuple(out)


def parse_proxy_sources(text: str) -> tuple[str, ...]:
    """``FORGE_PROXY_FROM=10.0.0.2,10.0.1.0/24``: where the proxy (Caddy, on the control-plane
    hosts) dials this node's Instances from; anything else is an error naming it."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise Invalid(f"FORGE_PROXY_FROM: {part!r} is not an IPv4 address or network") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise Invalid(f"FORGE_PROXY_FROM: {part!r} is not IPv4 (instance networks are IPv4)")
        out.append(str(net.network_address) if net.prefixlen == 32 else str(net))
    return tuple(sorted(set(out)))


def default_proxy_sources(api_url: str) -> tuple[str, ...]:
    """The API host's IPv4 addresses, unless it is this machine's loopback: with one control
    plane the proxy runs where the API does. Several control-plane hosts: set FORGE_PROXY_FROM."""
    host = urlsplit(api_url).hostname or ""
    if not host:
        return ()
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return ()
    addrs = {str(info[4][0]) for info in infos}
    return tuple(sorted(a for a in addrs if not ipaddress.ip_address(a).is_loopback))


def parse_subnet(text: str, pool: ipaddress.IPv4Network = SUBNET_POOL) -> ipaddress.IPv4Network:
    """``FORGE_INSTANCE_SUBNET``: the API's rule (``forge.subnets``), checked before the API refuses it."""
    try:
        return check_subnet(text, pool)
    except Invalid as exc:
        raise Invalid(f"FORGE_INSTANCE_SUBNET: {exc.message}") from None


def resolv_conf(
    etc: str = "/etc/resolv.conf", resolved: str = "/run/systemd/resolve/resolv.conf"
) -> tuple[str, str | None]:
    """(resolv.conf for the namespaces, loopback resolver to DNAT the gateway to, or None)."""
    for path in (etc, resolved):
        servers, rest = _read_resolv(path)
        usable = [s for s in servers if not _is_loopback(s)]
        if usable:
            return "".join(f"nameserver {s}\n" for s in usable[:3]) + "".join(rest), None
    servers, rest = _read_resolv(etc)
    loop = next((s for s in servers if _is_loopback(s) and ":" not in s), LOOPBACK_RESOLVER)
    return "".join(rest), loop


def _read_resolv(path: str) -> tuple[list[str], list[str]]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return [], []
    servers, rest = [], []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1])
        elif parts and parts[0] in ("search", "domain", "options"):
            rest.append(line.strip() + "\n")
    return servers, rest


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


class NodeNetwork:
    """Bridge, filter table and per-Instance namespaces of one node install."""

    def __init__(
        self,
        data_dir: str | Path,
        subnet: str = "",
        host_ports: tuple[int, ...] = (),
        nft: Nft | None = None,
        proxy_sources: tuple[str, ...] = (),
        pool: str = "",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pool = parse_pool(pool) if pool else SUBNET_POOL
        self.names = NetNames(install_hash(self.data_dir))
        self.host_ports = host_ports
        self.proxy_sources = proxy_sources
        self._wanted_subnet = parse_subnet(subnet, self.pool) if subnet else None
        self.nft = nft or Nft()
        self._path = self.data_dir / "network.json"
        self._lock = threading.Lock()
        self.subnet: ipaddress.IPv4Network | None = None
        self.dns_text = ""
        self.dns_loopback: str | None = None
        self.mtu = 1500

    # ------------------------------------------------------------------ node level
    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(next(self.subnet.hosts()))

    def setup(self) -> None:
        """Bridge, sysctls and the filter/NAT table; idempotent (an agent restart keeps all)."""
        with self._lock:
            state = self._load()
            self.subnet = self._choose_subnet(state)
            state["subnet"] = str(self.subnet)
            self._save(state)
        br, gw = self.names.bridge, self.gateway
        self.mtu = _uplink_mtu()
        if not _link_exists(br):
            ip(f"link add {br} type bridge")
        # A fixed MAC: a bridge without one takes the lowest MAC of its ports, so a new veth
        # could change the gateway's MAC under every running app (their ARP entries then point
        # nowhere until they expire: seconds of lost replies).
        ip(
            f"link set {br} address {self.names.bridge_mac}",
            f"addr replace {gw}/{self.subnet.prefixlen} dev {br}",
            f"link set {br} up",
        )
        self.dns_text, self.dns_loopback = resolv_conf()
        if self.dns_loopback:
            _write_sysctl(f"/proc/sys/net/ipv4/conf/{br}/route_localnet", "1")
        _write_sysctl("/proc/sys/net/ipv6/conf/" + br + "/disable_ipv6", "1")
        if _read_sysctl("/proc/sys/net/ipv4/ip_forward") != "1":
            log.warning("enabling net.ipv4.ip_forward (apps reach the outside world through NAT)")
            _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        self.nft.run(self.host_table())
        if self.dns_loopback:
            self.dns_text = f"nameserver {gw}\n" + self.dns_text

    def host_table(self) -> str:
        """The node's nftables table, replaced atomically (create, delete, recreate in one batch)."""
        assert self.subnet is not None
        t, br, gw, net = self.names.table, self.names.bridge, self.gateway, self.subnet
        ports = ", ".join(str(p) for p in self.host_ports)
        others = owner_refused()
        proxies = ""
        if self.proxy_sources:  # the proxy hosts of a multi-node cluster dial Instances here
            proxies = (
                f'    ip saddr {{ {", ".join(self.proxy_sources)} }} oifname "{br}" meta l4proto tcp '
                "ct state new accept\n"
            )
        open_ports = f'    iifname "{br}" ip daddr {gw} tcp dport {{ {ports} }} accept\n' if ports else ""
        dns_in = dns_nat = ""
        if self.dns_loopback:
            dns_in = (
                f'    iifname "{br}" ip daddr {self.dns_loopback} meta l4proto {{ tcp, udp }} th dport 53 '
                "ct status dnat accept\n"
            )
            dns_nat = (
                f"  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n"
                f'    iifname "{br}" ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 '
                f"dnat ip to {self.dns_loopback}\n  }}\n"
            )
        return (
            f"table inet {t} {{}}\ndelete table inet {t}\n"
            f"table inet {t} {{\n"
            f"  chain input {{\n    type filter hook input priority -10; policy accept;\n"
            f'    iifname "{br}" ct state established,related accept\n{dns_in}{open_ports}'
            f'    iifname "{br}" drop\n  }}\n'
            f"  chain forward {{\n    type filter hook forward priority -10; policy accept;\n"
            f'    iifname "{br}" oifname "{br}" drop\n'
            f'    iifname "{br}" ip daddr 169.254.0.0/16 drop\n'
            f'    iifname "{br}" meta nfproto ipv6 drop\n'
            f'    oifname "{br}" ct state established,related accept\n{proxies}'
            f'    oifname "{br}" drop\n  }}\n'
            f"  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n"
            f'    ip saddr {net} oifname != "{br}" masquerade\n  }}\n{dns_nat}'
            # Local users reach Instances only through Caddy: a new connection from this host into
            # the bridge must come from root (the agent's probes, Caddy under forge up) or Forge's user.
            f"  chain output {{\n    type filter hook output priority -10; policy accept;\n"
            f'    oifname "{br}" meta l4proto tcp ct state new {others} reject with tcp reset\n'
            f'    oifname "{br}" ct state new {others} reject\n  }}\n'
            f"}}\n"
        )

    def reselect(self) -> bool:
        """Another node has our (automatically chosen) subnet: take the next free one. Only
        before any namespace exists here (their addresses would change under them); False when
        the subnet was configured (FORGE_INSTANCE_SUBNET: the operator's to fix) or in use."""
        if self._wanted_subnet is not None or self.subnet is None or self.namespaces():
            return False
        with self._lock:
            state = self._load()
            state["avoid"] = sorted({str(n) for n in _avoided(state)} | {str(self.subnet)})
            state.pop("subnet", None)
            state.pop("addresses", None)
            self._save(state)
        ip(f"addr flush dev {self.names.bridge}", check=False)
        self.setup()
        return True

    def _choose_subnet(self, state: dict[str, object]) -> ipaddress.IPv4Network:
        if self._wanted_subnet is not None:
            return self._wanted_subnet
        if isinstance(state.get("subnet"), str):
            try:
                return parse_subnet(str(state["subnet"]), self.pool)
            except Invalid as exc:  # the pool changed under it: pick again
                log.warning("network state: %s; choosing another subnet", exc.message)
        taken = _routed_networks(exclude_dev=self.names.bridge)
        taken += [net for net, _what in host_networks()]  # this host's own addresses too
        taken += _avoided(state)
        pool = list(self.pool.subnets(new_prefix=max(24, self.pool.prefixlen)))
        start = int(self.names.hash, 16) % len(pool)
        for i in range(len(pool)):
            net = pool[(start + i) % len(pool)]
            if not any(net.overlaps(t) for t in taken):
                return net
        raise NetError(f"no free /24 left in {self.pool} for instance addresses; set FORGE_INSTANCE_SUBNET")

    # ------------------------------------------------------------------ per namespace
    def attach(self, name: str) -> str:
        """A fresh namespace ``PREFIX-name`` wired to the bridge; returns its address.

        The address is kept per name (a restarted Instance keeps it). Anything left of an
        earlier attach (a crash half-way) is removed first, so the result is always whole."""
        assert self.subnet is not None, "setup() first"
        ns = self.names.netns(name)
        addr = self._address_for(name)
        self._remove(ns)
        veth = self.names.veth(ns)
        mtu = self.mtu
        try:
            ip(
                f"neigh flush to {addr} dev {self.names.bridge}",  # the address's last owner
                f"netns add {ns}",
                f"link add {veth} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {ns}",
                f"link set {veth} master {self.names.bridge}",
                f"link set dev {veth} type bridge_slave isolated on",
                f"link set {veth} up",
            )
            ip(
                f"addr add {addr}/{self.subnet.prefixlen} dev eth0",
                "link set eth0 up",
                "link set lo up",
                f"route add default via {self.gateway}",
                netns=ns,
            )
            script = (
                "table ip forge {\n  chain prerouting {\n"
                "    type nat hook prerouting priority -100; policy accept;\n"
                f'    iifname "eth0" ip daddr {addr} meta l4proto tcp dnat ip to 127.0.0.1\n  }}\n}}\n'
            )
            in_netns(
                ns,
                [
                    "sh",
                    "-c",
                    "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet && "
                    "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && exec nft -f -",
                ],
                script.encode(),
            )
        except NetError:
            self._remove(ns)
            raise
        return addr

    def netns_path(self, name: str) -> str:
        return f"{NETNS_DIR}/{self.names.netns(name)}"

    def has(self, name: str) -> bool:
        return os.path.exists(self.netns_path(name))

    def detach(self, name: str) -> None:
        """Remove the namespace (its veth pair goes with it) and free the address."""
        self._remove(self.names.netns(name))
        with self._lock:
            state = self._load()
            addrs = dict(state.get("addresses") or {})
            if addrs.pop(name, None) is not None:
                state["addresses"] = addrs
                try:
                    self._save(state)
                except OSError as exc:  # a full disk: the address stays reserved until the next save
                    log.warning("cannot free the address of %s (%s)", name, exc)

    def sweep(self, keep: set[str]) -> list[str]:
        """Remove this install's namespaces whose name is not in ``keep``; the names removed."""
        removed = []
        for name in self.namespaces():
            if name not in keep:
                log.warning("removing orphaned network namespace %s", self.names.netns(name))
                self.detach(name)
                removed.append(name)
        return removed

    def namespaces(self) -> list[str]:
        prefix = self.names.netns_prefix
        try:
            entries = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(e[len(prefix) :] for e in entries if e.startswith(prefix))

    def teardown(self) -> None:
        """Everything this install made on the machine: namespaces, bridge, table."""
        # In parallel: each namespace costs a few `ip` calls, and forge up's Ctrl-C waits on this.
        workers = [threading.Thread(target=self.detach, args=(name,)) for name in self.namespaces()]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        ip(f"link del {self.names.bridge}", check=False)
        try:
            self.nft.run(f"table inet {self.names.table} {{}}\ndelete table inet {self.names.table}\n")
        except NetError as exc:
            log.warning("cannot remove nftables table %s: %s", self.names.table, exc.message)

    # ------------------------------------------------------------------ helpers
    def _remove(self, ns: str) -> None:
        if os.path.exists(f"{NETNS_DIR}/{ns}"):
            ip(f"netns del {ns}", check=False)
        ip(f"link del {self.names.veth(ns)}", check=False)  # gone with the namespace, mostly

    def _address_for(self, name: str) -> str:
        assert self.subnet is not None
        with self._lock:
            state = self._load()
            addrs: dict[str, str] = dict(state.get("addresses") or {})
            if name in addrs and ipaddress.ip_address(addrs[name]) in self.subnet:
                return addrs[name]
            used = set(addrs.values())
            hosts = list(self.subnet.hosts())[1:]  # the first is the gateway
            # Round-robin from where the last allocation stopped: a freed address is reused as
            # late as possible, so no peer holds a stale ARP entry for it (attach flushes too).
            start = int(state.get("next", 0)) % len(hosts)
            order = hosts[start:] + hosts[:start]
            i, free = next(((i, str(h)) for i, h in enumerate(order) if str(h) not in used), (0, None))
            if free is None:
                raise NetError(f"no free address left in {self.subnet} ({len(hosts)} instances and builds)")
            addrs[name] = free
            state["addresses"], state["next"] = addrs, (start + i + 1) % len(hosts)
            self._save(state)
            return free

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("network state %s unreadable (%s); starting afresh", self._path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, state: dict[str, object]) -> None:
        write_atomic(self._path, json.dumps(state, indent=1, sort_keys=True).encode())


def _avoided(state: dict[str, object]) -> list[ipaddress.IPv4Network]:
    """Subnets the API refused because another node had them (``network.json`` ``avoid``)."""
    raw = state.get("avoid")
    out = []
    for text in raw if isinstance(raw, list) else []:
        try:
            net = ipaddress.ip_network(str(text), strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            out.append(net)
    return out


def _routed_networks(exclude_dev: str) -> list[ipaddress.IPv4Network]:
    return [
        r.net
        for r in ipv4_routes("table", "all")
        if r.dev != exclude_dev and r.type not in ("broadcast", "local")
    ]


def _uplink_mtu() -> int:
    """MTU of the default route's device (a veth at 1500 behind a 1400 uplink breaks big downloads)."""
    try:
        routes = ip_json("-4", "route", "show", "default")
        dev = routes[0]["dev"] if routes else ""
        return int(ip_json("link", "show", "dev", dev)[0]["mtu"]) if dev else 1500
    except (NetError, OSError, ValueError, KeyError, IndexError, TypeError):
        return 1500


def _link_exists(dev: str) -> bool:
    """Asked over netlink, not /sys/class/net: sysfs shows the network namespace it was mounted
    in, which is not ours when the agent runs in a namespace of its own (the multi-host tests)."""
    try:
        return bool(ip_json("link", "show", "dev", dev))
    except NetError:
        return False


def _read_sysctl(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _write_sysctl(path: str, value: str) -> None:
    try:
        Path(path).write_text(value)
    except OSError as exc:
        raise NetError(f"cannot set {path} to {value}: {exc}") from None
