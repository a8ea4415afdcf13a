"""Leader election through the Lease record ``controllers-leader``.

Several ``forge controllers`` processes may share a store; only the holder of the Lease
acts. The holder renews every ``duration/3``. A contender never trusts the ``renewTime`` the
holder wrote (its clock may differ): it remembers the Lease's resourceVersion and *its own*
monotonic time when it last saw that version change, and takes over only when the Lease has
not changed for a whole ``durationSeconds`` by that local clock. Every write carries the
resourceVersion that was read, so two contenders racing for an expired Lease cannot both win.

**Fencing.** Each takeover bumps ``spec.transitions``: the leader's generation. The leader puts
``Fence(lease, identity, generation)`` on the store its controllers write through, and the store
checks it inside every write's transaction. A leader paused past its lease (SIGSTOP, a long GC, a
partition) resumes with in-flight reconciles that read the world before the pause; their writes
fail ``Fenced`` because the Lease names another holder or generation now — the pitfall Kubernetes'
leader election documents (it has no fencing of its own).

**A dead predecessor on this machine.** The Lease also names the holder's process
(``spec.holderProcess``: machine, boot, pid and start time). A contender that can prove that
process gone (``forge.processid.gone``: the same machine booted since, or the pid no longer runs
that process) takes over at once instead of waiting the Lease out — a restarted ``forge up``
leads again within one round. A holder elsewhere, or one it cannot see, it never pre-empts.

The holder gives up (``on_stopped_leading``) as soon as a renewal is refused with Conflict,
or when it has not managed to renew for ``renew_deadline`` (< duration, so it stops acting
before anybody else may start).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from forge.clock import Clock
from forge.errors import AlreadyExists, Conflict, ForgeError, NotFound
from forge.models import HolderProcess, Lease, LeaseSpec, ObjectMeta
from forge.processid import Processes, gone
from forge.store.base import Fence, Store

log = logging.getLogger(__name__)

LEASE_NAME = "controllers-leader"
DEFAULT_DURATION = 15.0


class LeaderElector:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        identity: str,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
        lease_name: str = LEASE_NAME,
        duration_seconds: float = DEFAULT_DURATION,
        fence_store: Store | None = None,
        processes: Processes | None = None,
    ) -> None:
        # The store the leader's controllers write through: it gets this leader's Fence, so a
        # write from a leader that was deposed while paused fails inside the store.
        self.fence_store = fence_store
        self.fence: Fence | None = None
        self.store, self.clock, self.identity = store, clock, identity
        self.on_started_leading, self.on_stopped_leading = on_started_leading, on_stopped_leading
        self.lease_name, self.duration = lease_name, duration_seconds
        self.renew_interval = duration_seconds / 3
        self.renew_deadline = duration_seconds * 2 / 3
        self.leading = False
        # This machine's processes: who we are (written in the Lease) and whether a holder here
        # is gone. None: no holder process is recorded and every Lease is waited out.
        self.processes = processes
        self.me: HolderProcess | None = processes.me() if processes is not None else None
        self._observed: tuple[int, float] | None = None  # (resourceVersion, local monotonic seen)
        self._last_renew = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ one step (testable)

    def try_acquire_or_renew(self) -> bool:
        """One election round: True when this identity holds the Lease afterwards."""
        now_iso, mono = self.clock.now_iso(), self.clock.monotonic()
        try:
            lease = self.store.get(Lease, self.lease_name)
        except NotFound:
            fresh = Lease(
                metadata=ObjectMeta(name=self.lease_name),
                spec=LeaseSpec(
                    holder=self.identity,
                    renew_time=now_iso,
                    acquire_time=now_iso,
                    duration_seconds=self.duration,
                    holder_process=self.me,
                ),
            )
            try:
                created = self.store.create(fresh)
            except AlreadyExists:
                return False
            self._observed = (created.metadata.resource_version, mono)
            self._fence(created)
            return True
        rv = lease.metadata.resource_version
        if self._observed is None or self._observed[0] != rv:
            self._observed = (rv, mono)
        spec = lease.spec
        if spec.holder == self.identity:
            spec.renew_time = now_iso
        else:
            expired = mono - self._observed[1] >= spec.duration_seconds
            why = self._holder_gone(spec) if spec.holder and not expired else None
            if spec.holder and not expired and why is None:
                return False
            log.info(
                "leader lease %s: taking over from %r%s",
                self.lease_name,
                spec.holder or "nobody",
                f" at once: {why}" if why else "",
            )
            spec.holder, spec.renew_time, spec.acquire_time = self.identity, now_iso, now_iso
            spec.duration_seconds = self.duration
            spec.transitions += 1
        spec.holder_process = self.me
        try:
            updated = self.store.update(lease)
        except (Conflict, NotFound):
            return False
        self._observed = (updated.metadata.resource_version, mono)
        self._fence(updated)
        return True

    def _holder_gone(self, spec: LeaseSpec) -> str | None:
        """Why the holder's process is provably gone (None: it may be alive; wait it out)."""
        if self.processes is None or self.me is None or spec.holder_process is None:
            return None
        return gone(spec.holder_process, self.me, self.processes)

    def _fence(self, lease: Lease) -> None:
        """This leadership's Fence: the Lease's generation (``spec.transitions``) as acquired."""
        fence = Fence(self.lease_name, self.identity, lease.spec.transitions)
        if fence != self.fence:
            log.info("%s: leading at generation %d", self.identity, fence.generation)
        self.fence = fence
        if self.fence_store is not None:
            self.fence_store.fence = fence

    def step(self) -> bool:
        """Run one round and fire the callbacks on a change of leadership."""
        try:
            holds = self.try_acquire_or_renew()
            if holds:
                self._last_renew = self.clock.monotonic()
        except Exception as exc:  # store unavailable (any driver error): lead only within the deadline
            log.warning("leader election round failed: %s: %s", type(exc).__name__, exc)
            holds = self.leading and self.clock.monotonic() - self._last_renew < self.renew_deadline
        if holds and not self.leading:
            self.leading = True
            log.info("%s: started leading", self.identity)
            self.on_started_leading()
        elif not holds and self.leading:
            self.leading = False
            log.warning("%s: lost leadership", self.identity)
            self.on_stopped_leading()
        return holds

    # ------------------------------------------------------------------ background loop

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="forge-leader-elector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # a callback failing must not end the election loop
                log.exception("leader election callback failed")
            # renewals are inherently periodic; contenders retry at the same pace
            self._stop.wait(self.renew_interval)

    def stop(self, release: bool = True) -> None:
        """Stop the loop; when leading, stop acting and hand the Lease back for a fast takeover."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        if self.leading:
            self.leading = False
            self.on_stopped_leading()
            if release:
                self.release()

    def release(self) -> None:
        try:
            lease = self.store.get(Lease, self.lease_name)
            if lease.spec.holder != self.identity:
                return
            lease.spec.holder, lease.spec.renew_time, lease.spec.holder_process = "", None, None
            self.store.update(lease)
        except (Conflict, NotFound) as exc:
            log.info("leader lease not released: %s", exc)
        except ForgeError as exc:
            log.warning("leader lease not released: %s", exc)
