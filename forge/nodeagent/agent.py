"""``forge agent``: the node agent's frame — register, heartbeat, watch, work loop, shipper, metrics.

Threads: one list/watch loop (resumes from the last resourceVersion, relists on 410, backs
off when the API is down), a few workers pulling keys from a deduplicating work queue whose
timers carry every "later" (probes, back-off restarts, heartbeats), a pidfd exit watcher, the
log shipper and the metrics server. The agent reaches the control plane only over HTTP.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from forge import errors
from forge.cgroups import detect_driver
from forge.client import ForgeClient
from forge.clock import Clock, SystemClock
from forge.hostperms import secure_agent_dir
from forge.models import LABEL_NODE, Instance
from forge.nodeagent import buildcache
from forge.nodeagent import node as nodeinfo
from forge.nodeagent.builder import BUILT_DIR, Builder, api_credentials
from forge.nodeagent.diskfence import IMAGES_DIR, DiskFence, image_mode_missing
from forge.nodeagent.diskgc import DiskGC, Release
from forge.nodeagent.drains.manager import DrainManager
from forge.nodeagent.exitwatch import ExitWatcher
from forge.nodeagent.logship import Shipper
from forge.nodeagent.logwriter import DEFAULT_CAP as DEFAULT_LOG_CAP
from forge.nodeagent.metrics import AgentCollector, serve_metrics
from forge.nodeagent.network import NodeNetwork, default_proxy_sources
from forge.nodeagent.reconciler import Reconciler
from forge.nodeagent.sandbox import Sandbox, SandboxSpec, UidAllocator
from forge.nodeagent.state import AgentState
from forge.nodeagent.status import StatusWriter
from forge.nodeagent.supervisor import Supervisor
from forge.nodeagent.usage import UsageSampler
from forge.proxy.nft import install_hash, nft_available
from forge.series import USAGE_SECONDS
from forge.workqueue import WorkQueue

log = logging.getLogger("forge.agent")

HEARTBEAT_KEY = "~heartbeat"
DISKGC_KEY = "~diskgc"
DISKGC_SECONDS = 600.0  # release dirs on disk are collected every 10 minutes ...
DISKGC_AFTER_STOP_SECONDS = 5.0  # ... and shortly after an Instance of this node was stopped and forgotten
# (a deleted app's releases, images, storage and uid are gone well within 30 s of its deletion)
DISK_KEY = "~disk"
DISK_CHECK_SECONDS = 5.0  # how often running releases are measured against resources.disk
USAGE_KEY = "~usage"  # the Instances' CPU, memory and restarts, sampled and sent (forge.nodeagent.usage)
WATCH_TIMEOUT = 60
MAX_BACKOFF = 30.0
HEARTBEAT_SECONDS = 2.0  # Lease renewals; the lease lasts LEASE_RENEWALS of them
LEASE_RENEWALS = 3
MIN_LEASE_SECONDS = 6.0
FENCE_RETRY_SECONDS = 0.2
_AUTO: Any = object()


def is_assigned(inst: Instance, node: str) -> bool:
    """This node is (still) meant to run ``inst``."""
    return inst.spec.desired == "Running" and inst.spec.node in (None, node) and inst.status.phase != "Lost"


def node_cgroup_parent(node: str, data_dir: str | Path) -> str:
    """``forge/NODE.INSTALL``: where this node's build and app cgroups live. INSTALL is a hash of
    the agent's data dir, so two installs on one machine (even with the same, default node name:
    the hostname) never share a subtree — and never sweep each other's apps as orphans."""
    return f"forge/{node}.{install_hash(data_dir)}"


class Agent:
    def __init__(
        self,
        client: ForgeClient,
        name: str,
        data_dir: Path,
        address: str,
        metrics_listen: str | None,
        mode: str,
        git_url_template: str,
        stop: threading.Event,
        clock: Clock,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        workers: int = 4,
        log_cap_bytes: int = DEFAULT_LOG_CAP,
        driver: Any = _AUTO,
        cgroup_parent: str | None = None,
        network: Any = _AUTO,
        instance_subnet: str = "",
        instance_pool: str = "",
        app_host_ports: tuple[int, ...] = (),
        build_env: dict[str, str] | None = None,
        build_files: tuple[tuple[str, str], ...] = (),
        disk_fence: Any = _AUTO,
        proxy_sources: tuple[str, ...] | None = None,
        build_cache_size: int = buildcache.DEFAULT_LIMIT,
        usage_seconds: float = USAGE_SECONDS,
    ) -> None:
        self.client, self.name, self.address, self.clock, self.stop = client, name, address, clock, stop
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_listen, self.heartbeat_seconds, self.n_workers = (
            metrics_listen,
            heartbeat_seconds,
            workers,
        )
        # One subtree per node under forge/: two agents on one machine (a dev box, CI) never
        # mistake each other's apps for orphans.
        self.driver = (
            detect_driver(parent=cgroup_parent or node_cgroup_parent(name, self.data_dir))
            if driver is _AUTO
            else driver
        )
        self.sandbox = Sandbox(self.driver, mode=mode, clock=clock)
        self.isolation = self.sandbox.check()  # production without isolation raises Unavailable here
        if network is _AUTO:
            if proxy_sources is None:
                proxy_sources = default_proxy_sources(str(getattr(client, "url", "")))
            network = self._own_network(mode, instance_subnet, app_host_ports, proxy_sources, instance_pool)
        self.network = network
        self.isolation.network = "netns" if self.network is not None else "host"
        self.fence = DiskFence(self.data_dir) if disk_fence is _AUTO else disk_fence
        if self.fence is not None:
            self.isolation.disk = self.fence.mode
            if self.fence.mode != "image":
                self.isolation.missing.append(f"release filesystems ({image_mode_missing()})")
        self.uids = UidAllocator(self.data_dir / "uids.json", salt=install_hash(self.data_dir))
        self.state = AgentState(self.data_dir / "agent-state.json").load()
        self.queue = WorkQueue(clock)
        # The lease has a queue and a worker of its own: builds, stop timeouts and disk work
        # on the shared workers must never make a live node look dead.
        self.beats = WorkQueue(clock)
        self.cache: dict[str, Instance] = {}
        self.cache_lock = threading.Lock()
        self.synced = threading.Event()
        self.last_heartbeat = 0.0
        self.lease_seconds = max(LEASE_RENEWALS * heartbeat_seconds, MIN_LEASE_SECONDS)
        self._lease: dict[str, Any] | None = None  # as last written: the next renewal is one PUT
        self._renewed_mono = 0.0
        # Fenced: no Lease renewal (so the control plane never sees this node come back) until
        # every process it runs is for an Instance still assigned to it. At start, and after a
        # lapse of the lease (the control plane may have replaced this node's Instances).
        self.fencing = True
        self.exits = ExitWatcher(self.queue.add)
        self.shipper = Shipper(
            client, self.state, self.data_dir / "logs", clock, stop, cap_bytes=log_cap_bytes
        )
        self.drains = DrainManager(
            client, name, self.data_dir, self.data_dir / "logs", self.state, self._process_of, clock, stop
        )
        builder = Builder(
            self.data_dir,
            git_url_template,
            self.sandbox,
            self.driver,
            clock,
            SandboxSpec,
            self._owner,
            credentials=api_credentials(client),
            network=self.network,
            build_env=build_env,
            build_files=build_files,
            fence=self.fence,
            log_cap=log_cap_bytes,
        )
        self.supervisor = Supervisor(
            self.sandbox, self.driver, clock, SandboxSpec, self._owner, log_cap=log_cap_bytes
        )
        status = StatusWriter(client, clock, self._remember)
        self.reconciler = Reconciler(
            client,
            name,
            self.data_dir,
            self.state,
            builder,
            self.supervisor,
            self.shipper,
            status,
            clock,
            self.exits.watch,
            network=self.network,
            node_address=address,
        )
        self.diskgc = DiskGC(
            self.data_dir / "releases",
            self._releases_in_use,
            builder.release_lock,
            fence=self.fence,
            build_cache_limit=build_cache_size,
        )
        self.reconciler.on_last_stopped = self.purge_if_gone
        self.usage = UsageSampler(client, name, self.state, self.driver, clock, usage_seconds)
        self.reconciler.drains_pending = self.drains.pending
        self.threads: list[threading.Thread] = []
        self.metrics_server: Any = None

    def _own_network(
        self,
        mode: str,
        subnet: str,
        host_ports: tuple[int, ...],
        proxy_sources: tuple[str, ...],
        pool: str = "",
    ) -> NodeNetwork | None:
        """This node's data plane, or None (the shared host network) where it cannot be built."""
        missing = nft_available()
        if missing is None:
            return NodeNetwork(
                self.data_dir, subnet=subnet, host_ports=host_ports, proxy_sources=proxy_sources, pool=pool
            )
        if mode == "production":
            raise errors.Unavailable(
                f"refusing to run apps without their own network (FORGE_MODE=production): {missing}"
            )
        log.warning("apps share the host's network (dev mode): %s", missing)
        self.isolation.missing.append(f"network namespaces ({missing})")
        return None

    def _process_of(self, instance: str) -> str:
        """The process type an Instance runs (a log drain's MSGID), from the watch's cache."""
        with self.cache_lock:
            inst = self.cache.get(instance)
        return inst.spec.process if inst is not None else "web"

    def _owner(self, app: str) -> tuple[int | None, int | None]:
        if os.geteuid() != 0:
            return None, None
        uid = self.uids.uid_for(app)
        return uid, uid

    # -- lifecycle -------------------------------------------------------------
    def run(self) -> None:
        secure_agent_dir(self.data_dir, self.uids.known())  # an install from before: made private
        if self.network is not None:
            self.network.setup()  # idempotent: a restarted agent keeps the bridge and every namespace
        self._register()
        if self.stop.is_set():
            return
        self._adopt()
        self.exits.start()
        self.shipper.start()
        self.drains.start()
        if self.metrics_listen:
            self.metrics_server, _ = serve_metrics(
                self.metrics_listen,
                AgentCollector(
                    self.state,
                    self.driver,
                    lambda: self.last_heartbeat,
                    lambda: self.diskgc.removed_total,
                    lambda: self.shipper.dropped_total,
                ),
            )
        self.schedule_timers()
        self.threads = [threading.Thread(target=self._watch_loop, name="forge-watch", daemon=True)]
        self.threads += [
            threading.Thread(target=self._work, name=f"forge-work-{i}", daemon=True)
            for i in range(self.n_workers)
        ]
        self.threads.append(
            threading.Thread(target=self._work, args=(self.beats,), name="forge-heartbeat", daemon=True)
        )
        for t in self.threads:
            t.start()
        log.info(
            "agent %s running (isolation: cgroups %s, namespaces %s, network %s)",
            self.name,
            self.isolation.cgroups,
            self.isolation.namespaces,
            self.isolation.network,
        )
        self._wait_for_stop()
        t0 = self.clock.monotonic()
        self.reconciler.stopping.set()
        self.shutdown()
        log.info("agent %s stopped its threads in %.2fs", self.name, self.clock.monotonic() - t0)

    def _wait_for_stop(self) -> None:
        """Until ``stop`` is set. In the main thread, a futex wait is not woken by a SIGTERM the
        kernel hands to another thread — the handler that sets ``stop`` would only run once the
        main thread woke for another reason (a bench saw an agent ignore SIGTERM for minutes).
        So the main thread waits in ``select`` on the signal wake-up fd, which any thread's
        signal writes to; elsewhere (tests, embedded) a plain wait."""
        if threading.current_thread() is not threading.main_thread():
            self.stop.wait()
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        try:
            previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:
            os.close(r)
            os.close(w)
            self.stop.wait()
            return
        try:
            while not self.stop.is_set():
                select.select([r], [], [])
                with contextlib.suppress(BlockingIOError):
                    os.read(r, 512)
        finally:
            signal.set_wakeup_fd(previous)
            os.close(r)
            os.close(w)

    def shutdown(self) -> None:
        """Stop the agent's own threads; apps keep running (they are detached on purpose)."""
        self.queue.shutdown()
        self.beats.shutdown()
        for t in self.threads[1:]:
            t.join(timeout=15)
        self.exits.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.shipper.thread.join(timeout=5)
        self.drains.shutdown()
        self.client.close()

    def _register(self) -> None:
        delay = 0.5
        metrics = self.metrics_listen
        while not self.stop.is_set():
            try:
                nodeinfo.register(
                    self.client,
                    self.name,
                    self.address,
                    self.isolation,
                    metrics,
                    self.clock,
                    subnet=str(self.network.subnet) if self.network is not None else None,
                )
                return
            except errors.SubnetTaken as exc:
                if self.network is not None and self.network.reselect():
                    log.warning("%s; this node now uses %s", exc.message, self.network.subnet)
                    continue
                log.warning("cannot register node %s: %s", self.name, exc)
            except (errors.Unavailable, errors.Conflict) as exc:
                log.warning("cannot register node %s yet: %s", self.name, exc)
            self.stop.wait(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def _adopt(self) -> None:
        """Processes from before a restart: keep the live ones (watched for exit), forget none.
        Groups a killed agent left frozen (mid-kill) are thawed first."""
        if self.driver is not None:
            for group in self.driver.list_groups():
                self.driver.thaw(group)
        for name in self.state.names():
            st = self.state.get(name)
            if st is None or not st.pid:
                continue
            if self.supervisor.is_running(st):
                log.info("re-adopted %s (pid %s, port %s)", name, st.pid, st.port)
                self.exits.watch(st.pid, name)
            else:
                # Gone while no agent watched it: stopped by forge up on its way out, by a
                # reboot, or by the kill of this agent's parent. Nobody saw the app fail, so
                # it is started again without counting a crash (see Reconciler.gone_at_start).
                self.reconciler.gone_at_start.add(name)

    # -- work loop -------------------------------------------------------------
    def schedule_timers(self) -> None:
        """The agent's own periodic keys: the heartbeat now, the first disk GC after the first list."""
        self.beats.add(HEARTBEAT_KEY)
        self.queue.add_after(DISKGC_KEY, DISKGC_AFTER_STOP_SECONDS)
        if self.fence is not None:
            self.queue.add_after(DISK_KEY, DISK_CHECK_SECONDS)
        self.queue.add_after(USAGE_KEY, self.usage.next_delay())

    def _work(self, queue: WorkQueue | None = None) -> None:
        queue = queue or self.queue
        while True:
            key = queue.get()
            if key is None:
                return
            self.process(key)

    def process(self, key: str) -> None:
        """Handle one key from the queue and requeue it when it asks to run again."""
        queue = self.beats if key == HEARTBEAT_KEY else self.queue
        after: float | None
        try:
            if key == HEARTBEAT_KEY:
                after = self._heartbeat()
            elif key == DISKGC_KEY:
                after = self._collect_disk()
            elif key == DISK_KEY:
                after = self._check_disk()
            elif key == USAGE_KEY:
                after = self.usage.tick()
            else:
                after = self._reconcile(key)
        except errors.Unavailable as exc:
            log.warning("%s: control plane unavailable (%s); retrying", key, exc)
            after = 2.0
        except errors.ForgeError as exc:
            log.warning("%s: %s: %s", key, type(exc).__name__, exc)
            after = 5.0
        except Exception:  # the per-item boundary: log with context, retry later
            log.exception("reconciling %s failed", key)
            after = 10.0
        finally:
            queue.done(key)
        if after is not None:
            queue.add_after(key, after)

    def _reconcile(self, name: str) -> float | None:
        if not self.synced.is_set():
            return 1.0  # never stop anything before the first list says what is ours
        with self.cache_lock:
            inst = self.cache.get(name)
        had = self.state.get(name) is not None
        after = self.reconciler.reconcile(name, inst)
        if had and self.state.get(name) is None:  # stopped and forgotten: its release may be garbage now
            self.queue.add_after(DISKGC_KEY, DISKGC_AFTER_STOP_SECONDS)
        return after

    def _releases_in_use(self) -> set[Release]:
        """Releases any Instance in the agent state or assigned to this node (the watch cache) uses."""
        with self.state.lock:
            used = {
                (st.app, Path(st.release_dir).name or st.deployment) for st in self.state.instances.values()
            }
        with self.cache_lock:
            used |= {(i.spec.app, i.spec.build or i.spec.deployment) for i in self.cache.values()}
        return used

    def _collect_disk(self) -> float:
        if not self.synced.is_set():
            return DISKGC_AFTER_STOP_SECONDS  # until the first list, the cache cannot say what is in use
        gone = self._gone_apps()
        self.diskgc.run(gone)
        pending = self._collect_storage()
        self._retire(gone)
        if pending:
            return DISKGC_AFTER_STOP_SECONDS  # a deleted app's Instances are still stopping: look again soon
        return DISKGC_SECONDS

    def _apps_with_files(self) -> set[str]:
        """Apps this node holds anything of: release dirs, storage, a uid."""
        apps = set(self.uids.known())
        for sub in ("releases", "storage"):
            try:
                apps |= {e.name for e in os.scandir(self.data_dir / sub) if e.is_dir(follow_symlinks=False)}
            except FileNotFoundError:
                continue
        return apps

    def _gone_apps(self) -> set[str]:
        """Apps with files here that no longer exist and that no Instance of this node uses."""
        in_use = {app for app, _ in self._releases_in_use()}
        candidates = sorted(self._apps_with_files() - in_use)
        if not candidates:
            return set()
        exist: set[str] = set()
        for i in range(0, len(candidates), 500):
            batch = candidates[i : i + 500]
            try:
                answer = self.client.request(
                    "GET", f"/api/v1/nodes/{self.name}/apps", params={"names": ",".join(batch)}
                )
            except errors.NotFound:  # a control plane from before this endpoint: nothing is gone
                return set()
            exist |= set((answer or {}).get("apps") or [])
        return set(candidates) - exist

    def purge_if_gone(self, app: str) -> None:
        """The last Instance of ``app`` here has stopped: when the App no longer exists, delete
        its release dirs (images unmounted), storage and uid now, before the stop is reported —
        the API frees the name only once every Instance is gone, so a new App of that name
        never meets a file, or the uid, of the old one. Raises (to retry) when files remain."""
        try:
            answer = self.client.request("GET", f"/api/v1/nodes/{self.name}/apps", params={"names": app})
        except errors.NotFound:  # a control plane from before this endpoint: the disk GC's pass decides
            return
        if app in set((answer or {}).get("apps") or []):
            return
        left = [] if self.diskgc.purge(app) else ["releases"]
        if self.fence is not None and self.fence.storage_dir(app).exists():
            try:
                self.fence.remove_storage(app)
            except (OSError, errors.ForgeError) as exc:
                left.append(f"storage ({exc})")
        if left:
            raise errors.Unavailable(f"deleting the files of deleted app {app}: {', '.join(left)} remain")
        self._retire({app})
        log.info("app %s is gone: its releases, storage and uid here are deleted", app)

    def _retire(self, gone: set[str]) -> None:
        """A gone app whose files here are all deleted: its uid is never handed out again, and
        the empty dirs it had go (the next app of that name starts from nothing)."""
        for app in sorted(gone):
            if any((self.data_dir / sub / app).exists() for sub in ("releases", "storage")):
                continue  # still being deleted (a build's lock, an unmount that failed): next pass
            for sub in (BUILT_DIR, IMAGES_DIR, buildcache.CACHE_DIR):  # the build cache: files of its uid
                shutil.rmtree(self.data_dir / sub / app, ignore_errors=True)
            uid = self.uids.retire(app)
            if uid is not None:
                log.info("app %s is gone and its files deleted: uid %d retired", app, uid)

    def _collect_storage(self) -> bool:
        """Delete the persistent storage of apps that are gone: on disk here, not in use by any
        Instance of this node, and not among the apps the control plane says live on this node."""
        if self.fence is None:
            return False
        root = self.fence.data_dir / "storage"
        try:
            on_disk = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return False
        if not on_disk:
            return False
        keep = set((self.client.request("GET", f"/api/v1/nodes/{self.name}/storage") or {}).get("apps") or [])
        in_use = {app for app, _ in self._releases_in_use()}
        pending = False
        for app in on_disk:
            if app in keep:
                continue
            if app in in_use:
                pending = True
                continue
            log.info("deleting the persistent storage of app %s (the app is gone)", app)
            try:
                self.fence.remove_storage(app)
            except (OSError, errors.ForgeError) as exc:
                log.warning("cannot delete the storage of %s: %s", app, exc)
                continue
            try:
                self.client.request(
                    "POST",
                    f"/api/v1/nodes/{self.name}/events",
                    json={
                        "type": "Normal",
                        "reason": "StorageDeleted",
                        "message": f"deleted the persistent storage of app {app} (the app was deleted)",
                    },
                )
            except errors.ForgeError:
                pass
        return pending

    def _check_disk(self) -> float:
        """Measure running releases against their ``resources.disk`` and look at their storage;
        full or damaged ones' Instances are queued and stop in their own reconcile (one writer per
        Instance)."""
        with self.cache_lock:
            limits = {name: inst.spec.resources.disk for name, inst in self.cache.items()}
            storage = {name for name, inst in self.cache.items() if inst.spec.storage}
        for name in self.reconciler.check_disk(limits, storage):
            self.queue.add(name)
        return DISK_CHECK_SECONDS

    def _heartbeat(self) -> float:
        mono = self.clock.monotonic()
        if not self.fencing and self._renewed_mono and mono - self._renewed_mono > self.lease_seconds:
            log.warning(
                "lease of node %s lapsed (%.1fs since the last renewal): stopping whatever is no longer "
                "assigned here before renewing it",
                self.name,
                mono - self._renewed_mono,
            )
            self.fencing = True
            self._relist({LABEL_NODE: self.name})  # the cache may predate the control plane's verdict
        if self.fencing:
            if not self.synced.is_set():
                return FENCE_RETRY_SECONDS  # the first list has not come in: nothing can be judged yet
            stale = self._unassigned_running()
            if stale:
                for name in stale:
                    self.queue.add(name)
                return FENCE_RETRY_SECONDS
            self.fencing = False
        try:
            self._lease = nodeinfo.renew_lease(
                self.client, self.name, self.lease_seconds, self.clock, self._lease
            )
        except errors.Conflict:
            self._lease = None
            return 0.2
        took = self.clock.monotonic() - mono
        if took > self.heartbeat_seconds:
            log.warning(
                "renewing the lease of node %s took %.1fs (lease %.0fs)", self.name, took, self.lease_seconds
            )
        self._renewed_mono = mono
        self.last_heartbeat = self.clock.now()
        return self.heartbeat_seconds

    def _unassigned_running(self) -> list[str]:
        """Names of local processes whose Instance is no longer this node's to run. An Instance
        marked Lost was written off by the control plane and replaced under another name: it
        never runs here again."""
        with self.cache_lock:
            ours = {n for n, i in self.cache.items() if is_assigned(i, self.name)}
        out = []
        for name in self.state.names():
            st = self.state.get(name)
            if st is not None and st.pid and name not in ours:
                out.append(name)
        return out

    # -- watch -----------------------------------------------------------------
    def _remember(self, obj: dict[str, Any]) -> None:
        """Put a newer version of an Instance into the cache (never an older one)."""
        try:
            inst = Instance.model_validate(obj)
        except ValidationError as exc:
            log.warning("ignoring an Instance the agent cannot read: %s", exc)
            return
        with self.cache_lock:
            cur = self.cache.get(inst.name)
            if cur is None or cur.metadata.resource_version <= inst.metadata.resource_version:
                self.cache[inst.name] = inst

    def _relist(self, selector: dict[str, str]) -> int:
        items, rv = self.client.list("instances", selector)
        with self.cache_lock:
            before = set(self.cache)
            self.cache = {}
        for obj in items:
            self._remember(obj)
        with self.cache_lock:
            names = set(self.cache)
        for key in sorted(before | names | set(self.state.names())):
            self.queue.add(key)
        if not self.synced.is_set():
            self._sweep_orphans(names)
            self.synced.set()
        return rv

    def _sweep_orphans(self, assigned: set[str]) -> None:
        """Stop processes in Forge cgroups, and remove network namespaces, that no Instance of
        this node (nor the state) explains; builds in flight before a restart are orphans too."""
        if self.driver is not None:
            known = {f"inst-{n}" for n in assigned | set(self.state.names())}
            for group in self.driver.list_groups():
                if group.startswith("build-") or (group.startswith("inst-") and group not in known):
                    log.warning("stopping orphaned cgroup %s", group)
                    self.sandbox.stop(group, None, 10.0, self.clock)
                    self._node_event(
                        "Warning",
                        "OrphanStopped",
                        f"stopped the processes of cgroup {group}: no Instance of this node explains them",
                    )
        if self.network is not None:
            for ns in self.network.sweep(keep=assigned | set(self.state.names())):
                self._node_event(
                    "Warning", "OrphanStopped", f"removed network namespace of {ns}: no Instance explains it"
                )

    def _node_event(self, type_: str, reason: str, message: str) -> None:
        try:
            self.client.request(
                "POST",
                f"/api/v1/nodes/{self.name}/events",
                json={"type": type_, "reason": reason, "message": message[:1000]},
            )
        except errors.ForgeError as exc:
            log.info("could not record %s on node %s: %s", reason, self.name, exc)

    def _watch_loop(self) -> None:
        selector = {LABEL_NODE: self.name}
        rv: int | None = None
        delay = 0.5
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self._relist(selector)
                for typ, obj in self.client.watch("instances", rv, selector, timeout_seconds=WATCH_TIMEOUT):
                    if self.stop.is_set():
                        return
                    delay = 0.5  # the API answers again: the next outage starts from a short back-off
                    rv = int(obj.get("metadata", {}).get("resourceVersion") or rv)
                    if typ == "BOOKMARK":
                        continue
                    name = obj.get("metadata", {}).get("name", "")
                    if typ == "DELETED":
                        with self.cache_lock:
                            self.cache.pop(name, None)
                    else:
                        self._remember(obj)
                    if typ == "DELETED" or (obj.get("spec") or {}).get("desired") == "Stopped":
                        # Its release failed or was cancelled: a build in flight stops now, not
                        # when it ends (the key's own worker is busy running it).
                        self.reconciler.cancel_build(name)
                    self.queue.add(name)
                delay = 0.5
            except errors.Gone:
                rv = None
            except errors.ForgeError as exc:
                log.warning("instance watch failed (%s); retrying in %.1fs", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)


def run_agent(
    api_url: str,
    token: str,
    name: str | None = None,
    data_dir: str | Path | None = None,
    address: str | None = None,
    metrics_listen: str | None = "127.0.0.1:9108",
    mode: str = "dev",
    git_url_template: str = "https://github.com/{full_name}.git",
    stop_event: threading.Event | None = None,
    clock: Clock | None = None,
    **options: Any,
) -> None:
    """Run the agent until ``stop_event`` is set (apps it started keep running afterwards)."""
    node_name = (name or socket.gethostname()).lower()
    stop = stop_event or threading.Event()
    client = ForgeClient(api_url, token, timeout=15.0)
    agent = Agent(
        client,
        node_name,
        Path(data_dir or Path.cwd() / ".forge" / "agent"),
        address or "127.0.0.1",
        metrics_listen,
        mode,
        git_url_template,
        stop,
        clock or SystemClock(),
        **options,
    )
    agent.run()


def main(argv: list[str] | None = None) -> None:
    """``python -m forge.nodeagent.agent`` (the CLI's ``forge agent`` calls run_agent the same way)."""

    p = argparse.ArgumentParser(prog="forge-agent")
    p.add_argument("--api", required=True)
    p.add_argument("--token", default=None, help="node token (default: $FORGE_NODE_TOKEN)")
    p.add_argument("--name")
    p.add_argument("--data-dir")
    p.add_argument("--address")
    p.add_argument("--metrics-listen", default="127.0.0.1:9108")
    p.add_argument("--heartbeat-seconds", type=float, default=HEARTBEAT_SECONDS)
    p.add_argument("--cgroup-parent", default=None, help="default: forge/NODE")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FORGE_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s"
    )
    token = a.token or os.environ.pop("FORGE_NODE_TOKEN", "")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_agent(
        a.api,
        token,
        a.name,
        a.data_dir,
        a.address,
        a.metrics_listen or None,
        os.environ.get("FORGE_MODE", "dev"),
        os.environ.get("FORGE_GIT_URL_TEMPLATE", "https://github.com/{full_name}.git"),
        stop,
        heartbeat_seconds=a.heartbeat_seconds,
        cgroup_parent=a.cgroup_parent,
    )


if __name__ == "__main__":
    main()
