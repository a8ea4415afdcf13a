"""The node's log drains: which exist (a watch on the API), one worker each, their wake-ups.

The set of drains comes from ``GET /api/v1/nodes/NODE/drains`` — a stream that answers at once
and again whenever a drain or an Instance bound here changes (no polling); it is re-opened when
the server ends it. Each drain gets a ``DrainWorker`` (its own thread and connection, so a slow
receiver never holds up another) and a state file ``DATA/drains/NAME.json`` (its cursors); a
drain removed stops and its file goes. The inotify ``Notifier`` (always on: the marks below need
it before the first drain exists) names the Instance whose logs grew, and the workers of its App
read that Instance's logs.

TLS trust: the system's store, plus the PEM file ``FORGE_DRAIN_CA_FILE`` names (the agent's
environment) for receivers with a private CA.

Where a new drain starts: an Instance that started after the drain was added is sent from its
first line; for one that was already running, from where its logs ended when the drain was
added. The manager learns that from its marks — on every burst of writes (at most once a second
per Instance) it notes the time and the logs' ends — and starts at the newest mark taken before
the drain's creation: lines written in between are sent (a few of them may predate the drain),
none written after it is missed however late the node hears of the drain.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forge import errors
from forge.client import ForgeClient
from forge.clock import Clock, parse_iso
from forge.drains import parse_url
from forge.nodeagent.drains.buffer import DEFAULT_BUFFER_BYTES
from forge.nodeagent.drains.notify import Notifier
from forge.nodeagent.drains.senders import make_sender
from forge.nodeagent.drains.worker import DrainWorker
from forge.nodeagent.logwriter import log_end
from forge.nodeagent.state import AgentState

log = logging.getLogger(__name__)

WATCH_SECONDS = 120
MARK_SECONDS = 1.0  # at most one (time, log ends) mark per Instance a second …
HOLD_SECONDS = 300.0  # how long a stopped Instance's logs wait on the drains before they go
MARKS_KEPT = 300  # … of the last five minutes of writing (a node hears of a drain in seconds)
CA_ENV = "FORGE_DRAIN_CA_FILE"
MAX_BACKOFF = 30.0


class DrainManager:
    def __init__(
        self,
        client: ForgeClient,
        node: str,
        data_dir: Path,
        logs_dir: Path,
        state: AgentState,
        process_of: Callable[[str], str],
        clock: Clock,
        stop: threading.Event,
        ca_file: str | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        self.client, self.node, self.clock, self.stop = client, node, clock, stop
        self.dir = Path(data_dir) / "drains"
        self.logs_dir, self.state, self.process_of = Path(logs_dir), state, process_of
        self.ca_file = ca_file if ca_file is not None else (os.environ.get(CA_ENV) or None)
        self.buffer_bytes = buffer_bytes
        self.workers: dict[str, DrainWorker] = {}
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()
        self.notifier: Notifier | None = None
        self.marks: dict[str, deque[tuple[float, int, int]]] = {}  # instance → (time, build end, app end)
        self._marks_lock = threading.Lock()
        self._no_inotify = False
        self._held: dict[str, float] = {}  # instance → when it first waited on the drains
        self.thread = threading.Thread(target=self._run, name="forge-drains", daemon=True)

    def start(self) -> None:
        self._start_notifier()
        self.thread.start()

    def _start_notifier(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            notifier = Notifier(self.logs_dir, self._changed, self.stop)
            notifier.start()
        except OSError as exc:
            # No inotify (not Linux, or out of watches): workers wake on a timer instead.
            log.warning("log drains wake every second (no inotify: %s)", exc)
            self._no_inotify = True
            return
        self.notifier = notifier
        for entry in sorted(os.listdir(self.logs_dir)):
            self.mark(entry, force=True)

    # -- marks: where each log ended when ----------------------------------------------
    def mark(self, instance: str, force: bool = False) -> None:
        now = self.clock.now()
        log_dir = self.logs_dir / instance
        if not log_dir.is_dir():
            self.forget(instance)  # its logs were deleted
            return
        with self._marks_lock:
            dq = self.marks.get(instance)
            if dq is not None and dq and not force and now - dq[-1][0] < MARK_SECONDS:
                return
        mark = (now, log_end(log_dir, "build"), log_end(log_dir, "app"))
        with self._marks_lock:
            self.marks.setdefault(instance, deque(maxlen=MARKS_KEPT)).append(mark)

    def start_offsets(self, instance: str, created: float) -> dict[str, int] | None:
        """The logs' ends at the newest mark taken at or before ``created``; None when there is none."""
        with self._marks_lock:
            found = None
            for when, build, app in self.marks.get(instance, ()):
                if when > created:
                    break
                found = {"build": build, "app": app}
            return found

    def forget(self, instance: str) -> None:
        with self._marks_lock:
            self.marks.pop(instance, None)

    # -- a stopped Instance's logs ---------------------------------------------------------
    def pending(self, instance: str) -> bool:
        """Whether a drain has not yet received all of a stopped Instance's logs — the agent
        keeps them until it has, for at most ``HOLD_SECONDS`` (then what is left is counted as
        dropped). Only drains whose receiver is down make anyone wait."""
        inst = self.state.get(instance)
        with self._lock:
            workers = [w for w in self.workers.values() if inst is not None and w.app == inst.app]
        behind = [w for w in workers if w.behind(instance)]
        if not behind:
            self._held.pop(instance, None)
            return False
        now = self.clock.monotonic()
        since = self._held.setdefault(instance, now)
        if now - since < HOLD_SECONDS:
            for w in behind:
                w.wake()
            return True
        for w in behind:
            w.abandon(instance)
        self._held.pop(instance, None)
        log.warning("log drains gave up on the rest of %s's logs after %.0fs", instance, HOLD_SECONDS)
        return False

    def _changed(self, instance: str) -> None:
        self.mark(instance)
        self.wake_instance(instance)

    def shutdown(self) -> None:
        with self._lock:
            workers, self.workers = list(self.workers.values()), {}
        notifier, self.notifier = self.notifier, None
        for w in workers:
            w.close()
        if notifier is not None:
            notifier.close()

    # -- wake-ups ----------------------------------------------------------------------
    def wake_instance(self, instance: str) -> None:
        inst = self.state.get(instance)
        if inst is None:  # its logs appeared before the agent recorded it: let every drain look
            self.wake_all()
            return
        with self._lock:
            workers = [w for w in self.workers.values() if w.app == inst.app]
        for w in workers:
            w.wake(instance)

    def wake_all(self) -> None:
        """The Instances on the node changed (one started or went): every drain looks again."""
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.wake()

    # -- the set of drains -------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            try:
                for item in self.client.stream_lines(
                    f"/api/v1/nodes/{self.node}/drains", {"timeoutSeconds": WATCH_SECONDS}
                ):
                    if self.stop.is_set():
                        return
                    delay = 0.5
                    if isinstance(item, dict) and item.get("type") == "DRAINS":
                        self.apply(list(item.get("drains") or []))
            except errors.ForgeError as exc:
                log.info("log drain watch failed (%s); again in %.1fs", exc.message, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    def apply(self, drains: list[dict[str, Any]]) -> None:
        """Converge the workers to ``drains`` ([{name, app, url, createdAt}])."""
        wanted = {str(d["name"]): d for d in drains if d.get("name") and d.get("url") and d.get("app")}
        stale: list[DrainWorker] = []
        with self._lock:
            for name in list(self.workers):
                if name not in wanted or self._urls.get(name) != wanted[name]["url"]:
                    stale.append(self.workers.pop(name))
        for w in stale:
            w.close()
            if w.name not in wanted:
                log.info("log drain %s removed from this node", w.name)
        # The list is complete: the state of a drain not in it (removed while the agent was down,
        # too) goes; a drain that comes back later starts afresh.
        for path in self.dir.glob("*.json") if self.dir.is_dir() else ():
            if path.stem not in wanted:
                path.unlink(missing_ok=True)
        for name, d in sorted(wanted.items()):
            with self._lock:
                if name in self.workers:
                    continue
            try:
                url = parse_url(str(d["url"]))
            except ValueError as exc:
                log.warning("log drain %s: unusable URL: %s", name, exc)
                continue
            created = d.get("createdAt")
            worker = DrainWorker(
                name,
                str(d["app"]),
                make_sender(url, name, self.clock, self.stop, self.ca_file),
                self.node,
                self.logs_dir,
                self.dir / f"{name}.json",
                self._instances_of(str(d["app"])),
                self.clock,
                self.stop,
                report=self._report,
                buffer_bytes=self.buffer_bytes,
                idle_wait=1.0 if self._no_inotify else None,
                created=parse_iso(created) if created else None,
                start_at=self.start_offsets,
            )
            with self._lock:
                self.workers[name] = worker
                self._urls[name] = str(d["url"])
            worker.start()
            log.info("log drain %s of %s delivering from this node", name, d["app"])

    def _instances_of(self, app: str) -> Callable[[], list[tuple[str, str, float | None]]]:
        def instances() -> list[tuple[str, str, float | None]]:
            out = []
            for name in self.state.names():
                inst = self.state.get(name)
                if inst is not None and inst.app == app:
                    out.append((name, self.process_of(name), inst.started_time))
            return out

        return instances

    def _report(self, drain: str, body: dict[str, Any]) -> None:
        self.client.request("PUT", f"/api/v1/nodes/{self.node}/drains/{drain}/status", json=body)
