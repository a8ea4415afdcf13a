"""Router: decides each App's stable service address. It programs nothing.

Kubernetes splits exactly here: the control plane decides (a Service's cluster IP, the
EndpointSlices behind it) and kube-proxy on every node programs that node's kernel from a
watch. In Forge the decisions are records:

* ``App.status.serviceAddress`` (this controller's field): ``IP:PORT``, the port unique per App
  and stable for its life. Every proxy host binds its own service IP and keys its kernel map
  by the port (``forge.proxy``), so the IP part is this install's, informational.
* which Instances back an App: the live Deployment (``App.status.liveDeployment``, rollout's)
  and the ready, Running web Instances of it on a known Node — read by every proxy host with
  the same pure function (``forge.proxy.routing.live_dials``), as kube-proxy reads
  EndpointSlices.

Every host that serves traffic runs ``forge proxy``, which watches these records through the
API and realizes them in its own Caddy host map, service map and node routes; no leader is
needed for that, so a standby control-plane host serves exactly what the leader's does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from forge.clock import Clock
from forge.config import Config
from forge.controllers.base import Controller, Result
from forge.controllers.cache import read_only
from forge.errors import Conflict, NotFound
from forge.events import EventRecorder
from forge.models import App
from forge.proxy.routing import service_port
from forge.proxy.servicemap import allocate_ports, choose_service_ip
from forge.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

KEY: Final[str] = "addresses"


class RouterController(Controller):
    name = "router"
    watches = ("App",)
    resync_seconds = 60.0

    def __init__(
        self, store: Store, clock: Clock, config: Config, recorder: EventRecorder | None = None
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.service_ip = choose_service_ip(config.data_dir, config.service_address)

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        obj = event.object
        # Only an App without a port (a new one) needs a decision: the predicate spares the
        # walk over every App on a deploy's status writes.
        if isinstance(obj, App) and event.type != "DELETED" and service_port(obj) is None:
            return (KEY,)
        return ()

    def all_keys(self) -> Iterable[str]:
        return (KEY,)

    def reconcile(self, key: str) -> Result | None:
        if key != KEY:
            return None
        apps = read_only(self.store, App)
        if self._allocate(apps):
            return Result(requeue_after=0.05)  # re-read: a write conflicted
        return None

    def _allocate(self, apps: list[App]) -> bool:
        """Give every App without one a service port (the lowest free); True when a write conflicted."""
        held = {a.metadata.name: p for a in apps if (p := service_port(a)) is not None}
        new = allocate_ports(
            sorted(a.metadata.name for a in apps if a.metadata.deletion_timestamp is None), held
        )
        retry = False
        for app in apps:
            port = new.get(app.metadata.name)
            if port is None:
                continue
            obj = app.copy_deep()
            obj.status.service_address = f"{self.service_ip}:{port}"
            try:
                self.store.update_status(obj)
            except NotFound:
                continue
            except Conflict:
                retry = True  # someone else wrote it meanwhile: re-read and try again
        return retry
