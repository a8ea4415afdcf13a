"""The frame every controller runs in: watch → deduplicating work queue → ``reconcile(key)``.

Guarantees (STYLE "reconcile contract" §6): one worker per key at a time; duplicate adds
merge; a key re-added while it is being reconciled runs again afterwards; each item runs
inside an exception boundary (``Conflict`` → quiet short requeue, ``TerminalError`` → no
retry until the next change, anything else → per-key exponential back-off with jitter);
watches resume from the last revision and relist on ``Gone``; an apscheduler job adds every
key each ``resync_seconds`` as a safety net. Nothing here polls for work: workers block on
a condition variable that adds, delayed adds and shutdown notify.

Controllers read from an informer cache (``forge.controllers.cache``) while the runtime runs:
the one watch per kind that wakes them also feeds it, each event applied before the keys it
maps to are queued; ``start`` lends every controller a ``CachedStore`` over it and ``stop``
takes it back (a controller outside the runtime, as in the tests, reads the store itself).

Delays are measured with the runtime's ``clock.monotonic()``; give it a real clock (tests of
single controllers call ``reconcile`` directly with a ``FakeClock`` instead).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable, Iterable

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from forge.clock import Clock
from forge.controllers.base import Controller, Result
from forge.controllers.cache import CachedStore, InformerCache
from forge.errors import Conflict, Fenced, Gone, TerminalError
from forge.store.base import Store, WatchEvent
from forge.workqueue import WorkQueue

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.2
BACKOFF_CAP = 60.0
CONFLICT_DELAY = 0.1
WATCH_TIMEOUT = 0.5  # bounds how long stop() waits for a watcher blocked in store.watch


class Backoff:
    """Per-key exponential back-off with equal jitter: ``base·2ⁿ`` capped, halved + random half."""

    def __init__(
        self, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP, rng: random.Random | None = None
    ) -> None:
        self.base, self.cap = base, cap
        self._rng = rng or random.Random()
        self._failures: dict[str, int] = {}

    def next(self, key: str) -> float:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        delay = min(self.cap, self.base * (2 ** min(n, 32)))  # 2**1024 overflows a float
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter(
            "forge_controller_reconcile_total",
            "Reconciles by controller and result",
            ["controller", "result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "forge_controller_reconcile_seconds",
            "Time spent in one reconcile",
            ["controller"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.depth = Gauge(
            "forge_controller_queue_depth",
            "Keys waiting in a controller's work queue",
            ["controller"],
            registry=registry,
        )


class ControllerRuntime:
    """Runs controllers; ``start()``/``stop()`` may be repeated (leadership gained and lost)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        controllers: list[Controller],
        registry: CollectorRegistry | None = None,
        workers_per_controller: int = 1,
        rng: random.Random | None = None,
        threaded: bool = True,
    ) -> None:
        """``threaded=False`` starts no thread and no resync job: whoever drives the runtime (the
        simulator in ``tests/sim``) delivers watch events, processes queued keys and resyncs one
        step at a time through ``deliver``, ``process_one`` and ``resync``, on the real code
        paths. ``rng`` makes the back-off jitter reproducible."""
        names = [c.name for c in controllers]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"controller names must be unique and non-empty: {names}")
        self.store, self.clock, self.controllers = store, clock, list(controllers)
        self.workers_per_controller = max(1, workers_per_controller)
        self.metrics = _Metrics(registry or CollectorRegistry())
        self.rng = rng or random.Random()
        self.threaded = threaded
        self.queues: dict[str, WorkQueue] = {}
        self._backoff: dict[str, Backoff] = {}
        self._terminal: dict[str, set[str]] = {}
        self._delivered: dict[str, int] = {}  # kind → revision of the last dispatched change
        self.cache: InformerCache | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        self._running = False
        for c in self.controllers:
            self.metrics.depth.labels(c.name).set_function(functools.partial(self._depth, c.name))

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
            self._stop = threading.Event()
            self.queues = {c.name: WorkQueue(self.clock) for c in self.controllers}
            self._backoff = {c.name: Backoff(rng=self.rng) for c in self.controllers}
            self._terminal = {c.name: set() for c in self.controllers}
            self._threads = []
            kinds = sorted({k for c in self.controllers for k in c.watches})
            self.cache = InformerCache(self.store, kinds)
            for kind in kinds:
                rev = self.cache.fill(kind)
                self._delivered[kind] = rev
                if self.threaded:
                    self._spawn(f"watch-{kind}", self._watch_loop, kind, rev)
            view = CachedStore(self.store, self.cache)
            for c in self.controllers:
                c.store = view
            for c in self.controllers:
                self._add_all(c, reason="start")
                for i in range(self.workers_per_controller if self.threaded else 0):
                    self._spawn(f"{c.name}-worker-{i}", self._worker_loop, c)
            if not self.threaded:
                log.debug("controller runtime started (stepped)")
                return
            aps = logging.getLogger("apscheduler")
            if aps.level == logging.NOTSET:  # a line per resync job run drowns the useful ones
                aps.setLevel(logging.WARNING)
            self._scheduler = BackgroundScheduler(timezone="UTC", daemon=True)
            for c in self.controllers:
                if c.resync_seconds and c.resync_seconds > 0:
                    self._scheduler.add_job(
                        self._add_all,
                        "interval",
                        seconds=c.resync_seconds,
                        args=(c, "resync"),
                        id=f"resync-{c.name}",
                        coalesce=True,
                        max_instances=1,
                    )
            self._scheduler.start()
        log.info("controller runtime started: %s", ", ".join(c.name for c in self.controllers))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop acting now: no new reconcile starts; wait (bounded) for running ones to finish."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._stop.set()
            if self._scheduler is not None:
                self._scheduler.shutdown(wait=False)
                self._scheduler = None
            for q in self.queues.values():
                q.shutdown()
            threads, self._threads = self._threads, []
        deadline = self.clock.monotonic() + timeout
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - self.clock.monotonic()))
            if t.is_alive():
                log.warning("thread %s did not stop within %.0fs", t.name, timeout)
        for c in self.controllers:
            if isinstance(c.store, CachedStore):
                c.store = c.store.backend
        log.info("controller runtime stopped")

    def close(self) -> None:
        self.stop()
        for c in self.controllers:
            c.close()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Test helper: True once every queue is empty with nothing running and every watched
        kind has no change the watchers have not dispatched yet."""
        deadline = self.clock.monotonic() + timeout
        while True:
            if self._is_idle():
                return True
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return False
            self._stop.wait(min(0.02, remaining))

    def _is_idle(self) -> bool:
        if not all(q.idle() for q in self.queues.values()):
            return False
        for kind, rev in list(self._delivered.items()):
            try:
                if self.store.watch(kind, since=rev, timeout=0):
                    return False
            except Gone:
                return False
        return all(q.idle() for q in self.queues.values())

    # ------------------------------------------------------------------ stepped (threaded=False)

    def deliver(self, kind: str, events: list[WatchEvent]) -> None:
        """What one pass of ``_watch_loop`` does with the events it got: into the cache first,
        then the keys they map to into the queues."""
        cache = self.cache
        since = self._delivered.get(kind, 0)
        for ev in events:
            if cache is not None:
                cache.apply(ev)
            self._dispatch(ev)
            since = max(since, ev.revision)
        self._delivered[kind] = since

    def relist(self, kind: str) -> int:
        """What ``_watch_loop`` does on ``Gone``: refill ``kind`` and queue every key of its watchers."""
        since = self.cache.fill(kind) if self.cache is not None else self.store.revision()
        self._delivered[kind] = since
        for c in self.controllers:
            if kind in c.watches:
                self._add_all(c, reason="relist")
        return since

    def process_one(self, c: Controller) -> str | None:
        """Take ``c``'s next ready key (if any) and reconcile it, as one worker pass does."""
        q = self.queues.get(c.name)
        if q is None:
            return None
        key = q.get(timeout=0)
        if key is None:
            return None
        try:
            self._process(c, q, key)
        finally:
            q.done(key)
        return key

    def resync(self, c: Controller) -> None:
        """The periodic job's body: every key of ``c``, behind the changes."""
        self._add_all(c, reason="resync")

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, name: str, target: Callable[..., object], *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=f"forge-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _depth(self, name: str) -> float:
        q = self.queues.get(name)
        return float(q.depth()) if q is not None else 0.0

    def _add(self, c: Controller, keys: Iterable[str], from_change: bool) -> None:
        q = self.queues.get(c.name)
        if q is None:
            return
        terminal = self._terminal[c.name]
        for key in keys:
            if from_change:
                terminal.discard(key)
            elif key in terminal:
                continue
            q.add(key, low=not from_change)  # a start's or resync's keys wait behind changes

    def _add_all(self, c: Controller, reason: str) -> None:
        try:
            keys = list(c.all_keys())
        except Exception:  # the resync job must survive a store hiccup; the next one retries
            log.exception("%s: listing keys for %s failed", c.name, reason)
            return
        self._add(c, keys, from_change=False)

    def _dispatch(self, ev: WatchEvent) -> None:
        for c in self.controllers:
            if ev.object.kind not in c.watches:
                continue
            try:
                keys = list(c.keys_for(ev))
            except Exception:
                log.exception(
                    "%s: keys_for(%s %s/%s) failed", c.name, ev.type, ev.object.kind, ev.object.name
                )
                continue
            self._add(c, keys, from_change=True)

    def _watch_loop(self, kind: str, since: int) -> None:
        errors = 0
        while not self._stop.is_set():
            try:
                events = self.store.watch(kind, since=since, timeout=WATCH_TIMEOUT)
                errors = 0
            except Gone:
                since = self.cache.fill(kind) if self.cache is not None else self.store.revision()
                self._delivered[kind] = since
                log.info("watch on %s: revision compacted, relisting", kind)
                for c in self.controllers:
                    if kind in c.watches:
                        self._add_all(c, reason="relist")
                continue
            except Exception:  # a store outage must not kill the watcher; retry with back-off
                errors += 1
                log.exception("watch on %s failed (attempt %d)", kind, errors)
                self._stop.wait(min(BACKOFF_CAP, BACKOFF_BASE * 2**errors))
                continue
            if self._stop.is_set():
                return
            cache = self.cache
            for ev in events:
                if cache is not None:
                    cache.apply(ev)  # before the wake-up: the reconcile it causes reads it
                self._dispatch(ev)
                since = max(since, ev.revision)
            self._delivered[kind] = since

    def _worker_loop(self, c: Controller) -> None:
        q = self.queues[c.name]
        while True:
            key = q.get()
            if key is None:
                return
            try:
                self._process(c, q, key)
            finally:
                q.done(key)

    def _process(self, c: Controller, q: WorkQueue, key: str) -> None:
        backoff = self._backoff[c.name]
        start = self.clock.monotonic()
        outcome = "success"
        try:
            res = c.reconcile(key)
        except Fenced as exc:  # deposed while this reconcile ran: nothing was written; the new leader acts
            outcome = "fenced"
            log.warning("%s: %s: write refused by the leader fence: %s", c.name, key, exc)
        except Conflict as exc:
            outcome = "conflict"
            log.debug("%s: %s: conflict (%s), requeueing", c.name, key, exc)
            q.add_after(key, CONFLICT_DELAY + self.rng.uniform(0, CONFLICT_DELAY))
        except TerminalError as exc:
            outcome = "terminal"
            backoff.forget(key)
            self._terminal[c.name].add(key)
            log.warning("%s: %s: terminal error, not retrying until it changes: %s", c.name, key, exc)
        except Exception as exc:  # the per-item boundary: log with context, retry with back-off
            outcome = "error"
            delay = backoff.next(key)
            log.error(
                "%s: reconcile %s failed (attempt %d, retry in %.2fs): %s: %s",
                c.name,
                key,
                backoff.failures(key),
                delay,
                type(exc).__name__,
                exc,
                exc_info=backoff.failures(key) == 1,
            )
            q.add_after(key, delay)
        else:
            backoff.forget(key)
            if isinstance(res, Result) and res.requeue_after is not None:
                outcome = "requeue"
                q.add_after(key, max(0.0, res.requeue_after))
        finally:
            self.metrics.seconds.labels(c.name).observe(max(0.0, self.clock.monotonic() - start))
            self.metrics.total.labels(c.name, outcome).inc()
