"""The agent's local reconcile: converge one Instance's process toward its spec.

Works from the key alone (the Instance as last seen by the watch + the local state record),
level-triggered: desired Running and not running → build if needed, then start (after the
crash back-off); running → probe when due; desired Stopped, deleted or moved → stop. Time is a
return value: the seconds until this key wants to run again (probe due, back-off over).
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from forge import errors
from forge.client import ForgeClient
from forge.clock import Clock
from forge.models import Instance
from forge.nodeagent.builder import REASON_BUILD_FAILED, REASON_FETCH_FAILED, Builder, BuildError, DiskLow
from forge.nodeagent.diskfence import (
    REASON_DISK_LIMIT,
    REASON_STORAGE_DAMAGED,
    REASON_STORAGE_REPAIRED,
    StorageUnavailable,
)
from forge.nodeagent.listening import REASON_WRONG_PORT, Listener, listening, port_verdict
from forge.nodeagent.logship import Shipper, log_path
from forge.nodeagent.prober import READY, UNHEALTHY, WAITING, ProbeResult, ProbeTracker, probe
from forge.nodeagent.sandbox import SandboxTimeout
from forge.nodeagent.spec import RunSpec
from forge.nodeagent.state import AgentState, InstanceState
from forge.nodeagent.status import StatusWriter
from forge.nodeagent.supervisor import (
    BACKOFF_CAP,
    Supervisor,
    backoff_delay,
    build_env,
    choose_port,
    port_is_free,
)

log = logging.getLogger(__name__)

REASON_CRASH_LOOP: Final[str] = "CrashLoopBackOff"
REASON_OOM: Final[str] = "OOMKilled"
REASON_HEALTH: Final[str] = "HealthCheckFailed"
REASON_START_FAILED: Final[str] = "StartFailed"
REASON_TIMEOUT: Final[str] = "Timeout"  # a one-shot ran past its timeout
REASON_ERROR: Final[str] = "Error"  # a one-shot exited non-zero
REASON_EXIT_UNKNOWN: Final[str] = "ExitUnknown"
REASON_INTERRUPTED: Final[str] = "Interrupted"
REASON_RESTARTED: Final[str] = "Restarted"  # forge restart: a restart asked for, not a crash
DISK_RETRY_SECONDS = 30.0
FIRST_PROBE_DELAY = 0.05  # then doubling up to health.interval until the first success: a fast
# app is seen ready within tens of milliseconds, a slow one is not hammered
WRONG_PORT_GRACE = 1.0  # an app seen listening only elsewhere this long is on the wrong port
# (not merely opening a side port a moment before $PORT)
STABLE_SECONDS = BACKOFF_CAP  # running this long after being ready resets the crash streak


class Reconciler:
    def __init__(
        self,
        client: ForgeClient,
        node: str,
        data_dir: Path,
        state: AgentState,
        builder: Builder,
        supervisor: Supervisor,
        shipper: Shipper,
        status: StatusWriter,
        clock: Clock,
        watch_exit: Any,
        network: Any = None,
        node_address: str = "127.0.0.1",
    ) -> None:
        self.network = network  # NodeNetwork, or None: the host's network (dev without root)
        self.node_address = node_address
        self.client, self.node, self.data_dir, self.state = client, node, Path(data_dir), state
        self.builder, self.supervisor, self.shipper, self.status = builder, supervisor, shipper, status
        self.clock, self.watch_exit = clock, watch_exit
        self.logs_dir = self.data_dir / "logs"
        # Set by the agent: whether a log drain still has lines of this Instance to deliver.
        self.drains_pending: Callable[[str], bool] | None = None
        self.trackers: dict[str, ProbeTracker] = {}
        self.next_probe: dict[str, float] = {}
        self.probe_step: dict[str, float] = {}
        self.last_fail: dict[str, float] = {}
        self.wrong_port_since: dict[str, float] = {}
        self.over_limit: set[str] = set()  # release dirs the disk check found full (their Instances stop)
        # Set when the agent stops: nothing more is started, restarted or judged (forge up stops
        # the apps from outside at the same moment; an app exiting then is not a crash).
        self.stopping = threading.Event()
        # Called with the app's name when its last Instance here has stopped, before that is
        # reported: the agent deletes a deleted app's files then (Agent.purge_if_gone).
        self.on_last_stopped: Callable[[str], None] | None = None
        # Processes found gone when this agent started: their end was never observed, so it is
        # not the app's failure (forge up stopped them, the machine rebooted) and no crash counts.
        self.gone_at_start: set[str] = set()
        self._builds_lock = threading.Lock()
        self.building: set[str] = set()  # Instances whose build runs now
        self.cancelled: set[str] = set()  # of those, the ones no longer wanted (their build is killed)
        self.storage_damaged: set[str] = set()  # Instances whose storage the disk check found read-only

    def reconcile(self, name: str, inst: Instance | None) -> float | None:
        if self.stopping.is_set():
            return None
        st = self.state.get(name)
        if (
            inst is None
            or inst.spec.desired == "Stopped"
            or inst.spec.node not in (None, self.node)
            or inst.status.phase == "Lost"
        ):
            # Lost: the control plane wrote this node off while it was away and replaced the
            # Instance under another name; running it again would serve twice.
            return self._stop(name, st, inst)
        if inst.status.phase == "Failed" and inst.status.reason in (REASON_BUILD_FAILED, REASON_FETCH_FAILED):
            return None  # a failed build stays failed; a new Deployment brings a new Instance
        if inst.spec.oneshot is not None:
            if (st is not None and st.finished_time) or inst.status.phase in ("Succeeded", "Failed"):
                return None  # a one-shot runs once, to its end, and never again
            if st is None and inst.status.started_time:
                # Started by this node before its state was lost: running it again could run a
                # migration twice. It ends Failed instead; whoever asked decides what next.
                gone = InstanceState(
                    name=name,
                    app=inst.spec.app,
                    deployment=inst.spec.deployment,
                    cgroup=f"inst-{name}",
                    release_dir="",
                    reason=REASON_INTERRUPTED,
                    message="the node lost track of this run while it ran; it is not run again",
                    finished_time=self.clock.now(),
                )
                self.status.write(inst, gone, "Failed", None)
                return None
        run = RunSpec.for_instance(inst.spec)
        if st is None:
            st = InstanceState(
                name=name,
                app=inst.spec.app,
                deployment=inst.spec.deployment,
                cgroup=f"inst-{name}",
                release_dir=str(
                    self.builder.release_dir(inst.spec.app, inst.spec.build or inst.spec.deployment)
                ),
                restarts=inst.status.restarts,
                restart_generation=inst.spec.restart_generation,
            )
            self.state.put(st)
        limits = (
            inst.spec.resources.memory or None,
            inst.spec.resources.cpu or None,
            inst.spec.resources.pids,
        )
        if not self.builder.is_built(Path(st.release_dir), inst.spec.commit):
            inst = self.status.write(inst, st, "Building", None)
            env = build_env(
                inst.spec.app, inst.spec.deployment, name, st.release_dir, None, run.env, inst.spec.env
            )
            with self._builds_lock:
                self.building.add(name)
            try:
                self.builder.ensure_built(
                    name,
                    inst.spec.app,
                    Path(st.release_dir).name,
                    inst.spec.repo,
                    inst.spec.commit,
                    run,
                    env,
                    limits,
                    log_path(self.logs_dir, name, "build"),
                    disk=inst.spec.resources.disk,
                    ref=inst.spec.ref,
                )
            except DiskLow as exc:
                st.reason, st.message = exc.reason, exc.message  # not the release's fault: it waits
                self.status.write(inst, st, "Building", None)
                self.event(name, "Warning", exc.reason, exc.message)
                return DISK_RETRY_SECONDS
            except BuildError as exc:
                if self._was_cancelled(name):
                    return 0.0  # killed because it is no longer wanted: the next run stops it
                st.reason, st.message = exc.reason, exc.message
                self.state.save()
                self.shipper.wake()
                self.status.write(inst, st, "Failed", None)
                return None
            finally:
                with self._builds_lock:
                    self.building.discard(name)
                self.shipper.wake()
            if self._was_cancelled(name):
                return 0.0
        if st.pid and inst.spec.restart_generation != st.restart_generation and run.kind != "oneshot":
            return self._restart_in_place(inst, st, run, limits)
        if st.pid and not self.supervisor.is_running(st):
            if name in self.gone_at_start and run.kind != "oneshot":
                self._gone_at_start(st)
                return self._start(inst, st, run, limits)
            self._exited(st, run)
            if st.finished_time:
                try:  # its output is in the store before its end is: whoever waits on the end has it all
                    self.shipper.ship_instance(name)
                except errors.ForgeError as exc:
                    log.info("%s: output not shipped yet (%s); it follows", name, exc)
                self.status.write(
                    inst, st, "Succeeded" if st.exit_code == 0 and not st.reason else "Failed", None
                )
                return None
        if not st.pid:
            wait = self._backoff_left(st)
            if wait > 0:
                self.status.write(inst, st, "Starting", self.trackers.get(name))
                return wait
            return self._start(inst, st, run, limits)
        if st.release_dir in self.over_limit:
            return self._disk_exceeded(inst, st, run)
        if name in self.storage_damaged:
            return self._storage_damaged(inst, st, run)
        if run.kind == "oneshot":
            return self._watch_oneshot(inst, st, run)
        if run.kind == "worker":
            return self._watch_worker(inst, st, run)
        return self._probe(inst, st, run)

    def _exec_check(self, inst: Instance, st: InstanceState, run: RunSpec, up: float) -> float | None:
        """A worker's ``health.command``: run in a sandbox beside it (its uid, network namespace,
        release and storage) every ``health.interval``; success makes it ready, ``health.retries``
        failures in a row restart it (HealthCheckFailed), like an HTTP probe."""
        tracker = self.trackers.get(st.name)
        if tracker is None:
            tracker = self.trackers[st.name] = ProbeTracker(run.health.retries, 0.0, ready=st.ready)
        mono = self.clock.monotonic()
        due = self.next_probe.get(st.name, mono)
        if mono < due:
            self.status.write(inst, st, "Running" if st.ready else "Starting", tracker)
            return due - mono
        uid, gid = self.supervisor.owner_for(inst.spec.app)
        net = (
            {"netns": self.network.netns_path(st.name), "resolv_conf": self.network.dns_text}
            if self.network is not None
            else {}
        )
        env = build_env(
            inst.spec.app, inst.spec.deployment, st.name, st.release_dir, st.port, run.env, inst.spec.env
        )
        storage = (
            str(self.builder.fence.storage_dir(inst.spec.app))
            if inst.spec.storage and self.builder.fence is not None
            else None
        )
        spec = self.supervisor.spec_factory(
            app=inst.spec.app,
            workdir=st.release_dir,
            command=run.health_command,
            env=env,
            uid=uid,
            gid=gid,
            storage=storage,
            **net,
        )
        try:
            code = self.supervisor.sandbox.run(spec, run.health.timeout_seconds)
            result = ProbeResult(code == 0, f"health command exited with code {code}")
        except (SandboxTimeout, errors.ForgeError, OSError) as exc:
            result = ProbeResult(False, f"health command: {exc}"[:200])
        self.next_probe[st.name] = self.clock.monotonic() + run.health.interval_seconds
        verdict = tracker.record(result, up)
        if verdict == READY:
            self._mark_ready(st)
        elif verdict == UNHEALTHY:
            return self._unhealthy(
                inst, st, run, f"health command failed {tracker.failures} times in a row", result
            )
        self.status.write(
            inst, st, "Running" if st.ready else "Starting", tracker, probe_result=result.detail
        )
        return run.health.interval_seconds

    # -- one-shots and workers --------------------------------------------------------
    def _pump_stdin(self, name: str, fd: int) -> None:
        """An interactive run's stdin: chunks its caller posted, written into the process's pipe
        until the caller's EOF, the process's end or the agent's (the pipe closes: EOF)."""
        after = 0
        try:
            while True:
                st = self.state.get(name)
                if st is None or not st.pid or st.finished_time:
                    return
                try:
                    body = (
                        self.client.request(
                            "GET",
                            f"/api/v1/instances/{name}/stdin",
                            params={"after": after, "waitSeconds": 5},
                        )
                        or {}
                    )
                except errors.Unavailable:
                    self.clock.sleep(1.0)  # the control plane blinked: the run keeps its stdin
                    continue
                for chunk in body.get("chunks") or []:
                    after = max(after, int(chunk.get("id") or 0))
                    if chunk.get("eof"):
                        return
                    data = base64.b64decode(str(chunk.get("data") or ""))
                    while data:
                        data = data[os.write(fd, data) :]
        except (OSError, ValueError, errors.ForgeError) as exc:
            log.info("%s: stdin closed: %s", name, exc)
        finally:
            os.close(fd)

    def _watch_oneshot(self, inst: Instance, st: InstanceState, run: RunSpec) -> float | None:
        """A one-shot runs until it exits (the exit watcher wakes its key) or its timeout."""
        elapsed = self._up(st)
        timeout = run.timeout or 600.0
        if elapsed < timeout:
            self.status.write(inst, st, "Running", None)
            return timeout - elapsed
        self.supervisor.stop(st, run.stop_timeout)
        st.pid, st.pid_start, st.ready = None, None, False
        st.reason, st.message = REASON_TIMEOUT, f"still running after its timeout of {timeout:g}s; killed"
        st.finished_time = self.clock.now()
        self.supervisor.remove_cgroup(st.cgroup)
        self._persist(st)
        self.shipper.wake()
        self.event(st.name, "Warning", REASON_TIMEOUT, st.message)
        self.status.write(inst, st, "Failed", None)
        return None

    def _watch_worker(self, inst: Instance, st: InstanceState, run: RunSpec) -> float | None:
        """A worker has no HTTP check: it is ready once it has run ``min_running`` without a crash."""
        up = self._up(st)
        if up < run.min_running:
            self.status.write(inst, st, "Starting", None)
            return run.min_running - up
        if run.health_command:
            return self._exec_check(inst, st, run, up)
        self._mark_ready(st)
        if st.crash_streak and up >= STABLE_SECONDS:
            st.crash_streak = 0
            self._persist(st)
        self.status.write(inst, st, "Running", None)
        return max(STABLE_SECONDS - up, 0.0) or None

    # -- start / exit ----------------------------------------------------------
    def _start(
        self, inst: Instance, st: InstanceState, run: RunSpec, limits: tuple[Any, ...]
    ) -> float | None:
        held = self.state.ports_held(exclude=st.name)
        net: dict[str, str] | None = None
        try:
            if self.network is not None:
                # A fresh namespace every start: whatever a crash left half-made is gone, the
                # address stays the one this Instance had.
                st.address = self.network.attach(st.name)
                net = {"netns": self.network.netns_path(st.name), "resolv_conf": self.network.dns_text}
                # Its own namespace: every port is free, so a restart keeps the one it had and
                # its address:port never changes (nothing to re-route, nothing to report late).
                port = st.port or choose_port(held, is_free=lambda _p: True)
            else:
                st.address = self.node_address
                port = (
                    st.port
                    if st.port and st.port not in held and port_is_free(st.port)
                    else choose_port(held)
                )
        except (OSError, errors.ForgeError) as exc:
            st.reason, st.message = REASON_START_FAILED, f"cannot set up the network: {exc}"[:500]
            self._schedule_restart(st)
            self.state.save()
            self.status.write(inst, st, "Starting", None)
            return self._backoff_left(st) if st.next_start else None
        secrets: dict[str, str] = {}
        if inst.spec.secret:
            body = self.client.request("GET", f"/api/v1/instances/{st.name}/secrets") or {}
            secrets = {str(k): str(v) for k, v in (body.get("env") or {}).items()}
        env = build_env(
            inst.spec.app,
            inst.spec.deployment,
            st.name,
            st.release_dir,
            port,
            run.env,
            inst.spec.env,
            secrets,
        )
        moved = port != st.port
        st.port, st.ready, st.next_start, st.next_start_mono = port, False, None, None
        # Written before the process exists. When it cannot be (a full disk) the start goes on
        # only if the Instance keeps the address:port it had — what the store says stays true,
        # so the router keeps sending traffic to the right place; a move waits for the disk.
        try:
            self.state.save()
        except OSError as exc:
            if moved:
                raise
            log.warning(
                "%s: cannot save the agent state (%s); restarting it at the same address anyway", st.name, exc
            )
        fence = self.builder.fence
        fsize = inst.spec.resources.disk if fence is not None and fence.mode == "watcher" else None
        storage: str | None = None
        pipe: tuple[int, int] | None = None
        try:
            if inst.spec.storage and fence is not None:
                uid, gid = self.supervisor.owner_for(inst.spec.app)
                storage = str(
                    fence.ensure_storage(
                        inst.spec.app,
                        inst.spec.storage,
                        uid,
                        gid,
                        report=lambda msg: self.event(st.name, "Warning", REASON_STORAGE_REPAIRED, msg),
                    )
                )
            if inst.spec.oneshot is not None and inst.spec.oneshot.interactive:
                pipe = os.pipe()
            exit_file = None
            if inst.spec.oneshot is not None:
                exit_file = self.exit_file(st.name)
                exit_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                exit_file.unlink(missing_ok=True)
            try:
                self.supervisor.start(
                    st,
                    run,
                    env,
                    limits,
                    log_path(self.logs_dir, st.name, "app"),
                    net,
                    fsize,
                    storage,
                    pipe[0] if pipe else None,
                    str(exit_file) if exit_file else None,
                )
            finally:
                if pipe is not None:
                    os.close(pipe[0])
            if pipe is not None:
                threading.Thread(
                    target=self._pump_stdin, args=(st.name, pipe[1]), daemon=True, name=f"stdin-{st.name}"
                ).start()
                pipe = None
        except (OSError, errors.Invalid, errors.Unavailable) as exc:
            if pipe is not None:
                os.close(pipe[1])
            st.reason, st.message = REASON_START_FAILED, str(exc)[:500]
            if isinstance(exc, StorageUnavailable):  # no room for it, or damaged: say so, retry later
                st.reason = exc.reason
                self.event(st.name, "Warning", exc.reason, exc.message)
            self._schedule_restart(st)
            self.state.save()
            self.status.write(inst, st, "Starting", None)
            return self._backoff_left(st) if st.next_start else None
        del env, secrets
        self._persist(st)  # the process runs: keep watching and probing it even if this fails
        self.watch_exit(st.pid, st.name)
        tracker = ProbeTracker(run.health.retries, run.health.start_period_seconds)
        self.trackers[st.name] = tracker
        self.next_probe[st.name] = self.clock.monotonic() + min(
            FIRST_PROBE_DELAY, run.health.interval_seconds
        )
        self.probe_step.pop(st.name, None)
        self.last_fail.pop(st.name, None)
        self.status.write(inst, st, "Starting", tracker)
        self.shipper.wake()
        return min(FIRST_PROBE_DELAY, run.health.interval_seconds)

    def _restart_in_place(
        self, inst: Instance, st: InstanceState, run: RunSpec, limits: tuple[Any, ...]
    ) -> float | None:
        """forge restart: stop the process (its stop_timeout) and start it again at once, same
        release, address and port; not a crash (no restart counted, no back-off)."""
        self.supervisor.stop(st, run.stop_timeout)
        st.pid, st.pid_start, st.ready, st.next_start, st.next_start_mono = None, None, False, None, None
        st.reason, st.message = "", ""
        st.restart_generation = inst.spec.restart_generation
        self.trackers.pop(st.name, None)
        self.wrong_port_since.pop(st.name, None)
        self._persist(st)
        self.event(st.name, "Normal", REASON_RESTARTED, "restarted on request (forge restart)")
        return self._start(inst, st, run, limits)

    def exit_file(self, name: str) -> Path:
        """Where a one-shot's exit code is recorded (agent territory: no app can write there)."""
        return self.data_dir / "exits" / name

    def _recorded_exit(self, name: str) -> int | None:
        try:
            return int(self.exit_file(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def _exited(self, st: InstanceState, run: RunSpec | None = None) -> None:
        code = self.supervisor.exit_code(st.pid)
        ooms = self.supervisor.oom_kills(st.cgroup)
        if run is not None and run.kind == "oneshot":
            recorded = self._recorded_exit(st.name)
            code = recorded if recorded is not None else code  # the command's own code (the shell's
            # is the same; after an agent restart it is the only one there is)
            self.exit_file(st.name).unlink(missing_ok=True)
            st.pid, st.pid_start, st.ready, st.exit_code = None, None, False, code
            st.finished_time = self.clock.now()
            if ooms > st.oom_kills:
                st.reason, st.message = REASON_OOM, f"killed by the out-of-memory killer (exit code {code})"
            elif code is None:
                st.reason, st.message = REASON_EXIT_UNKNOWN, "it ended while the agent was restarting"
            elif code != 0:
                st.reason, st.message = REASON_ERROR, f"exited with code {code}"
            else:
                st.reason, st.message = "", "exited with code 0"
            st.oom_kills = max(st.oom_kills, ooms)
            self.supervisor.remove_cgroup(st.cgroup)
            self._persist(st)
            self.shipper.wake()
            if st.reason:
                self.event(st.name, "Warning", st.reason, st.message)
            return
        st.reason = REASON_OOM if ooms > st.oom_kills else REASON_CRASH_LOOP
        st.message = (f"process exited with code {code}" if code is not None else "process exited") + (
            " after an out-of-memory kill" if st.reason == REASON_OOM else ""
        )
        st.oom_kills = max(st.oom_kills, ooms)
        st.exit_code = code
        self.supervisor.remove_cgroup(st.cgroup)
        self._schedule_restart(st)
        self._persist(st)
        self.shipper.wake()
        # One message per cause, so repeats merge into one Event with a count (the restart count
        # and back-off are in the Instance's status).
        self.event(st.name, "Warning", st.reason, f"{st.message}; restarting it with back-off")

    def cancel_build(self, name: str) -> bool:
        """The Instance was asked to stop (or deleted) while its build runs — its release failed or
        was cancelled: kill the build now (its cgroup), instead of letting it run to its end.
        Called from the watch thread; the build's own reconcile then ends without a BuildFailed."""
        with self._builds_lock:
            if name not in self.building:
                return False
            self.cancelled.add(name)
        driver = self.supervisor.driver
        group = f"build-{name}"
        if driver is not None and driver.exists(group):
            driver.kill_all(group)
        log.info("%s: no longer wanted; its build was stopped", name)
        return True

    def _was_cancelled(self, name: str) -> bool:
        with self._builds_lock:
            if name in self.cancelled:
                self.cancelled.discard(name)
                return True
        return False

    def _gone_at_start(self, st: InstanceState) -> None:
        """A process that ended while no agent watched it is started again at once, as the
        platform's own restart: no crash counted, no back-off, no failure reason (a one-shot's
        end is still read from its exit file: it never runs twice)."""
        self.gone_at_start.discard(st.name)
        st.pid, st.pid_start, st.ready, st.next_start, st.next_start_mono = None, None, False, None, None
        st.reason, st.message, st.exit_code = "", "", None
        self.supervisor.remove_cgroup(st.cgroup)
        self.trackers.pop(st.name, None)
        self.next_probe.pop(st.name, None)
        log.info("%s: its process ended while the agent was away; starting it again", st.name)

    def _up(self, st: InstanceState) -> float:
        """Seconds since the process started, by the monotonic clock (the system's, so it holds
        across an agent restart); a wall-clock step on this machine cannot move it. Falls back
        to the wall clock, never negative, for a start recorded before (or a reboot ago)."""
        mono = self.clock.monotonic()
        if st.started_mono is not None and st.started_mono <= mono:
            return mono - st.started_mono
        return max(0.0, self.clock.now() - (st.started_time or self.clock.now()))

    def _backoff_left(self, st: InstanceState) -> float:
        """Seconds left of a crash back-off, by the system's monotonic clock (it survives an
        agent restart); never more than the longest back-off, whatever any clock did (a reboot
        resets the monotonic clock; an old state file has only the wall time)."""
        if not st.next_start:
            return 0.0
        if st.next_start_mono is not None:  # this boot's monotonic clock: no step moves it
            return min(max(0.0, st.next_start_mono - self.clock.monotonic()), BACKOFF_CAP)
        return min(max(0.0, st.next_start - self.clock.now()), BACKOFF_CAP)

    def _schedule_restart(self, st: InstanceState) -> None:
        st.pid, st.pid_start, st.ready = None, None, False
        st.restarts += 1
        st.crash_streak += 1
        delay = backoff_delay(st.crash_streak)
        st.next_start, st.next_start_mono = self.clock.now() + delay, self.clock.monotonic() + delay
        self.trackers.pop(st.name, None)
        self.next_probe.pop(st.name, None)

    # -- disk limit ----------------------------------------------------------------
    def check_disk(
        self, limits: dict[str, int], storage: set[str] | frozenset[str] = frozenset()
    ) -> list[str]:
        """The disk check (the agent's ``~disk`` timer): running Instances whose release tree is at
        its limit (``limits``: Instance name -> ``resources.disk``), or whose persistent storage
        (``storage``: the Instances that have one) turned read-only after an I/O error. They are
        marked; each Instance's own reconcile then stops it (``_disk_exceeded``,
        ``_storage_damaged``) and its next start repairs the storage."""
        fence = self.builder.fence
        if fence is None:
            return []
        due: list[str] = []
        checked: dict[str, bool] = {}
        damaged: dict[str, bool] = {}
        for name in self.state.names():
            st = self.state.get(name)
            if st is None or not st.pid:
                continue
            if name in storage:
                if st.app not in damaged:
                    try:
                        damaged[st.app] = fence.storage_damaged(st.app)
                    except OSError as exc:
                        log.warning("%s: cannot check the storage of %s: %s", name, st.app, exc)
                        damaged[st.app] = False
                if damaged[st.app]:
                    self.storage_damaged.add(name)
                    due.append(name)
                    continue
            if name not in limits:
                continue
            full = checked.get(st.release_dir)
            if full is None:
                try:
                    full = checked[st.release_dir] = fence.exceeded(Path(st.release_dir), limits[name])
                except OSError as exc:
                    log.warning("%s: cannot measure %s: %s", name, st.release_dir, exc)
                    full = checked[st.release_dir] = False
            if full:
                self.over_limit.add(st.release_dir)
                due.append(name)
        return due

    def _disk_exceeded(self, inst: Instance, st: InstanceState, run: RunSpec) -> float | None:
        """Stop an Instance whose release tree is full; once no Instance of this node runs from
        that tree any more it is discarded, and the restart (with back-off) rebuilds it fresh."""
        limit = inst.spec.resources.disk
        self.supervisor.stop(st, run.stop_timeout)
        st.reason = REASON_DISK_LIMIT
        st.message = (
            f"wrote past its disk limit of {limit // 2**20} MiB (resources.disk); stopped, it restarts "
            "on a fresh copy of its release"
        )
        self._schedule_restart(st)
        self._persist(st)
        with self.state.lock:
            others = any(o.pid and o.release_dir == st.release_dir for o in self.state.instances.values())
        if not others:
            self.builder.discard(Path(st.release_dir))
            self.over_limit.discard(st.release_dir)
        self.event(st.name, "Warning", REASON_DISK_LIMIT, st.message)
        self.status.write(inst, st, "Starting", None)
        return self._backoff_left(st) if st.next_start else None

    def _storage_damaged(self, inst: Instance, st: InstanceState, run: RunSpec) -> float | None:
        """Stop an Instance whose persistent storage turned read-only (an I/O error): once no
        process of the app holds it, its next start repairs it (``DiskFence.ensure_storage``)."""
        self.supervisor.stop(st, run.stop_timeout)
        self.storage_damaged.discard(st.name)
        st.reason = REASON_STORAGE_DAMAGED
        st.message = (
            "its persistent storage turned read-only after an I/O error; stopped so that it is "
            "repaired (e2fsck) before it starts again"
        )
        self._schedule_restart(st)
        self._persist(st)
        self.event(st.name, "Warning", REASON_STORAGE_DAMAGED, st.message)
        self.status.write(inst, st, "Starting", None)
        return st.next_start - self.clock.now() if st.next_start else None

    # -- probe -----------------------------------------------------------------
    def _probe(self, inst: Instance, st: InstanceState, run: RunSpec) -> float | None:
        tracker = self.trackers.get(st.name)
        if tracker is None:  # adopted after an agent restart: keep the last known readiness
            tracker = ProbeTracker(run.health.retries, run.health.start_period_seconds, ready=st.ready)
            self.trackers[st.name] = tracker
        mono = self.clock.monotonic()
        due = self.next_probe.get(st.name, mono)
        if mono < due:
            return due - mono
        assert st.port is not None
        result = probe(st.port, run.health.path, run.health.timeout_seconds, host=self._probe_host(st))
        since_start = self._up(st)
        last_fail = self.last_fail.get(st.name)
        if (
            not result.ok
            and not tracker.ready
            and last_fail is not None
            and mono - last_fail < run.health.interval_seconds
        ):
            verdict = WAITING  # a quick look before the first success: failures count once per interval
        else:
            verdict = tracker.record(result, since_start)
            if not result.ok:
                self.last_fail[st.name] = mono
        if not result.ok and not tracker.ready and not result.detail.startswith("HTTP "):
            wrong = self._wrong_port(st, mono)  # nothing answered on $PORT: is it elsewhere?
            if wrong is not None:
                return self._unhealthy(inst, st, run, wrong, result, REASON_WRONG_PORT)
        else:
            self.wrong_port_since.pop(st.name, None)
        if tracker.ready:
            step = run.health.interval_seconds
        else:  # not ready yet: look again soon, backing off toward the interval
            step = min(
                run.health.interval_seconds, max(FIRST_PROBE_DELAY, 2 * self.probe_step.get(st.name, 0.0))
            )
        self.probe_step[st.name] = step
        self.next_probe[st.name] = self.clock.monotonic() + step
        if verdict == READY:
            self._mark_ready(st)
            if st.crash_streak and since_start >= STABLE_SECONDS:
                st.crash_streak = 0
                self._persist(st)
        elif verdict == UNHEALTHY:
            what = f"{run.health.path} failed {tracker.failures} probes in a row"
            return self._unhealthy(inst, st, run, what + self._ports_note(st), result)
        self.status.write(
            inst, st, "Running" if st.ready else "Starting", tracker, probe_result=result.detail
        )
        return step

    def _listeners(self, st: InstanceState) -> list[Listener]:
        return listening(self.supervisor.app_pids(st))

    def _wrong_port(self, st: InstanceState, mono: float) -> str | None:
        """What is wrong with where the app listens, once it has been so for WRONG_PORT_GRACE."""
        assert st.port is not None
        why = port_verdict(st.port, self._listeners(st))
        if why is None:
            self.wrong_port_since.pop(st.name, None)
            return None
        since = self.wrong_port_since.setdefault(st.name, mono)
        return why if mono - since >= WRONG_PORT_GRACE else None

    def _ports_note(self, st: InstanceState) -> str:
        """For a failed probe: the port Forge gave and where the app does listen."""
        found = self._listeners(st)
        where = ", ".join(str(x) for x in found) if found else "no TCP port"
        return f" (Forge gave it $PORT={st.port}; it listens on {where})"

    def _mark_ready(self, st: InstanceState) -> None:
        if not st.ready:
            st.ready, st.ever_ready, st.ready_time = True, True, self.clock.now_iso()
            st.reason, st.message = "", ""
            self._persist(st)

    def _unhealthy(
        self,
        inst: Instance,
        st: InstanceState,
        run: RunSpec,
        what: str,
        result: ProbeResult,
        reason: str = REASON_HEALTH,
    ) -> float | None:
        """Failed its checks ``retries`` times in a row (or listens on the wrong port): restart
        it (with back-off), say so."""
        st.reason = reason
        st.message = f"{what}; last: {result.detail}"
        self.wrong_port_since.pop(st.name, None)
        self.supervisor.stop(st, run.stop_timeout)
        self._schedule_restart(st)
        self._persist(st)
        self.event(st.name, "Warning", reason, f"{st.message}; restarting it")
        self.status.write(inst, st, "Starting", None, probe_result=result.detail)
        return self._backoff_left(st) if st.next_start else None

    def _persist(self, st: InstanceState) -> None:
        """Save the state where a failure must not stop the work (a full disk): what it would
        record is already true in memory and, address and port unchanged, in the store."""
        try:
            self.state.save()
        except OSError as exc:
            log.warning(
                "%s: cannot save the agent state (%s); carrying on, it is saved at the next change",
                st.name,
                exc,
            )

    def _others_running(self, app: str, name: str) -> bool:
        """Another Instance of ``app`` still has a process here."""
        with self.state.lock:
            return any(st.app == app and st.pid for n, st in self.state.instances.items() if n != name)

    def event(self, instance: str, type_: str, reason: str, message: str) -> None:
        """Record what happened on this node as an Event on the Instance (best effort: an
        Event is history for people, never a reason for the agent to stop working)."""
        try:
            self.client.request(
                "POST",
                f"/api/v1/instances/{instance}/events",
                json={"type": type_, "reason": reason, "message": message[:1000]},
            )
        except errors.ForgeError as exc:
            log.info("could not record %s on %s: %s", reason, instance, exc)

    def _probe_host(self, st: InstanceState) -> str:
        """Where the agent reaches the app: its namespace address, or loopback on the host network."""
        if self.network is not None and st.address:
            return st.address
        return "127.0.0.1"

    # -- stop ------------------------------------------------------------------
    def _stop(self, name: str, st: InstanceState | None, inst: Instance | None) -> float | None:
        if st is not None:
            grace = RunSpec.for_instance(inst.spec).stop_timeout if inst is not None else 10.0
            if st.pid or self.supervisor.driver is not None:
                code = self.supervisor.stop(st, grace)
                st.exit_code = code if code is not None else st.exit_code
            if self.network is not None:
                self.network.detach(name)  # after the processes are gone: nothing is left inside
            st.pid, st.pid_start, st.ready, st.reason, st.message = None, None, False, "", ""
            self.trackers.pop(name, None)
            self.next_probe.pop(name, None)
            self.probe_step.pop(name, None)
            self.last_fail.pop(name, None)
            self.wrong_port_since.pop(name, None)
            self.state.save()
        finished = (
            inst is not None
            and inst.spec.oneshot is not None
            and inst.status.phase in ("Succeeded", "Failed")
        )
        if inst is not None and inst.spec.desired == "Stopped" and not finished:
            last = st is not None and not self._others_running(inst.spec.app, name)
            if self.on_last_stopped is not None and last:
                self.on_last_stopped(inst.spec.app)  # raises to retry: Stopped is not reported yet
            self.status.write(inst, st, "Stopped", None)
        if st is not None:
            try:
                drained = self.shipper.ship_instance(name)
            except errors.ForgeError:
                drained = False
            if not drained:
                return 5.0  # ship the rest once the control plane answers, then forget
            if self.drains_pending is not None and self.drains_pending(name):
                return 5.0  # a log drain has not received all of it yet (bounded: see drains.manager)
            self.state.remove(name)
            shutil.rmtree(self.logs_dir / name, ignore_errors=True)
            self.exit_file(name).unlink(missing_ok=True)
        return None
