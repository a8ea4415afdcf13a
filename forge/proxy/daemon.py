"""``forge proxy``: one per host that serves traffic, realizing the routing records on that host.

Threads: one list/watch loop per kind (Apps, Instances, Nodes; ``forge.proxy.records``) and one
worker per reconciler (``forge.proxy.reconcilers``), each with its own deduplicating work queue,
so a slow Caddy never delays a switch in the kernel. No leader election: any number of proxies
run side by side, each on its own host, each programming only that host.
One more thread reads Caddy's access log (``forge.proxy.accesslog``) into per-app request counts
(``forge.proxy.reqmetrics``), and one more reconciler sends them to the API
(``forge.proxy.reqsender``); neither can delay or block serving.

Start-up order is what keeps a restart invisible: the Caddy config file is written first (Caddy
restarts from it, complete), and no reconciler touches the host map or the kernel before every
kind has been listed once — a map computed from half a cache would drop live backends.
While the API is unreachable the watches retry with back-off and nothing is changed: the host
keeps serving what it last applied.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric

from forge import errors
from forge.client import ForgeClient
from forge.clock import Clock, SystemClock
from forge.config import Config
from forge.models import App, Resource
from forge.proxy.accesslog import AccessLogSocket, access_log_address
from forge.proxy.caddy import CaddyAdmin, forge_config, hosts_dir
from forge.proxy.hostmap import HostMap
from forge.proxy.nft import install_hash, nft_available
from forge.proxy.noderoutes import NodeRoutes
from forge.proxy.reconcilers import (
    RECOVERABLE,
    RETRY_SECONDS,
    CaddyReconciler,
    HostsReconciler,
    NodeRoutesReconciler,
    ServiceMapReconciler,
    write_caddy_config,
)
from forge.proxy.records import KINDS, KindWatch, Records
from forge.proxy.reqmetrics import RequestCollector, RequestCounter, host_targets
from forge.proxy.reqsender import RequestSender
from forge.proxy.servicemap import ServiceMap
from forge.workqueue import WorkQueue

log = logging.getLogger("forge.proxy")

MAX_BACKOFF: Final[float] = 10.0


class Reconciler(Protocol):
    """One concern of the host: its keys for a change, every key, and one key's reconcile
    (returning when to look again, in seconds, or None)."""

    name: str

    def keys_for(self, old: Resource | None, new: Resource | None) -> Iterable[str]: ...

    def all_keys(self) -> Iterable[str]: ...

    def reconcile(self, key: str) -> float | None: ...


def proxy_name(data_dir: str | Path) -> str:
    """This proxy's name towards the API (request metrics): its host and its install."""
    return f"{socket.gethostname().lower()}-{install_hash(data_dir, 'proxy')}"


def caddy_config_file(data_dir: str | Path) -> Path:
    """The last complete Caddy config this host's proxy applied (Caddy starts from it)."""
    return Path(data_dir).resolve() / "proxy" / "caddy.json"


class ProxyMetrics:
    """``forge_proxy_*``: reconciles, failures (what the ForgeProxyFailing alert watches), their time.

    ``sender``: the same three for the request-metrics sender instead, under names of its own
    (``forge_proxy_request_sends_total``, ``_send_failures_total``, ``_send_seconds``): an API
    that does not take request samples is no failure to program the host, and must not page."""

    def __init__(self, registry: CollectorRegistry, sender: bool = False) -> None:
        names = (
            (
                "forge_proxy_request_sends",
                "forge_proxy_request_send_failures",
                "forge_proxy_request_send_seconds",
            )
            if sender
            else ("forge_proxy_reconcile", "forge_proxy_failures", "forge_proxy_reconcile_seconds")
        )
        self.reconciles = Counter(
            names[0] + "_total",
            "Runs of the request-metrics sender" if sender else "Reconciles of one proxy host",
            ["reconciler"],
            registry=registry,
        )
        self.failures = Counter(
            names[1] + "_total",
            "Sender runs that could not deliver to the API (retried with back-off)"
            if sender
            else "Reconciles that could not program this host (Caddy, nftables, routes, the host map)",
            ["reconciler"],
            registry=registry,
        )
        self.seconds = Histogram(
            names[2],
            "Time of one sender run"
            if sender
            else "Time of one reconcile (a switch: one App's entry of the kernel map)",
            ["reconciler"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )


class Worker:
    """One reconciler's queue and thread: retries with per-key back-off, requeues when asked."""

    def __init__(self, reconciler: Reconciler, clock: Clock, metrics: ProxyMetrics) -> None:
        self.reconciler, self.clock, self.metrics = reconciler, clock, metrics
        self.queue = WorkQueue(clock)
        self._failures: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name=f"proxy-{reconciler.name}", daemon=True)

    def _run(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            name = self.reconciler.name
            start = self.clock.monotonic()
            try:
                again = self.reconciler.reconcile(key)
                self._failures.pop(key, None)
                self.metrics.reconciles.labels(reconciler=name).inc()
                self.metrics.seconds.labels(reconciler=name).observe(self.clock.monotonic() - start)
            except Exception as exc:  # noqa: BLE001 - the per-item boundary: a bug must not end the worker
                self.metrics.failures.labels(reconciler=name).inc()
                n = self._failures[key] = self._failures.get(key, 0) + 1
                again = min(RETRY_SECONDS * 2 ** (n - 1), MAX_BACKOFF)
                message = getattr(exc, "message", None) or str(exc)
                log.log(
                    logging.WARNING if isinstance(exc, RECOVERABLE) else logging.ERROR,
                    "proxy: %s %s failed (%s); again in %.1fs",
                    self.reconciler.name,
                    key,
                    message,
                    again,
                    exc_info=not isinstance(exc, RECOVERABLE),
                )
            finally:
                self.queue.done(key)
            if again is not None:
                self.queue.add_after(key, again)


class Proxy:
    """The records cache, its watches and the reconcilers of one host."""

    def __init__(
        self,
        config: Config,
        client: ForgeClient,
        clock: Clock | None = None,
        caddy: CaddyAdmin | None = None,
        services: ServiceMap | None | bool = True,
        node_routes: NodeRoutes | None | bool = True,
        registry: CollectorRegistry | None = None,
        access_log: bool = True,
    ) -> None:
        """``access_log``: count Caddy's access log per app (``forge.proxy.reqmetrics``)."""
        self.config, self.client = config, client
        self.clock = clock or SystemClock()
        self.stop = threading.Event()
        self.records = Records()
        if services is True:
            missing = nft_available()
            if missing is not None:
                log.warning(
                    "proxy: Caddy dials Instances directly (%s); every switch renames a host entry", missing
                )
            services = (
                ServiceMap(config.data_dir, config.service_address, pool=config.instance_pool)
                if missing is None
                else None
            )
        self.services: ServiceMap | None = services or None
        if node_routes is True:
            node_routes = NodeRoutes(config.data_dir, config.pool) if self.services is not None else None
        self.node_routes: NodeRoutes | None = node_routes or None
        self.caddy = caddy or CaddyAdmin(config.effective_caddy_admin)
        self.caddy_want = forge_config(
            config, kernel=self.services is not None, ask_url=f"{client.url}/api/v1/tls/ask"
        )
        self.hostmap = HostMap(hosts_dir(config.data_dir))
        reconcilers: list[Reconciler] = [
            CaddyReconciler(self.caddy, self.caddy_want, caddy_config_file(config.data_dir)),
            HostsReconciler(
                self.records,
                self.hostmap,
                config.domain,
                self.services.address if self.services is not None else None,
                self.clock,
            ),
        ]
        if self.services is not None:
            reconcilers.append(ServiceMapReconciler(self.records, self.services))
        if self.node_routes is not None:
            reconcilers.append(NodeRoutesReconciler(self.records, self.node_routes, self._node_event))
        self.requests = RequestCounter(
            lambda: host_targets(self.records.all(App), config.domain), wake=self._bucket_opened
        )
        self.access_log = AccessLogSocket(access_log_address(config.data_dir)) if access_log else None
        self.sender = RequestSender(self.requests, client, proxy_name(config.data_dir), self.clock)
        reconcilers.append(self.sender)
        self.registry = registry or CollectorRegistry()
        self.registry.register(RequestCollector(self.requests, self._access_metrics))
        metrics = ProxyMetrics(self.registry)
        sender_metrics = ProxyMetrics(self.registry, sender=True)
        self.workers = {
            r.name: Worker(r, self.clock, sender_metrics if r is self.sender else metrics)
            for r in reconcilers
        }
        self._started = False
        self._start_lock = threading.Lock()
        self.watches = [KindWatch(client, plural, self.records, self._changed, self.stop) for plural in KINDS]

    def _node_event(self, node: str, type_: str, reason: str, message: str) -> None:
        try:
            self.client.request(
                "POST",
                f"/api/v1/nodes/{node}/events",
                json={"type": type_, "reason": reason, "message": message},
            )
        except errors.ForgeError as exc:
            log.info("proxy: could not record %s on node %s: %s", reason, node, exc)

    def _bucket_opened(self, close_at: float) -> None:
        if self._started:
            self.workers[self.sender.name].queue.add_after(RequestSender.KEY, close_at - self.clock.now())

    def _access_metrics(self) -> Iterator[Metric]:
        drops = self.access_log.drops() if self.access_log is not None else None
        if drops is not None:
            family = CounterMetricFamily(
                "forge_proxy_access_log_dropped",
                "Access-log datagrams the kernel dropped (the proxy read too slowly)",
            )
            family.add_metric([], drops)
            yield family
        yield from self.sender.metrics()

    def _changed(self, old: Resource | None, new: Resource | None) -> None:
        """A record changed (``old``/``new``), or (None, None): a kind was listed."""
        if isinstance(old, App) or isinstance(new, App):
            self.requests.hosts_changed()
        if not self._started:
            with self._start_lock:
                if not self._started:
                    if self.records.is_synced():
                        self._start_reconcilers()  # the first full pass covers every change so far
                    return
        if old is None and new is None:
            return
        for worker in self.workers.values():
            for key in worker.reconciler.keys_for(old, new):
                worker.queue.add(key)

    def _start_reconcilers(self) -> None:
        self._started = True
        log.info("proxy: records listed; reconciling")
        if self.access_log is not None:
            threading.Thread(
                target=self.access_log.run,
                args=(self.requests.observe, self.requests.bad_line),
                name="proxy-access-log",
                daemon=True,
            ).start()
        for worker in self.workers.values():
            for key in worker.reconciler.all_keys():
                worker.queue.add(key)

    def start(self) -> None:
        """Write Caddy's start-up config, start the workers and the watches (returns at once)."""
        write_caddy_config(caddy_config_file(self.config.data_dir), self.caddy_want)
        self.hostmap.ensure()
        if self.access_log is not None:
            try:
                self.access_log.bind()  # now: what Caddy logs from here on waits in the socket
            except OSError as exc:  # serving matters more than counting
                log.error(
                    "proxy: cannot read the access log on udp/%s:%d (%s); no request metrics",
                    self.access_log.host,
                    self.access_log.port,
                    exc,
                )
                self.access_log = None
        for worker in self.workers.values():
            worker.thread.start()
        self.workers["caddy"].queue.add(CaddyReconciler.KEY)  # Caddy needs no records
        for watch in self.watches:
            threading.Thread(target=watch.run, name=f"proxy-watch-{watch.plural}", daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        if self.access_log is not None:
            self.access_log.close()
        for worker in self.workers.values():
            worker.queue.shutdown()
        for worker in self.workers.values():
            worker.thread.join(timeout=10)
        if self._started:
            self.sender.flush()
        self.caddy.close()


def run_proxy(
    config: Config,
    api_url: str,
    token: str,
    stop: threading.Event,
    clock: Clock | None = None,
    metrics_listen: str | None = None,
) -> None:
    """Serve until ``stop``; what was applied stays applied (the host keeps serving after exit)."""
    with ForgeClient(api_url, token) as client:
        proxy = Proxy(config, client, clock)
        server = None
        if metrics_listen:
            host, _, port = metrics_listen.rpartition(":")
            try:
                server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=proxy.registry)
            except OSError as exc:  # programming the host matters more than being scraped
                log.error("proxy: cannot serve metrics on %s: %s", metrics_listen, exc)
        proxy.start()
        log.info(
            "proxy: %s mode, host map %s, Caddy admin %s, API %s",
            "kernel" if proxy.services is not None else "caddy",
            proxy.hostmap.root,
            proxy.caddy.admin_url,
            api_url,
        )
        try:
            stop.wait()
        finally:
            proxy.close()
            if server is not None:
                server.shutdown()
