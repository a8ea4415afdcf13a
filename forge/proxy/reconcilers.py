"""The proxy host's reconcilers, one per concern; each owns one outside thing and its keys.

* ``HostsReconciler`` — the host map on disk (``forge.proxy.hostmap``): host → the App's
  service address (kernel mode) or its ready dials (caddy mode, no nftables).
* ``ServiceMapReconciler`` — the kernel's service map (``forge.proxy.servicemap``): one key per
  App (its entry, one atomic batch) and ``*`` (the whole map read back and repaired).
* ``NodeRoutesReconciler`` — routes to other nodes' instance subnets (``forge.proxy.noderoutes``).
* ``CaddyReconciler`` — Caddy holds Forge's one static config (``forge.proxy.caddy``); loaded
  when Caddy holds anything else (a restart from another file, a hand edit), never on an app change.

Each works from the key alone over the proxy's record cache (``forge.proxy.records``), is
idempotent, and returns when to look again (seconds) or None.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from forge.atomicfile import write_atomic
from forge.clock import Clock
from forge.errors import ForgeError, Unavailable
from forge.models import App, Instance, Node, Resource
from forge.proxy.caddy import CaddyAdmin
from forge.proxy.hostmap import HostMap
from forge.proxy.nft import NetError
from forge.proxy.noderoutes import NodeRoutes
from forge.proxy.records import Records
from forge.proxy.routing import desired_routes, service_backends, service_port, service_routes
from forge.proxy.servicemap import ServiceMap

log = logging.getLogger(__name__)

RETRY_SECONDS: Final[float] = 1.0
HOSTS_VERIFY_SECONDS: Final[float] = 30.0  # the host map's directory is read back this often
MAP_VERIFY_SECONDS: Final[float] = 10.0  # the kernel map is read back and compared this often
ROUTES_VERIFY_SECONDS: Final[float] = 30.0  # the node routes (two `ip -j` calls)
CADDY_VERIFY_SECONDS: Final[float] = 10.0  # Caddy's config (a few KB, whatever the number of apps)
REASON_ROUTE_FAILED: Final[str] = "NodeRouteFailed"
REASON_ROUTED: Final[str] = "NodeRouted"

Key = str
NodeEvent = Callable[[str, str, str, str], None]  # (node, type, reason, message)


def host_inputs(app: App | None) -> tuple[Any, ...] | None:
    """What of an App its hosts derive from (``service_routes``); None for no App."""
    if app is None:
        return None
    return (
        app.metadata.deletion_timestamp is None,
        tuple(app.spec.domains),
        bool(app.status.live_deployment),
        service_port(app),
    )


class HostsReconciler:
    """Key ``hosts``: the whole host map (a few thousand small directories at most)."""

    name = "hosts"
    KEY: Final[Key] = "hosts"

    def __init__(
        self, records: Records, hostmap: HostMap, domain: str, service_ip: str | None, clock: Clock
    ) -> None:
        self.records, self.hostmap, self.domain, self.service_ip = records, hostmap, domain, service_ip
        self.clock = clock
        self._next_verify = 0.0

    def keys_for(self, old: Resource | None, new: Resource | None) -> Iterable[Key]:
        if self.service_ip is None:
            return (self.KEY,)  # caddy mode: the dials themselves live in the host map
        if isinstance(old or new, App):
            a, b = old, new
            if host_inputs(a if isinstance(a, App) else None) != host_inputs(
                b if isinstance(b, App) else None
            ):
                return (self.KEY,)
        return ()

    def all_keys(self) -> Iterable[Key]:
        return (self.KEY,)

    def desired(self) -> dict[str, list[str]]:
        apps = self.records.all(App)
        if self.service_ip is not None:
            return service_routes(apps, self.domain, self.service_ip)
        return desired_routes(apps, self.records.all(Instance), self.records.all(Node), self.domain)

    def reconcile(self, key: Key) -> float | None:
        now = self.clock.monotonic()
        verify = now >= self._next_verify
        changed = self.hostmap.apply(self.desired(), verify=verify)
        if verify:
            self._next_verify = now + HOSTS_VERIFY_SECONDS
        if changed:
            log.info("proxy: hosts %s", ", ".join(changed[:20]) + (" …" if len(changed) > 20 else ""))
        return HOSTS_VERIFY_SECONDS


class ServiceMapReconciler:
    """Keys ``APP`` (one App's entry) and ``*`` (the whole map, read back every ``MAP_VERIFY_SECONDS``)."""

    name = "service-map"
    ALL: Final[Key] = "*"

    def __init__(self, records: Records, services: ServiceMap) -> None:
        self.records, self.services = records, services
        self._want: dict[int, list[str]] | None = None
        self._port_of: dict[str, int] = {}

    def keys_for(self, old: Resource | None, new: Resource | None) -> Iterable[Key]:
        obj = new or old
        if isinstance(obj, App):
            return (obj.metadata.name,)
        if isinstance(obj, Instance):
            return {i.spec.app for i in (old, new) if isinstance(i, Instance)}
        if isinstance(obj, Node):
            # its address and existence decide the dials of the Instances bound to it
            return sorted({i.spec.app for i in self.records.instances_on(obj.metadata.name)})
        return ()

    def all_keys(self) -> Iterable[Key]:
        return (self.ALL,)

    def _entry(self, name: str) -> dict[int, list[str]]:
        app = self.records.get(App, name)
        if app is None:
            return {}
        return service_backends([app], self.records.instances_of(name), self.records.all(Node))

    def reconcile(self, key: Key) -> float | None:
        if key == self.ALL or self._want is None:
            apps = self.records.all(App)
            want = service_backends(apps, self.records.all(Instance), self.records.all(Node))
            self._port_of = {a.metadata.name: p for a in apps if (p := service_port(a)) in want}
            self._want = want
            if self.services.ensure():
                log.info("proxy: service table %s created", self.services.table)
            if self.services.verify(dict(want)):
                log.warning("proxy: nftables map %s differed from the records; repaired", self.services.table)
            return MAP_VERIFY_SECONDS if key == self.ALL else None
        entry = self._entry(key)
        old = self._port_of.pop(key, None)
        updates: dict[int, list[str]] = {}
        if old is not None:
            self._want.pop(old, None)
            updates[old] = []
        for port, dials in entry.items():
            self._want[port] = dials
            self._port_of[key] = port
            updates[port] = dials
        if updates:
            self.services.update(updates)  # this App's ports alone: the cost does not grow with the Apps
        return None


class NodeRoutesReconciler:
    """Key ``node-routes``: a route to every other node's instance subnet, via its address."""

    name = "node-routes"
    KEY: Final[Key] = "node-routes"

    def __init__(self, records: Records, routes: NodeRoutes, node_event: NodeEvent) -> None:
        self.records, self.routes, self.node_event = records, routes, node_event
        self._problems: dict[str, str] = {}

    def keys_for(self, old: Resource | None, new: Resource | None) -> Iterable[Key]:
        return (self.KEY,) if isinstance(new or old, Node) else ()

    def all_keys(self) -> Iterable[Key]:
        return (self.KEY,)

    def reconcile(self, key: Key) -> float | None:
        nodes = self.records.all(Node)
        changed, problems = self.routes.sync(nodes)
        if changed:
            log.info("proxy: node routes %s", ", ".join(changed))
        names = {n.metadata.name for n in nodes}
        for name, why in problems.items():
            if self._problems.get(name) != why and name in names:
                self.node_event(
                    name,
                    "Warning",
                    REASON_ROUTE_FAILED,
                    f"the proxy cannot reach node {name}'s Instances: {why}",
                )
        for name in set(self._problems) - set(problems):
            if name in names:
                self.node_event(
                    name, "Normal", REASON_ROUTED, f"node {name}'s instance subnet is routed again"
                )
        self._problems = problems
        return ROUTES_VERIFY_SECONDS  # a route someone removed comes back


class CaddyReconciler:
    """Key ``caddy``: Caddy holds ``want`` (static); the file Caddy (re)starts from holds it too."""

    name = "caddy"
    KEY: Final[Key] = "caddy"

    def __init__(self, caddy: CaddyAdmin, want: dict[str, Any], config_file: Path) -> None:
        self.caddy, self.want, self.config_file = caddy, want, config_file
        self._down = False

    def keys_for(self, old: Resource | None, new: Resource | None) -> Iterable[Key]:
        return ()

    def all_keys(self) -> Iterable[Key]:
        return (self.KEY,)

    def reconcile(self, key: Key) -> float | None:
        try:
            have = self.caddy.config()
            if have != self.want:
                self.caddy.load(self.want)
                log.warning(
                    "proxy: caddy held %s; Forge's config loaded",
                    "no config" if have is None else "another config",
                )
        except Unavailable as exc:
            if not self._down:
                log.warning("proxy: %s", exc.message)
            self._down = True
            return RETRY_SECONDS
        if self._down:
            log.info("proxy: caddy admin API at %s answers again", self.caddy.admin_url)
        self._down = False
        return CADDY_VERIFY_SECONDS


def write_caddy_config(path: Path, config: dict[str, Any]) -> None:
    """The file Caddy (re)starts from: complete, so a restart serves every app at once."""
    write_atomic(path, json.dumps(config, indent=1).encode(), mode=0o640)  # Caddy reads it (group)


RECOVERABLE: Final = (NetError, ForgeError, OSError)
