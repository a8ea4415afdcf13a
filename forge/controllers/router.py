"""Router: the store's live, ready Instances → Caddy's hosts and the kernel's service map.

Two modes, chosen once at start:

**kernel** (root with nftables; what ``forge up`` runs): every App gets a stable service
address (``App.status.serviceAddress``, this controller's field). Caddy maps each served host
to that address — its config changes only when the *set of hosts* changes (an App first goes
live, is deleted, gains or loses a domain, TLS mode) — and ``forge.servicemap`` points the
address at the live release's ready Instances with one atomic nftables batch. The keys:

* ``hosts`` (App changes, resync): allocate missing service addresses; compare Caddy's *whole*
  config with the one Forge wants and ``POST /load`` it when anything differs — a drifted route,
  a handler someone added, a changed admin or TLS section — so any tampering is repaired, not
  only the host map. Never a Caddy restart.
* ``backends/APP`` (that App's or its Instances' changes): the App's entry of the desired map
  is recomputed alone and the difference applied (one batch; the work of a deploy does not
  grow with the number of Apps).
* ``backends`` (resync; a Node change wakes the ``backends/APP`` of the Apps on it): the whole desired map, applied as the difference from
  what was applied last; every ``VERIFY_SECONDS`` the whole kernel map is read back and
  repaired. Under the runtime the desired Caddy config and map are memoised on the informer
  cache's version of the records they derive from, so an idle resync recomputes nothing.
* ``node-routes`` (Node changes, every ``ROUTES_VERIFY_SECONDS``): a route to each other node's
  instance subnet via that node's address (``forge.noderoutes``), so a backend on another
  machine is reached through the same map. A node that cannot be routed (its subnet overlaps
  another's or a network of this host, ``ip route`` refused it) gets a ``NodeRouteFailed``
  Warning Event naming why; a node off this host's links is left to the network.

**caddy** (no root or no nftables: a laptop, a non-root dev run): the previous design — the
ready dials themselves live in Caddy's host map, one PATCH per change (``forge.caddy``).

Caddy or the kernel unreachable: one Warning Event per outage, a failure counter, and a
requeue after ``RETRY_SECONDS`` (not the runtime's growing back-off).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forge.caddy import HOSTMAP_ID, CaddyAdmin, base_config, hostmap_handlers, routes_digest
from forge.clock import Clock
from forge.config import Config
from forge.controllers.base import Controller, Result
from forge.controllers.cache import cache_version, read_only, read_only_field
from forge.errors import Conflict, ForgeError, NotFound, Unavailable
from forge.events import EventRecorder
from forge.models import App, Instance, Node, ObjectMeta, Resource
from forge.nft import NetError, nft_available
from forge.noderoutes import NodeRoutes
from forge.routing import desired_routes, service_backends, service_port, service_routes
from forge.servicemap import ServiceMap, allocate_ports
from forge.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

KEY: Final[str] = "routes"  # caddy mode: the whole table
KEY_HOSTS: Final[str] = "hosts"  # kernel mode: service addresses and Caddy's config
KEY_BACKENDS: Final[str] = "backends"  # kernel mode: the service map
KEY_NODE_ROUTES: Final[str] = "node-routes"  # kernel mode: routes to other nodes' instance subnets
APP_BACKENDS: Final[str] = KEY_BACKENDS + "/"  # kernel mode: one App's entry of it (+ the App's name)
RETRY_SECONDS: Final[float] = 1.0
VERIFY_SECONDS: Final[float] = 10.0  # the kernel map is read back and compared this often
ROUTES_VERIFY_SECONDS: Final[float] = 30.0  # the node routes are read back this often (two `ip -j` calls)
CADDY_VERIFY_SECONDS: Final[float] = 30.0  # and Caddy's whole config (a few hundred KB at 5,000 hosts)
REASON_UNREACHABLE: Final[str] = "CaddyUnreachable"
REASON_REACHABLE: Final[str] = "CaddyReachable"
REASON_RELOADED: Final[str] = "CaddyConfigRestored"
REASON_DRIFT: Final[str] = "CaddyConfigRepaired"
REASON_MAP_FAILED: Final[str] = "ServiceMapFailed"
REASON_MAP_REPAIRED: Final[str] = "ServiceMapRepaired"
REASON_ROUTE_FAILED: Final[str] = "NodeRouteFailed"
REASON_ROUTED: Final[str] = "NodeRouted"
_AUTO: Final = object()


def host_inputs(app: App) -> tuple[Any, ...]:
    """What of an App its hosts in Caddy's config derive from (``service_routes``, ``_allocate``)."""
    return (
        app.metadata.deletion_timestamp is None,
        tuple(app.spec.domains),
        bool(app.status.live_deployment),
        app.status.service_address,
    )


def tls_ask_url(config: Config) -> str:
    host, _, port = config.api_listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{host}:{port}/api/v1/tls/ask"


def router_base_config(
    config: Config, routes: dict[str, list[str]] | None = None, kernel: bool = False
) -> dict[str, Any]:
    """The whole Caddy config for this Forge (``forge up`` starts Caddy with it, routes empty).

    In kernel mode Caddy opens a new upstream connection per request (no upstream keep-alive):
    every request then meets the kernel's current map, so a switch takes effect at once and
    no pooled connection to a stopped release can fail a request."""
    return base_config(
        config.http_listen,
        config.effective_caddy_admin,
        config.tls,
        tls_ask_url(config),
        config.domain,
        https_listen=getattr(config, "https_listen", None) or None,
        routes=routes,
        upstream_keepalive=not kernel,
    )


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.updates = Counter(
            "forge_router_updates_total", "Changes applied to Caddy", ["method"], registry=registry
        )
        self.seconds = Histogram(
            "forge_router_update_seconds",
            "Time of one Caddy update",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.failures = Counter(
            "forge_router_resync_failures_total", "Reconciles that could not reach Caddy", registry=registry
        )
        self.hosts = Gauge(
            "forge_router_hosts", "Hostnames routed to at least one instance", registry=registry
        )


class RouterController(Controller):
    name = "router"
    watches = ("App", "Instance", "Node")
    resync_seconds = 2.0

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        caddy: CaddyAdmin | None = None,
        registry: CollectorRegistry | None = None,
        services: Any = _AUTO,
        node_routes: Any = _AUTO,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self._own_caddy = caddy is None
        self.caddy = caddy or CaddyAdmin(config.effective_caddy_admin)
        self.metrics = _Metrics(registry or CollectorRegistry())
        self._unreachable = False
        self._map_failing = False
        self._next_verify = 0.0
        self._next_caddy_check = 0.0
        self._caddy_want: dict[str, Any] | None = None
        # kernel mode: the desired map as last computed or updated per App, and each App's port in it
        self._want: dict[int, list[str]] | None = None
        self._port_of: dict[str, int] = {}
        self._want_version: tuple[int, ...] | None = None
        self._want_applied = False  # the kernel map holds _want as it is now (nothing to re-apply)
        # kernel mode: (routes, their digest, Caddy config), what of each App they came from, and
        # the cache version of the Apps then
        self._hosts: tuple[dict[str, list[str]], str, dict[str, Any]] | None = None
        self._host_inputs: dict[str, tuple[Any, ...]] = {}
        self._hosts_dirty = True  # an App's host inputs moved since they were computed (keys_for)
        self._next_hosts_check = 0.0  # and at least this often they are recomputed anyway
        # Events need an involved object; Caddy is no record, so name it as one.
        self._subject = Resource(kind="Router", metadata=ObjectMeta(name="caddy"))
        self._map_subject = Resource(kind="Router", metadata=ObjectMeta(name="service-map"))
        self.services: ServiceMap | None = self._service_map(config) if services is _AUTO else services
        self.mode = "kernel" if self.services is not None else "caddy"
        if node_routes is _AUTO:
            node_routes = (
                NodeRoutes(config.data_dir, config.pool)
                if services is _AUTO and self.services is not None
                else None
            )
        self.node_routes: NodeRoutes | None = node_routes
        self._route_problems: dict[str, str] = {}

    @staticmethod
    def _service_map(config: Config) -> ServiceMap | None:
        missing = nft_available()
        if missing is None:
            return ServiceMap(config.data_dir, config.service_address, pool=config.instance_pool)
        log.warning(
            "router: Caddy dials Instances directly (%s); every switch rewrites Caddy's host map", missing
        )
        return None

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        if self.mode == "caddy":
            return (KEY,)
        obj = event.object
        if isinstance(obj, App):
            # Most App writes (statuses of a deploy) leave its hosts as they were: the predicate
            # spares the whole-config key then (controller-runtime's event filters); the resync
            # looks anyway.
            same = event.type != "DELETED" and self._host_inputs.get(obj.metadata.name) == host_inputs(obj)
            if same:
                return (APP_BACKENDS + obj.metadata.name,)
            self._hosts_dirty = True
            return (KEY_HOSTS, APP_BACKENDS + obj.metadata.name)
        if isinstance(obj, Instance):
            return (APP_BACKENDS + obj.spec.app,)
        # A Node: its address and existence decide the dials of the Instances bound to it; its
        # address and instance subnet, the routes to it.
        routes = (KEY_NODE_ROUTES,) if self.node_routes is not None else ()
        return routes + tuple(
            sorted(
                {
                    APP_BACKENDS + i.spec.app
                    for i in read_only_field(self.store, Instance, "spec.node", obj.metadata.name)
                }
            )
        )

    def all_keys(self) -> Iterable[str]:
        if self.mode == "caddy":
            return (KEY,)
        return (KEY_HOSTS, KEY_BACKENDS) + ((KEY_NODE_ROUTES,) if self.node_routes is not None else ())

    def _snapshot(self) -> tuple[list[App], list[Instance], list[Node]]:
        """Every App, Instance and Node, read only (the pure planners never mutate them)."""
        return read_only(self.store, App), read_only(self.store, Instance), read_only(self.store, Node)

    def _desired_backends(self) -> dict[int, list[str]]:
        """The whole kernel map (a fresh dict), memoised on the cache's version of its inputs."""
        assert self.services is not None
        version = cache_version(self.store, App, Instance, Node)
        if self._want is None or version is None or version != self._want_version:
            apps, instances, nodes = self._snapshot()
            want = service_backends(apps, instances, nodes, self.services.address)
            self._port_of = {
                a.metadata.name: p for a in apps if (p := service_port(a, self.services.address)) in want
            }
            self._want, self._want_version = want, version
        return dict(self._want)

    def _app_backends(self, name: str) -> dict[int, list[str]]:
        """One App's entry of the kernel map ({} when it has none): its own records only."""
        assert self.services is not None
        try:
            app = self.store.get(App, name)
        except NotFound:
            return {}
        insts = read_only_field(self.store, Instance, "spec.app", name)
        return service_backends([app], insts, read_only(self.store, Node), self.services.address)

    def desired(self) -> dict[str, list[str]]:
        apps, instances, nodes = self._snapshot()
        if self.mode == "kernel":
            return service_routes(apps, self.config.domain)
        return desired_routes(apps, instances, nodes, self.config.domain)

    def reconcile(self, key: str) -> Result | None:
        if key == KEY_NODE_ROUTES and self.node_routes is not None:
            return self._reconcile_node_routes()
        if key.startswith(APP_BACKENDS) and self.services is not None:
            return self._reconcile_app_backends(key[len(APP_BACKENDS) :])
        if key == KEY_BACKENDS and self.services is not None:
            return self._reconcile_backends()
        if key == KEY_HOSTS and self.services is not None:
            return self._reconcile_hosts()
        if key != KEY:
            return None
        routes = self.desired()
        self.metrics.hosts.set(len(routes))
        try:
            self._apply(routes)
        except Unavailable as exc:
            self.metrics.failures.inc()
            if not self._unreachable:
                self._unreachable = True
                self.recorder.record(self._subject, "Warning", REASON_UNREACHABLE, exc.message)
            log.warning("router: %s", exc.message)
            return Result(requeue_after=RETRY_SECONDS)
        if self._unreachable:
            self._unreachable = False
            self.recorder.record(
                self._subject,
                "Normal",
                REASON_REACHABLE,
                f"caddy admin API at {self.caddy.admin_url} answers again",
            )
        return None

    # ------------------------------------------------------------------ kernel mode
    def _reconcile_hosts(self) -> Result | None:
        assert self.services is not None
        # Under the runtime the host inputs are recomputed when an App event moved them (the
        # predicate in keys_for) and at least every CADDY_VERIFY_SECONDS; a deploy's App status
        # writes do not cost a pass over every App.
        now = self.clock.monotonic()
        cached = cache_version(self.store, App) is not None
        if self._hosts is None or not cached or self._hosts_dirty or now >= self._next_hosts_check:
            self._hosts_dirty = False
            self._next_hosts_check = now + CADDY_VERIFY_SECONDS
            apps = read_only(self.store, App)
            if self._allocate(apps):
                self._hosts_dirty = True
                return Result(requeue_after=0.05)  # re-read: the writes changed the Apps
            inputs = {a.metadata.name: host_inputs(a) for a in apps}
            if self._hosts is None or inputs != self._host_inputs:
                routes = service_routes(apps, self.config.domain)
                self._hosts = (
                    routes,
                    routes_digest(routes),
                    router_base_config(self.config, routes, kernel=True),
                )
                self._host_inputs = inputs
        routes, digest, want = self._hosts
        self.metrics.hosts.set(len(routes))
        try:
            self._ensure_caddy(want, digest)
        except Unavailable as exc:
            return self._caddy_down(exc)
        self._caddy_back()
        return None  # the 2 s resync is the next look

    def _allocate(self, apps: list[App]) -> bool:
        """Give every App a service address on this install's service IP; True when any was written."""
        assert self.services is not None
        ip = self.services.address
        held = {a.metadata.name: p for a in apps if (p := service_port(a, ip)) is not None}
        new = allocate_ports(
            sorted(a.metadata.name for a in apps if a.metadata.deletion_timestamp is None), held
        )
        wrote = False
        for app in apps:
            port = new.get(app.metadata.name)
            if port is None:
                continue
            obj = app.copy_deep()
            obj.status.service_address = f"{ip}:{port}"
            try:
                self.store.update_status(obj)
                wrote = True
            except (Conflict, NotFound):
                wrote = True  # someone else wrote it meanwhile: re-read and try again
        return wrote

    def _ensure_caddy(self, want: dict[str, Any], digest: str) -> None:
        """Load ``want`` when Caddy's whole config differs from it. Every pass asks for the few
        bytes of the host-map digest (a restarted Caddy, or a changed host set, shows at once);
        the whole config is compared when that differs, when ``want`` changed, and at least every
        ``CADDY_VERIFY_SECONDS`` (a GET of the whole config is not free at 5,000 hosts)."""
        now = self.clock.monotonic()
        if want == self._caddy_want and now < self._next_caddy_check:
            stamp = self.caddy.get_id(HOSTMAP_ID, "/handle/0")
            if isinstance(stamp, dict) and stamp.get("forge_routes") == digest:
                return
        have = self.caddy.config()
        self._next_caddy_check = now + CADDY_VERIFY_SECONDS
        if have == want:
            self._caddy_want = want
            return
        start = self.clock.monotonic()
        self.caddy.load(want)
        self.metrics.seconds.observe(self.clock.monotonic() - start)
        self.metrics.updates.labels(method="load").inc()
        if have is None:
            self.recorder.record(
                self._subject,
                "Normal",
                REASON_RELOADED,
                "caddy had no config (restarted?); the whole config was loaded",
            )
        elif self._caddy_want is not None and have != self._caddy_want:
            # Not a change of ours: Caddy holds something Forge never loaded. Repaired.
            self.recorder.record(
                self._subject,
                "Warning",
                REASON_DRIFT,
                "caddy's config differed from the one Forge loaded; the whole config was loaded again",
            )
        self._caddy_want = want
        log.info("router: caddy config loaded")

    def _reconcile_app_backends(self, name: str) -> Result | None:
        if self._want is None:
            return self._reconcile_backends()  # nothing to update yet: the whole map first
        entry = self._app_backends(name)
        old = self._port_of.pop(name, None)
        if old is not None:
            self._want.pop(old, None)
        for port, dials in entry.items():
            self._want[port] = dials
            self._port_of[name] = port
        self._want_version = None  # no longer what one version of the cache gave
        self._want_applied = False
        failed = self._apply_backends(dict(self._want), verify=False)  # the whole-map key keeps its own timer
        self._want_applied = failed is None
        return failed

    def _reconcile_backends(self) -> Result | None:
        """The whole map, applied; read back from the kernel every ``VERIFY_SECONDS``. Under the
        runtime (informer cache) the per-App keys keep it current in between, so it is recomputed
        (memoised) only for that read-back."""
        verify = self.clock.monotonic() >= self._next_verify
        incremental = self._want is not None and not verify and cache_version(self.store, App) is not None
        if incremental and self._want_applied:
            return Result(requeue_after=max(0.05, self._next_verify - self.clock.monotonic()))
        backends = dict(self._want) if incremental and self._want is not None else self._desired_backends()
        self._want_applied = False
        failed = self._apply_backends(backends, verify=verify)
        self._want_applied = failed is None
        return failed or Result(requeue_after=max(0.05, self._next_verify - self.clock.monotonic()))

    def _apply_backends(self, backends: dict[int, list[str]], verify: bool) -> Result | None:
        """Apply (or, when ``verify``, read back and repair) the kernel map; a retry when it failed."""
        assert self.services is not None
        start = self.clock.monotonic()
        try:
            if verify:
                if self.services.ensure():
                    log.info("router: service table %s created", self.services.table)
                if self.services.verify(backends) and self._next_verify:
                    self.recorder.record(
                        self._map_subject,
                        "Warning",
                        REASON_MAP_REPAIRED,
                        f"nftables map {self.services.table} differed from the store; repaired",
                    )
                self._next_verify = start + VERIFY_SECONDS
                changed = []
            else:
                changed = self.services.apply(backends)
        except (NetError, ForgeError) as exc:
            self._next_verify = 0.0
            self.metrics.failures.inc()
            if not self._map_failing:
                self._map_failing = True
                self.recorder.record(self._map_subject, "Warning", REASON_MAP_FAILED, exc.message)
            log.warning("router: service map: %s", exc.message)
            return Result(requeue_after=RETRY_SECONDS)
        self._map_failing = False
        if changed:
            self.metrics.seconds.observe(self.clock.monotonic() - start)
            self.metrics.updates.labels(method="kernel").inc(len(changed))
        return None

    def _reconcile_node_routes(self) -> Result | None:
        assert self.node_routes is not None
        nodes = read_only(self.store, Node)
        try:
            changed, problems = self.node_routes.sync(nodes)
        except NetError as exc:
            log.warning("router: node routes: %s", exc.message)
            return Result(requeue_after=RETRY_SECONDS)
        if changed:
            log.info("router: node routes %s", ", ".join(changed))
        by_name = {n.metadata.name: n for n in nodes}
        for name, why in problems.items():
            if self._route_problems.get(name) != why and name in by_name:
                self.recorder.record(
                    by_name[name],
                    "Warning",
                    REASON_ROUTE_FAILED,
                    f"the proxy cannot reach node {name}'s Instances: {why}",
                )
        for name in set(self._route_problems) - set(problems):
            if name in by_name:
                self.recorder.record(
                    by_name[name], "Normal", REASON_ROUTED, f"node {name}'s instance subnet is routed again"
                )
        self._route_problems = problems
        return Result(requeue_after=ROUTES_VERIFY_SECONDS)  # a route someone removed comes back

    def _caddy_down(self, exc: Unavailable) -> Result:
        self.metrics.failures.inc()
        if not self._unreachable:
            self._unreachable = True
            self.recorder.record(self._subject, "Warning", REASON_UNREACHABLE, exc.message)
        log.warning("router: %s", exc.message)
        self._caddy_want = None
        return Result(requeue_after=RETRY_SECONDS)

    def _caddy_back(self) -> None:
        if self._unreachable:
            self._unreachable = False
            self.recorder.record(
                self._subject,
                "Normal",
                REASON_REACHABLE,
                f"caddy admin API at {self.caddy.admin_url} answers again",
            )

    # ------------------------------------------------------------------ caddy mode
    def _apply(self, routes: dict[str, list[str]]) -> None:
        stamp = self.caddy.get_id(HOSTMAP_ID, "/handle/0")
        if isinstance(stamp, dict) and stamp.get("forge_routes") == routes_digest(routes):
            return
        start = self.clock.monotonic()
        if stamp is None:
            self.caddy.load(router_base_config(self.config, routes))
            method = "load"
            self.recorder.record(
                self._subject,
                "Normal",
                REASON_RELOADED,
                "caddy had no Forge config (restarted?); base config and routes loaded",
            )
        else:
            self.caddy.patch_id(HOSTMAP_ID, "/handle", hostmap_handlers(routes))
            method = "patch"
        self.metrics.seconds.observe(self.clock.monotonic() - start)
        self.metrics.updates.labels(method=method).inc()
        log.info("router: %s applied, %d hosts", method, len(routes))

    def close(self) -> None:
        if self._own_caddy:
            self.caddy.close()
