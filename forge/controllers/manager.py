"""``forge controllers``: every controller in one runtime, acting only while it holds the lease.

Controllers are independent modules, listed in ``CONTROLLERS`` in the order they are built.
Metrics of the runtime and the controllers go to one registry, optionally served on
``metrics_listen`` (HOST:PORT).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from forge.clock import Clock
from forge.config import Config
from forge.controllers.base import Controller
from forge.controllers.cron import CronController
from forge.controllers.gc import GcController
from forge.controllers.github import GithubController, GithubPreviewsController
from forge.controllers.health import HealthController
from forge.controllers.leader import DEFAULT_DURATION as LEASE_SECONDS
from forge.controllers.leader import LeaderElector
from forge.controllers.nodes import NodesController
from forge.controllers.notify import NotifyController, NotifyDeliveryController
from forge.controllers.previews import PreviewsController
from forge.controllers.rollback import RollbackController
from forge.controllers.rollout import RolloutController
from forge.controllers.router import RouterController
from forge.controllers.runtime import ControllerRuntime
from forge.controllers.scheduler import SchedulerController
from forge.controllers.source import SourceController
from forge.controllers.tally import TallyController
from forge.github.auth import stored_app
from forge.processid import LocalProcesses
from forge.store.base import Store

log = logging.getLogger(__name__)

CONTROLLERS: tuple[type[Controller], ...] = (
    SourceController,
    RolloutController,
    SchedulerController,
    HealthController,
    RollbackController,
    RouterController,
    NodesController,
    GcController,
    TallyController,
    CronController,
    PreviewsController,
    NotifyController,
    NotifyDeliveryController,
)


def build_controllers(
    config: Config, store: Store, clock: Clock, registry: CollectorRegistry
) -> list[Controller]:
    out: list[Controller] = []
    for cls in CONTROLLERS:
        kwargs: dict[str, Any] = {}
        if "registry" in inspect.signature(cls).parameters:
            kwargs["registry"] = registry
        out.append(cls(store, clock, config, **kwargs))
    if config.github_enabled or stored_app(store) is not None:  # reporting back only when configured
        reports = GithubController(store, clock, config)
        out += [reports, GithubPreviewsController(store, clock, config, client=reports.client)]
    return out


def _serve_metrics(listen: str, registry: CollectorRegistry) -> Any:
    """The metrics server, or None when the address cannot be bound: reconciling matters more
    than being scraped (a Prometheus target-down alert tells the operator; so does this log)."""
    host, _, port = listen.rpartition(":")
    try:
        server, _thread = start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry
        )
    except OSError as exc:
        log.error(
            "cannot serve controller metrics on %s: %s; running without a metrics endpoint", listen, exc
        )
        return None
    log.info("controller metrics on http://%s/metrics", listen)
    return server


def run_controllers(
    config: Config,
    store: Store,
    clock: Clock,
    stop_event: threading.Event,
    registry: CollectorRegistry | None = None,
    extra: list[Controller] | None = None,
    metrics_listen: str | None = None,
    identity: str | None = None,
    only: list[Controller] | None = None,
    lease_seconds: float = LEASE_SECONDS,
) -> None:
    """Run until ``stop_event`` is set. ``only`` replaces the built-in set (tests); ``extra`` adds."""
    registry = registry or CollectorRegistry()
    controllers = list(only) if only is not None else build_controllers(config, store, clock, registry)
    controllers += list(extra or [])
    runtime = ControllerRuntime(store, clock, controllers, registry)
    identity = identity or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    leader = Gauge(
        "forge_controller_leader", "1 while this process holds the controllers lease", registry=registry
    )

    def started() -> None:
        leader.set(1)
        runtime.start()

    def stopped() -> None:
        leader.set(0)
        runtime.stop()

    elector = LeaderElector(
        store,
        clock,
        identity,
        started,
        stopped,
        duration_seconds=lease_seconds,
        fence_store=store,
        processes=LocalProcesses(),
    )
    server = _serve_metrics(metrics_listen, registry) if metrics_listen else None
    log.info("controllers %s waiting for leadership as %s", ", ".join(c.name for c in controllers), identity)
    elector.start()
    try:
        stop_event.wait()
    finally:
        elector.stop()
        runtime.close()
        if server is not None:
            server.shutdown()
            server.server_close()
