"""The agent's durable memory: what it started, so a restarted agent re-adopts instead of restarting.

``DATA/agent-state.json`` maps each Instance this node runs to its pid, port, cgroup, start
time, release dir and log cursors. It is written atomically (tmp + fsync + rename) after every
change, so a SIGKILL at any moment leaves either the old or the new file. Secrets never go
here: the process environment lives only in memory and in the running process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forge.atomicfile import write_atomic

STATE_VERSION = 1


@dataclass
class LogCursor:
    """Position of the shipper in one log: the logical offset (``forge.nodeagent.logwriter``:
    segments named by the offset of their first byte) up to which the control plane
    acknowledged every line."""

    shipped: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogCursor:
        return cls(shipped=int(data.get("shipped") or 0))


@dataclass
class InstanceState:
    name: str
    app: str
    deployment: str
    cgroup: str
    release_dir: str
    address: str | None = None  # the Instance's own namespace address (netns mode) or the node's
    port: int | None = None
    pid: int | None = None
    pid_start: int | None = None  # /proc start ticks: tells our process from a reused pid
    started_time: float | None = None
    started_mono: float | None = None  # the system's monotonic clock at the start (durations)
    ready: bool = False
    ever_ready: bool = False
    restarts: int = 0
    crash_streak: int = 0
    next_start: float | None = None  # wall time before which a crashed instance is not restarted
    next_start_mono: float | None = None  # the same on the system's monotonic clock (what counts)
    oom_kills: int = 0
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    ready_time: str | None = None
    finished_time: float | None = None  # a one-shot's end (it never starts again)
    restart_generation: int = 0  # the InstanceSpec.restart_generation its process was started for
    stop_timeout: float | None = None  # run.stop_timeout of what runs: how long a stop on exit waits
    logs: dict[str, LogCursor] = field(default_factory=dict)

    def cursor(self, source: str) -> LogCursor:
        return self.logs.setdefault(source, LogCursor())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceState:
        logs = {k: LogCursor.from_dict(v) for k, v in (data.get("logs") or {}).items()}
        known = {f for f in cls.__dataclass_fields__ if f != "logs"}
        return cls(**{k: v for k, v in data.items() if k in known}, logs=logs)


class AgentState:
    """Thread-safe map of instance name → InstanceState, persisted on ``save()``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self.instances: dict[str, InstanceState] = {}

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def load(self) -> AgentState:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return self
        except (ValueError, OSError):
            # A torn file cannot happen with rename-writes; an unreadable one is treated as empty
            # and its processes are found again through their cgroups and swept as orphans.
            return self
        with self._lock:
            self.instances = {
                name: InstanceState.from_dict(item) for name, item in (data.get("instances") or {}).items()
            }
        return self

    def get(self, name: str) -> InstanceState | None:
        with self._lock:
            return self.instances.get(name)

    def put(self, inst: InstanceState) -> None:
        with self._lock:
            self.instances[inst.name] = inst
            self.save()

    def remove(self, name: str) -> None:
        with self._lock:
            if self.instances.pop(name, None) is not None:
                self.save()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self.instances)

    def ports_held(self, exclude: str | None = None) -> set[int]:
        with self._lock:
            return {i.port for n, i in self.instances.items() if i.port and n != exclude}

    def save(self) -> None:
        with self._lock:
            body = {"version": STATE_VERSION, "instances": {n: asdict(i) for n, i in self.instances.items()}}
            write_atomic(self.path, json.dumps(body, indent=1, sort_keys=True).encode())
