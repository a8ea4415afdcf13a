"""Stable service addresses, switched in the kernel: the router's half of the data plane.

Every App gets ``SERVICE_IP:PORT`` (``App.status.serviceAddress``, allocated by the router):
one service IP per install (a /32 on ``lo`` from 198.18.0.0/15, the benchmarking range no LAN
uses, derived from the data dir so two installs on one machine never share it) and one port
per App. Caddy dials that address and never learns where the app runs. One nftables table
on the proxy host turns it into a backend::

    table ip fgsHHHHHH
      map backends  { tcp dport . numgen random mod 60 : backend ip . backend port }
      chain output  (nat, hook output)    ip daddr SERVICE_IP dnat to the map's answer
      chain refuse  (filter, hook input)  ip daddr SERVICE_IP → port unreachable (no backend: refused
                                           never a host listener on 0.0.0.0:PORT)
      chain postrouting (nat)             ip saddr SERVICE_IP → masquerade (leaves with a host address)
      chain guard (filter, hook output)   a new connection to SERVICE_IP or the instance pool from
                                           any uid but root's or Forge's → reset (past Caddy: none)

Each App owns ``SLOTS`` (60) keys ``PORT . 0 … PORT . 59``; slot i holds ready replica
``i % n``, so n = 1–6, 10, 12, 15, 20, 30, 60 replicas split exactly and any other n within
one slot. Switching an App's backends (deploy, rollback, scale, restart, rescheduling) is one
netlink batch: delete its slots, add the new ones — the kernel applies both or neither, and
its cost does not depend on how many Apps exist (``bench/route_update.py``). Established
connections keep the backend conntrack recorded for them; only new connections see the new
map. A backend on another node is just another ``ip . port``: the proxy host routes each
node's instance subnet to that node (``forge.proxy.noderoutes``, see ``docs/data-plane.md``).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from forge.errors import Invalid
from forge.hostperms import owner_refused
from forge.proxy.nft import NetError, Nft, install_hash, ip, ip_json
from forge.subnets import DEFAULT_POOL

log = logging.getLogger(__name__)

SLOTS: Final[int] = 60
SERVICE_POOL: Final = ipaddress.ip_network("198.18.0.0/15")
PORT_MIN, PORT_MAX = 10000, 65000

SVC: Final[str] = "svc:"  # install_hash purpose: the service map's names
Backends = dict[int, list[str]]  # service port -> sorted "ip:port" of ready backends


def choose_service_ip(data_dir: str | Path, configured: str = "") -> str:
    """``FORGE_SERVICE_ADDRESS`` or a stable address from 198.18.0.0/15 for this install."""
    if configured:
        try:
            addr = ipaddress.ip_address(configured.strip())
        except ValueError:
            raise Invalid(f"FORGE_SERVICE_ADDRESS: {configured!r} is not an IPv4 address") from None
        if addr.version != 4 or addr.is_loopback or addr.is_unspecified:
            raise Invalid(
                f"FORGE_SERVICE_ADDRESS: {configured!r} must be a routable IPv4 address, not loopback"
            )
        return str(addr)
    size = SERVICE_POOL.num_addresses
    start = int(install_hash(data_dir, SVC), 16) % size
    return str(SERVICE_POOL.network_address + max(1, start))


def allocate_ports(wanted: list[str], held: Mapping[str, int]) -> dict[str, int]:
    """Ports for the Apps in ``wanted`` that hold none yet: the lowest free ones, in order."""
    used = set(held.values())
    out: dict[str, int] = {}
    port = PORT_MIN
    for name in wanted:
        if name in held:
            continue
        while port in used:
            port += 1
        if port > PORT_MAX:
            raise Invalid(f"no service port left in {PORT_MIN}-{PORT_MAX}")
        out[name] = port
        used.add(port)
    return out


def slot_elements(port: int, backends: list[str], slots: int = SLOTS) -> list[str]:
    """``PORT . i : IP . P`` for every slot; empty when there is no backend."""
    if not backends:
        return []
    out = []
    for i in range(slots):
        host, _, p = backends[i % len(backends)].rpartition(":")
        out.append(f"{port} . {i} : {host} . {p}")
    return out


class ServiceMap:
    """The proxy host's service table and service IP; ``apply`` is one atomic kernel batch."""

    def __init__(
        self, data_dir: str | Path, address: str = "", nft: Nft | None = None, pool: str = DEFAULT_POOL
    ) -> None:
        h = install_hash(data_dir, SVC)
        self.pool = pool
        self.table = f"fgs{h}"
        self.address = choose_service_ip(data_dir, address)
        self.nft = nft or Nft()
        self.applied: Backends = {}
        self._known = False
        self._lock = threading.Lock()

    def ensure(self) -> bool:
        """Service IP on ``lo`` and the table in place; True when the table had to be (re)made."""
        have = {
            a.get("local")
            for link in ip_json("-4", "addr", "show", "dev", "lo")
            for a in link.get("addr_info", [])
        }
        if self.address not in have:
            ip(f"addr add {self.address}/32 dev lo")
        if self.nft.table_exists("ip", self.table) and self._rule_matches():
            return False
        self.nft.run(self.table_script())
        self.applied, self._known = {}, True
        return True

    def _rule_matches(self) -> bool:
        try:
            text = self.nft.run(f"list chain ip {self.table} output")
            text += self.nft.run(f"list chain ip {self.table} postrouting")
            guard = self.nft.run(f"list chain ip {self.table} guard")
        except NetError:
            return False
        return (
            f"ip daddr {self.address} " in text
            and f"ip saddr {self.address} " in text
            and self.pool in guard
            and "skuid" in guard
        )

    def table_script(self) -> str:
        t, a = self.table, self.address
        return (
            f"table ip {t} {{}}\ndelete table ip {t}\n"
            f"table ip {t} {{\n"
            f"  map backends {{ typeof tcp dport . numgen random mod {SLOTS} : ip daddr . tcp dport; }}\n"
            f"  chain output {{\n    type nat hook output priority -100; policy accept;\n"
            f"    ip daddr {a} meta l4proto tcp dnat ip to tcp dport . numgen random mod {SLOTS} map @backends\n  }}\n"
            f"  chain refuse {{\n    type filter hook input priority -10; policy accept;\n"
            f"    ip daddr {a} meta l4proto tcp ct state new reject with icmp type port-unreachable\n  }}\n"
            # A connection to the service IP starts with the service IP as its source; once it is
            # DNAT-ed to an Instance on another node it must leave with an address of this host
            # (the node routes its replies, and accepts the proxy host, by that address).
            f"  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n"
            f'    ip saddr {a} oifname != "lo" masquerade\n  }}\n'
            # Before the DNAT above (priority -100) so it sees the service address; Instances on
            # other nodes are reached through the pool's routes, so the pool is guarded too.
            f"  chain guard {{\n    type filter hook output priority -150; policy accept;\n"
            f"    ip daddr {{ {a}, {self.pool} }} meta l4proto tcp ct state new "
            f"{owner_refused()} reject with tcp reset\n  }}\n"
            f"}}\n"
        )

    def read(self) -> Backends:
        """What the kernel holds now: service port → sorted distinct backends."""
        out: dict[int, set[str]] = {}
        for obj in self.nft.json(f"list map ip {self.table} backends"):
            for elem in (obj.get("map") or {}).get("elem") or []:
                key, value = _pair(elem)
                if key is not None and value is not None:
                    out.setdefault(key, set()).add(value)
        return {k: sorted(v) for k, v in out.items()}

    def apply(self, desired: Backends) -> list[int]:
        """Make the kernel map equal ``desired`` (each port's backends sorted and distinct) for
        every port that differs from what was applied, in ONE batch; the ports changed. A batch the kernel refuses (someone changed
        the map behind our back) is retried once against what the kernel really holds."""
        with self._lock:
            if not self._known:
                self.applied, self._known = self.read(), True
            try:
                return self._apply(desired)
            except NetError as exc:
                log.warning("service map out of step (%s); re-reading it", exc.message)
                self.applied = self.read()
                return self._apply(desired)

    def update(self, entries: Mapping[int, list[str]]) -> list[int]:
        """Apply only ``entries`` (port → its backends, sorted and distinct; [] removes the port) in
        ONE batch; the ports changed. One App's switch costs the same at 10 or 5,000 Apps: nothing
        else of the map is walked."""
        with self._lock:
            if not self._known:
                self.applied, self._known = self.read(), True
            try:
                return self._write(entries, list(entries))
            except NetError as exc:
                log.warning("service map out of step (%s); re-reading it", exc.message)
                self.applied = self.read()
                return self._write(entries, list(entries))

    def verify(self, desired: Backends) -> bool:
        """Compare the whole kernel map with ``desired`` and repair it; True when it had drifted."""
        with self._lock:
            actual = self.read()
            self.applied, self._known = actual, True
            if actual == {p: sorted(set(b)) for p, b in desired.items() if b}:
                return False
            self._apply({p: sorted(set(b)) for p, b in desired.items()})
            return True

    def _apply(self, desired: Backends) -> list[int]:
        # Lists are compared as given: callers pass each port's backends sorted and distinct
        # (routing.service_backends does), which keeps this a dict walk, not a sort per App.
        applied = self.applied
        changed = [p for p, b in desired.items() if b and applied.get(p) != b]
        changed += [p for p in applied if not desired.get(p)]
        return self._write(desired, changed)

    def _write(self, desired: Mapping[int, list[str]], ports: list[int]) -> list[int]:
        """One batch making each of ``ports`` hold ``desired[port]`` (absent or []: no slots)."""
        applied = self.applied
        changed = [p for p in ports if (desired.get(p) or None) != (applied.get(p) or None)]
        if not changed:
            return []
        want = {p: desired[p] for p in changed if desired.get(p)}
        lines = []
        for p in changed:
            if p in self.applied:
                keys = ", ".join(f"{p} . {i}" for i in range(SLOTS))
                lines.append(f"delete element ip {self.table} backends {{ {keys} }}")
            if p in want:
                lines.append(
                    f"add element ip {self.table} backends {{ {', '.join(slot_elements(p, want[p]))} }}"
                )
        self.nft.run("\n".join(lines) + "\n")
        for p in changed:
            if p in want:
                self.applied[p] = want[p]
            else:
                self.applied.pop(p, None)
        return changed

    def teardown(self) -> None:
        try:
            self.nft.run(f"table ip {self.table} {{}}\ndelete table ip {self.table}\n")
        except NetError as exc:
            log.warning("cannot remove nftables table %s: %s", self.table, exc.message)
        ip(f"addr del {self.address}/32 dev lo", check=False)


def _pair(elem: Any) -> tuple[int | None, str | None]:
    """One JSON map element ``[{"concat": [port, slot]}, {"concat": [ip, port]}]`` → (port, "ip:port")."""
    try:
        key, value = elem
        kport = int(key["concat"][0])
        vip, vport = value["concat"]
        return kport, f"{vip}:{int(vport)}"
    except (TypeError, ValueError, KeyError, IndexError):
        return None, None
