"""Router: the store's live, ready Instances → Caddy's host map, through the Admin API only.

One key (``routes``) for the whole table, so the runtime's deduplicating queue coalesces a
burst of App/Instance/Node changes into one reconcile and one Caddy update. Each reconcile:

1. computes the whole desired table (``forge.routing.desired_routes``, pure);
2. asks Caddy for the digest stored beside its map (``GET /id/forge-hostmap/handle/0``, a few
   bytes) — so every pass, resync included, verifies Caddy rather than trusting memory;
3. digest equal → nothing to do; different (a change, or Caddy restarted from the base file
   with an empty map) → one PATCH of ``/id/forge-hostmap/handle``; no such @id (Caddy restarted
   with no config, or someone loaded another one) → ``POST /load`` of the base config with the
   table in it. Never a Caddy restart.

The layout that makes one update cheap at thousands of apps is explained in ``forge.caddy``.
Caddy unreachable: one Warning Event per outage, a failure counter, and a requeue after
``RETRY_SECONDS`` (not the runtime's growing back-off) so routes come back within seconds of
Caddy's return; the 2 s resync is the safety net for a restart nothing in the store announced.
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
from forge.errors import Unavailable
from forge.events import EventRecorder
from forge.models import App, Instance, Node, ObjectMeta, Resource
from forge.routing import desired_routes
from forge.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

KEY: Final[str] = "routes"
RETRY_SECONDS: Final[float] = 1.0
REASON_UNREACHABLE: Final[str] = "CaddyUnreachable"
REASON_REACHABLE: Final[str] = "CaddyReachable"
REASON_RELOADED: Final[str] = "CaddyConfigRestored"


def tls_ask_url(config: Config) -> str:
    host, _, port = config.api_listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{host}:{port}/api/v1/tls/ask"


def router_base_config(config: Config, routes: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The base Caddy config for this Forge (what ``forge up`` starts Caddy with)."""
    return base_config(
        config.http_listen, config.caddy_admin, config.tls, tls_ask_url(config), config.domain,
        https_listen=getattr(config, "https_listen", None) or None, routes=routes,
    )


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.updates = Counter(
            "forge_router_updates_total", "Changes applied to Caddy", ["method"], registry=registry
        )
        self.seconds = Histogram(
            "forge_router_update_seconds", "Time of one Caddy update", registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.failures = Counter(
            "forge_router_resync_failures_total", "Reconciles that could not reach Caddy", registry=registry
        )
        self.hosts = Gauge("forge_router_hosts", "Hostnames routed to at least one instance", registry=registry)


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
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self._own_caddy = caddy is None
        self.caddy = caddy or CaddyAdmin(config.caddy_admin)
        self.metrics = _Metrics(registry or CollectorRegistry())
        self._unreachable = False
        # Events need an involved object; Caddy is no record, so name it as one.
        self._subject = Resource(kind="Router", metadata=ObjectMeta(name="caddy"))

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        return (KEY,)

    def all_keys(self) -> Iterable[str]:
        return (KEY,)

    def desired(self) -> dict[str, list[str]]:
        apps: list[App] = self.store.list("App")[0]  # type: ignore[assignment]
        instances: list[Instance] = self.store.list("Instance")[0]  # type: ignore[assignment]
        nodes: list[Node] = self.store.list("Node")[0]  # type: ignore[assignment]
        return desired_routes(apps, instances, nodes, self.config.domain)

    def reconcile(self, key: str) -> Result | None:
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
            self.recorder.record(self._subject, "Normal", REASON_REACHABLE, f"caddy admin API at "
                                 f"{self.caddy.admin_url} answers again")
        return None

    def _apply(self, routes: dict[str, list[str]]) -> None:
        stamp = self.caddy.get_id(HOSTMAP_ID, "/handle/0")
        if isinstance(stamp, dict) and stamp.get("forge_routes") == routes_digest(routes):
            return
        start = self.clock.monotonic()
        if stamp is None:
            self.caddy.load(router_base_config(self.config, routes))
            method = "load"
            self.recorder.record(self._subject, "Normal", REASON_RELOADED,
                                 "caddy had no Forge config (restarted?); base config and routes loaded")
        else:
            self.caddy.patch_id(HOSTMAP_ID, "/handle", hostmap_handlers(routes))
            method = "patch"
        self.metrics.seconds.observe(self.clock.monotonic() - start)
        self.metrics.updates.labels(method=method).inc()
        log.info("router: %s applied, %d hosts", method, len(routes))

    def close(self) -> None:
        if self._own_caddy:
            self.caddy.close()
