"""What the agent needs from an Instance's manifest.

``Instance.spec.manifest`` is the typed ``forge.models.Manifest`` (validated where the record is
read, like the rest of the spec); this module turns it, with the Instance's process type or
one-shot, into what a process is run with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from forge.models import Manifest
from forge.nodeagent.prober import HealthSpec

DEFAULT_BUILD_TIMEOUT = 600.0
DEFAULT_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class RunSpec:
    build_commands: tuple[str, ...] = ()
    build_timeout: float = DEFAULT_BUILD_TIMEOUT
    build_notes: tuple[str, ...] = ()  # forge.detect: what was detected and why (the build log's start)
    command: str = ""
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    health: HealthSpec = field(default_factory=HealthSpec)
    env: dict[str, str] = field(default_factory=dict)
    kind: str = "web"  # web (HTTP-probed), worker (ready after min_running), oneshot (runs to its end)
    min_running: float = 10.0  # worker: running this long without a crash = ready
    timeout: float | None = None  # oneshot: killed past this many seconds
    health_command: str | None = None  # worker: ready while it exits 0 (health.interval/timeout/retries)

    @classmethod
    def for_instance(cls, spec: Any) -> RunSpec:
        """What to run for an Instance's spec: its process type's command, or its one-shot's."""
        base = cls.from_manifest(spec.manifest)
        if spec.oneshot is not None:
            return replace(
                base, command=spec.oneshot.command, kind="oneshot", timeout=spec.oneshot.timeout_seconds
            )
        if spec.process == "web":
            return base
        m: Manifest | None = spec.manifest
        proc = m.processes.get(spec.process) if m is not None else None
        if proc is None:
            return replace(base, command="", kind="worker")
        return replace(
            base,
            command=proc.command,
            kind="worker",
            env={**base.env, **proc.env},
            stop_timeout=proc.stop_timeout_seconds
            if proc.stop_timeout_seconds is not None
            else base.stop_timeout,
            min_running=proc.min_running_seconds,
            health_command=proc.health_command,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest | None) -> RunSpec:
        if manifest is None:
            return cls()
        return cls(
            build_commands=tuple(manifest.build.commands),
            build_notes=tuple(manifest.build.detected),
            build_timeout=manifest.build.timeout_seconds,
            command=manifest.run.command,
            stop_timeout=manifest.run.stop_timeout_seconds,
            health=HealthSpec.from_manifest(manifest),
            env=dict(manifest.env),
        )
