"""What the agent needs from an Instance's manifest, read defensively.

``Instance.spec.manifest`` is the normalized dict of ``forge.manifest.Manifest.to_status()``.
When that module is importable the dict goes through ``Manifest.from_status`` first; either
way the agent accepts camelCase or snake_case keys and falls back to safe defaults, so a
manifest from a newer control plane never crashes the agent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from forge.errors import ForgeError
from forge.nodeagent.prober import HealthSpec

log = logging.getLogger(__name__)

DEFAULT_BUILD_TIMEOUT = 600.0
DEFAULT_STOP_TIMEOUT = 10.0


def _get(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def _normalize(manifest: dict[str, Any]) -> dict[str, Any]:
    try:
        from forge.manifest import Manifest  # written by another part; optional at import time
    except ImportError:
        return manifest
    from_status = getattr(Manifest, "from_status", None)
    if from_status is None:
        return manifest
    try:
        m = from_status(manifest)
        out = m.to_status() if hasattr(m, "to_status") else manifest
        return out if isinstance(out, dict) else manifest
    except (ValueError, TypeError, KeyError, ForgeError) as exc:
        log.warning("manifest did not validate (%s); reading it as-is", exc)
        return manifest


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
        m = _normalize(dict(spec.manifest or {}))
        procs = m["processes"] if isinstance(m.get("processes"), dict) else {}
        proc = procs[spec.process] if isinstance(procs.get(spec.process), dict) else {}
        env = proc["env"] if isinstance(proc.get("env"), dict) else {}
        stop = _get(proc, "stopTimeoutSeconds", "stop_timeout_seconds", default=base.stop_timeout)
        return replace(
            base,
            command=str(proc.get("command") or ""),
            kind="worker",
            env={**base.env, **{str(k): str(v) for k, v in env.items()}},
            stop_timeout=float(stop),
            min_running=float(_get(proc, "minRunningSeconds", "min_running_seconds", default=10.0)),
            health_command=_get(proc, "healthCommand", "health_command"),
        )

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any] | None) -> RunSpec:
        m = _normalize(dict(manifest or {}))
        build = m["build"] if isinstance(m.get("build"), dict) else {}
        run = m["run"] if isinstance(m.get("run"), dict) else {}
        cmds = _get(build, "commands", default=[]) or []
        if isinstance(cmds, str):
            cmds = [cmds]
        env = m["env"] if isinstance(m.get("env"), dict) else {}
        return cls(
            build_commands=tuple(str(c) for c in cmds),
            build_notes=tuple(str(n) for n in (_get(build, "detected", default=[]) or [])),
            build_timeout=float(
                _get(build, "timeoutSeconds", "timeout_seconds", "timeout", default=DEFAULT_BUILD_TIMEOUT)
            ),
            command=str(_get(run, "command", default="") or ""),
            stop_timeout=float(
                _get(
                    run,
                    "stopTimeoutSeconds",
                    "stop_timeout_seconds",
                    "stop_timeout",
                    default=DEFAULT_STOP_TIMEOUT,
                )
            ),
            health=HealthSpec.from_manifest(m),
            env={str(k): str(v) for k, v in env.items()},
        )
