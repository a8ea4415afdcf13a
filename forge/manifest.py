"""``forge.yaml``: parse, validate strictly and normalise an app's manifest (DESIGN §7).

Parsing is defensive: at most 64 KiB (checked before YAML sees it), ``yaml.SafeLoader`` only,
exactly one document whose root is a mapping, no anchors or aliases (no billion laughs), no
duplicate keys, nesting at most 16 deep. Every field is known: an unknown key at any level is
an error naming its path (``build.comands: unknown field``). Problems come back together as
``Invalid`` whose ``details`` are ``[{path, message}]`` and whose message names the first.

Fields and units (the seed's fields plus documented extensions, marked *):

- ``name`` a valid App name; equal to the App's name when one is given to ``parse_manifest``.
- ``runtime`` e.g. ``python3.11``, ``node`` (optional, informational for the agent).
- ``build.commands`` list of 0–50 non-empty strings, each ≤ 4096 characters;
  ``build.timeout``* duration 1s–2h, default 10m.
- ``run.command`` required, non-empty, ≤ 4096 characters; ``run.port`` 1–65535 (a fallback,
  the platform owns ``$PORT``); ``run.stop_timeout``* grace before SIGKILL, 0s–10m, default 10s.
- ``resources.memory`` default 256M, bounds 16 MiB–64 GiB. Units are **binary**, as Docker and
  Heroku treat them: ``K``/``Ki``/``KB`` = 1024, ``M``/``Mi``/``MB`` = 1024², ``G``/``Gi``/``GB``
  = 1024³ (case-insensitive, fractions allowed: ``1.5G``); a plain integer is bytes.
  ``resources.cpu`` cores, ``0.5`` or millicores ``500m``, 0 < c ≤ 64, default 0.5.
  ``resources.pids``* 16–65536, default 512. ``resources.disk``* what the release's tree (build
  output plus everything its Instances write) may hold on a node, same units, 32 MiB–1 TiB,
  default 1G; enforced by the node (``forge.nodeagent.diskfence``).
- ``health.path`` starts with ``/``, no whitespace, default ``/``; ``health.interval`` 1s–1h,
  default 10s; ``health.timeout`` 100ms–interval, default 3s; ``health.retries`` 1–100,
  default 3; ``health.start_period``* 0s–1h, default 0s; ``health.min_ready`` 0s–1h, default
  10s (every Instance of a new release stays ready this long before it takes traffic).
- ``env``* mapping of environment names to values. Strings pass; integers and floats are
  coerced to their text (``WORKERS: 4`` → ``"4"``); booleans and nulls are refused because
  YAML turns ``yes``/``on``/``~`` into them silently — quote such values. ``PORT`` is reserved.

Durations are ``500ms``, ``10s``, ``1m30s``, ``2h`` (units h, m, s, ms, combinable); a bare
number is seconds. The normalised ``Manifest`` holds bytes, cores and ``*_seconds`` floats;
``to_status()`` is what ``Deployment.status.manifest`` stores, ``Manifest.from_status`` reads it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from typing import Any

import yaml

from forge.errors import Invalid
from forge.models import (  # noqa: F401  (the manifest's model lives with the records it is part of)
    ENV_KEY,
    BuildSpec,
    CronJobSpec,
    HealthSpec,
    Manifest,
    ProcessSpec,
    ReleaseCommandSpec,
    Resources,
    RunSpec,
    StorageSpec,
    check_app_name,
)

MAX_BYTES = 64 * 1024
MAX_DEPTH = 16
KiB, MiB, GiB = 1024, 1024**2, 1024**3
MEMORY_MIN, MEMORY_MAX = 16 * MiB, 64 * GiB
DISK_MIN, DISK_MAX = 32 * MiB, 1024 * GiB
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "ki": KiB,
    "kb": KiB,
    "kib": KiB,
    "m": MiB,
    "mi": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": GiB,
    "gi": GiB,
    "gb": GiB,
    "gib": GiB,
}
_SIZE = re.compile(r"^(\d{1,15}(?:\.\d{1,9})?)\s*([A-Za-z]*)$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|h|m|s))+$")
_MILLICORES = re.compile(r"^(\d+)m$")
_RUNTIME = re.compile(r"^[a-z][a-z0-9._+-]{0,31}$")
_DUR_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


# --------------------------------------------------------------------------- units


def fmt_duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def parse_size(value: Any) -> int:
    """``128M`` / ``1Gi`` / ``256Ki`` / ``134217728`` → bytes (binary units); ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(value.strip()) if isinstance(value, str) else None
    unit = m and _SIZE_UNITS.get(m.group(2).lower())
    if not m or not unit or ("." in m.group(1) and unit == 1):
        raise ValueError(f"{_show(value)} is not a size (use 128M, 1G, 512Mi)")
    return int(float(m.group(1)) * unit)


def parse_cpu(value: Any) -> float:
    """``0.5`` / ``2`` / ``500m`` → cores; ValueError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        cpu = float(value)
    elif isinstance(value, str) and (m := _MILLICORES.match(value.strip())):
        cpu = int(m.group(1)) / 1000
    elif isinstance(value, str) and re.match(r"^\d+(\.\d+)?$", value.strip()):
        cpu = float(value)
    else:
        raise ValueError(f"{_show(value)} is not a CPU amount (use 0.5, 2 or 500m)")
    if not math.isfinite(cpu):
        raise ValueError(f"{_show(value)} is not a CPU amount (use 0.5, 2 or 500m)")
    return cpu


def parse_duration(value: Any) -> float:
    """``500ms`` / ``10s`` / ``1m30s`` / ``2h`` / bare number of seconds → seconds; ValueError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.match(r"^\d+(\.\d+)?$", text):
            return float(text)
        if _DURATION.match(text):
            return sum(float(n) * _DUR_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError(f"{_show(value)} is not a duration (use 500ms, 10s, 1m30s, 2h)")


def _fmt_size(n: float) -> str:
    return f"{n / GiB:g}Gi" if n >= GiB else f"{n / MiB:g}Mi"


def _cpu(value: Any) -> float:
    cpu = parse_cpu(value)
    if not 0 < cpu <= 64:
        hint = ""
        if 64 < cpu <= 64000 and _is_bare_number(value) and float(value) == int(float(value)):
            hint = f"; a bare number is cores: did you mean {int(float(value))}m ({cpu / 1000:g} cores)?"
        raise ValueError(f"{_show(value)} is out of range (more than 0, at most 64 cores){hint}")
    return cpu


# Units tried, in order, when a bare number is out of range; what a bare number means.
SUGGESTED_UNITS: dict[Callable[[Any], float], tuple[str, ...]] = {
    parse_size: ("M", "G"),
    parse_duration: ("ms", "m"),
}
UNIT_MEANING: dict[Callable[[Any], float], str] = {parse_size: "bytes", parse_duration: "seconds"}


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


# --------------------------------------------------------------------------- YAML


def load_yaml(text: str | bytes) -> Any:
    """Size cap, then an event scan refusing anchors/aliases/multi-docs/deep nesting, then load."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_BYTES:
        raise _one("", f"forge.yaml is {len(raw)} bytes; the limit is {MAX_BYTES} (64 KiB)")
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _one("", f"forge.yaml is not UTF-8 (byte {exc.start})") from None
    try:
        _scan(source)
        data = yaml.load(source, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise _one("", f"invalid YAML at {where}{problem}") from None
    except yaml.YAMLError as exc:
        raise _one("", f"YAML error: {str(exc).splitlines()[0]}") from None
    if data is None:
        raise _one("", "forge.yaml is empty (it needs at least run.command)")
    if not isinstance(data, dict):
        raise _one("", f"the document root must be a mapping, not {_type(data)}")
    return data


def _scan(source: str) -> None:
    docs = depth = 0
    for ev in yaml.parse(source, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
            line = ev.start_mark.line + 1 if ev.start_mark else 0
            raise _one("", f"YAML anchors and aliases are not allowed (line {line})")
        if isinstance(ev, yaml.DocumentStartEvent):
            docs += 1
            if docs > 1:
                raise _one("", "forge.yaml must hold exactly one YAML document")
        elif isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _one("", f"forge.yaml nests deeper than {MAX_DEPTH} levels")
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key) if isinstance(key, str) else None
        return super().construct_mapping(node, deep=deep)


def _one(path: str, message: str) -> Invalid:
    return Invalid.from_errors([{"path": path, "message": message}], "forge.yaml")


def _type(v: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


# --------------------------------------------------------------------------- validation

Check = Callable[[Any, str, list[dict[str, str]]], Any]


def parse_manifest(text: str | bytes, app_name: str | None = None) -> Manifest:
    """Parse forge.yaml text into a normalised ``Manifest``; ``Invalid`` listing every problem."""
    return validate_data(load_yaml(text), app_name)


def validate_data(data: dict[str, Any], app_name: str | None = None) -> Manifest:
    """forge.yaml-shaped data (loaded YAML, or merged with a detected build) → ``Manifest``."""
    errs: list[dict[str, str]] = []
    out = _TOP(data, "", errs)
    if app_name is not None and isinstance(out.get("name"), str) and out["name"] != app_name:
        errs.append({"path": "name", "message": f'"{out["name"]}" does not match the App name "{app_name}"'})
    health = out.get("health")
    if isinstance(health, dict):
        interval = health.get("interval_seconds", 10.0)
        if "timeout_seconds" not in health:
            health["timeout_seconds"] = min(3.0, interval)
        elif health["timeout_seconds"] > interval:
            errs.append(
                {
                    "path": "health.timeout",
                    "message": f"{fmt_duration(health['timeout_seconds'])} "
                    f"must not exceed health.interval ({fmt_duration(interval)})",
                }
            )
    top = Resources.model_validate(out.get("resources") or {})
    for proc in (out.get("processes") or {}).values():
        if isinstance(proc, dict):  # a type inherits the top level's resources field by field
            proc["resources"] = top.model_copy(update=proc.get("resources") or {}).model_dump()
    names = [c.get("name") for c in out.get("cron") or [] if isinstance(c, dict)]
    for i, name in enumerate(names):
        if name is not None and name in names[:i]:
            errs.append({"path": f"cron[{i}].name", "message": f'"{name}" is used by another cron job'})
    if errs:
        raise Invalid.from_errors(errs, "forge.yaml")
    return Manifest.model_validate(out)


def _section(fields: dict[str, tuple[str, Check, bool]]) -> Check:
    def check(data: Any, path: str, errs: list[dict[str, str]]) -> dict[str, Any]:
        if not isinstance(data, dict):
            errs.append({"path": path, "message": f"must be a mapping, not {_type(data)}"})
            return {}
        out: dict[str, Any] = {}
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str) or key not in fields:
                hint = difflib.get_close_matches(str(key), list(fields), 1)
                errs.append(
                    {
                        "path": sub,
                        "message": "unknown field" + (f' (did you mean "{hint[0]}"?)' if hint else ""),
                    }
                )
                continue
            attr, field_check, _ = fields[key]
            before = len(errs)
            result = field_check(value, sub, errs)
            if len(errs) == before:
                out[attr] = result
        for key, (_, _, required) in fields.items():
            if required and key not in data:
                errs.append({"path": f"{path}.{key}" if path else key, "message": "field required"})
        return out

    return check


def _value(fn: Callable[[Any], Any]) -> Check:
    def check(value: Any, path: str, errs: list[dict[str, str]]) -> Any:
        try:
            return fn(value)
        except (ValueError, TypeError) as exc:
            errs.append({"path": path, "message": str(exc)})
            return None

    return check


def _is_bare_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str) and re.match(r"^\d+(\.\d+)?$", value.strip()) is not None


def did_you_mean_unit(
    value: Any, parse: Callable[[Any], float], lo: float, hi: float, units: tuple[str, ...]
) -> str:
    """For a bare number out of range: the same number with the first unit that puts it in
    range (``256`` → ``256M`` for a memory size), as a hint to append; "" when none does."""
    if not _is_bare_number(value):
        return ""
    text = str(value).strip()
    for unit in units:
        try:
            if lo <= parse(text + unit) <= hi:
                return f"; a bare number is {UNIT_MEANING[parse]}: did you mean {text}{unit}?"
        except ValueError:
            continue
    return ""


def _bounded(parse: Callable[[Any], float], lo: float, hi: float, show: Callable[[float], str]) -> Check:
    units = SUGGESTED_UNITS.get(parse, ())

    def fn(value: Any) -> float:
        v = parse(value)
        if not lo <= v <= hi:
            hint = did_you_mean_unit(value, parse, lo, hi, units)
            raise ValueError(f"{_show(value)} is out of range ({show(lo)} to {show(hi)}){hint}")
        return v

    return _value(fn)


def _int(lo: int, hi: int) -> Check:
    def fn(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{_show(value)} is not an integer")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range ({lo} to {hi})")
        return value

    return _value(fn)


def _text(max_len: int = 4096, what: str = "string") -> Callable[[Any], str]:
    def fn(value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"must be a {what}, not {_type(value)}")
        if not value.strip():
            raise ValueError(f"must be a non-empty {what}")
        if len(value) > max_len or "\x00" in value:
            raise ValueError(f"must be at most {max_len} characters without NUL bytes")
        return value

    return fn


def _commands(value: Any, path: str, errs: list[dict[str, str]]) -> list[str]:
    if not isinstance(value, list):
        errs.append({"path": path, "message": f"must be a list of strings, not {_type(value)}"})
        return []
    if len(value) > 50:
        errs.append({"path": path, "message": f"has {len(value)} commands; at most 50"})
    return [_value(_text(what="command"))(c, f"{path}[{i}]", errs) for i, c in enumerate(value)]


def _health_path(value: Any) -> str:
    text = _text(1024, "path")(value)
    if not text.startswith("/") or any(c.isspace() or ord(c) < 32 for c in text):
        raise ValueError(f"{_show(value)} must start with / and contain no whitespace")
    return text


def _runtime(value: Any) -> str:
    if not isinstance(value, str) or not _RUNTIME.match(value):
        raise ValueError(f"{_show(value)} is not a runtime name (like python3.11 or node)")
    return value


def _app_name(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {_type(value)}")
    return check_app_name(value)


def _env(value: Any, path: str, errs: list[dict[str, str]]) -> dict[str, str]:
    if not isinstance(value, dict):
        errs.append({"path": path, "message": f"must be a mapping, not {_type(value)}"})
        return {}
    if len(value) > 500:
        errs.append({"path": path, "message": "at most 500 variables"})
    out: dict[str, str] = {}
    for key, v in value.items():
        sub = f"{path}.{key}"
        if not isinstance(key, str) or not ENV_KEY.match(key):
            errs.append({"path": sub, "message": f"{_show(key)} is not a valid environment variable name"})
        elif key == "PORT":
            errs.append({"path": sub, "message": "PORT is set by the platform"})
        elif isinstance(v, bool) or v is None:
            errs.append({"path": sub, "message": f'{_type(v)} value; quote it ("{str(v).lower()}")'})
        elif isinstance(v, (int, float)):
            out[key] = str(v)
        elif isinstance(v, str) and "\x00" not in v and len(v) <= 32768:
            out[key] = v
        else:
            errs.append({"path": sub, "message": "must be a string of at most 32 KiB without NUL bytes"})
    return out


_HEALTH = _section(
    {
        "path": ("path", _value(_health_path), False),
        "interval": ("interval_seconds", _bounded(parse_duration, 1, 3600, fmt_duration), False),
        "timeout": ("timeout_seconds", _bounded(parse_duration, 0.1, 3600, fmt_duration), False),
        "retries": ("retries", _int(1, 100), False),
        "start_period": ("start_period_seconds", _bounded(parse_duration, 0, 3600, fmt_duration), False),
        "min_ready": ("min_ready_seconds", _bounded(parse_duration, 0, 3600, fmt_duration), False),
    }
)
_RESOURCES = _section(
    {
        "memory": ("memory", _bounded(parse_size, MEMORY_MIN, MEMORY_MAX, _fmt_size), False),
        "cpu": ("cpu", _value(_cpu), False),
        "pids": ("pids", _int(16, 65536), False),
        "disk": ("disk", _bounded(parse_size, DISK_MIN, DISK_MAX, _fmt_size), False),
    }
)
_PROCESS = _section(
    {
        "command": ("command", _value(_text(what="command")), True),
        "replicas": ("replicas", _int(0, 100), False),
        "resources": ("resources", _RESOURCES, False),
        "env": ("env", _env, False),
        "health": (
            "health_command",
            _section({"command": ("command", _value(_text(what="command")), True)}),
            False,
        ),
        "min_running": ("min_running_seconds", _bounded(parse_duration, 0, 3600, fmt_duration), False),
        "stop_timeout": ("stop_timeout_seconds", _bounded(parse_duration, 0, 600, fmt_duration), False),
    }
)


def _process_name(value: Any) -> str:
    from forge.models import RESERVED_PROCESS_NAMES, is_dns_label

    if not isinstance(value, str) or not is_dns_label(value, 30):
        raise ValueError(f"{_show(value)} is not a process type name (a DNS label of at most 30 characters)")
    if value in RESERVED_PROCESS_NAMES:
        raise ValueError(
            f'"{value}" is reserved ({"run: is the web process" if value == "web" else "a Forge verb"})'
        )
    return value


def _processes(value: Any, path: str, errs: list[dict[str, str]]) -> dict[str, Any]:
    if not isinstance(value, dict):
        errs.append({"path": path, "message": f"must be a mapping of process types, not {_type(value)}"})
        return {}
    if len(value) > 20:
        errs.append({"path": path, "message": f"has {len(value)} process types; at most 20"})
    out: dict[str, Any] = {}
    for key, spec in value.items():
        sub = f"{path}.{key}"
        before = len(errs)
        name = _value(_process_name)(key, sub, errs)
        proc = _PROCESS(spec, sub, errs)
        if len(errs) == before:
            if "health_command" in proc:
                proc["health_command"] = proc["health_command"]["command"]
            out[name] = proc
    return out


def _cron_name(value: Any) -> str:
    from forge.models import is_dns_label

    if not isinstance(value, str) or not is_dns_label(value, 40):
        raise ValueError(f"{_show(value)} is not a cron job name (a DNS label of at most 40 characters)")
    return value


def _schedule(value: Any) -> str:
    from forge.cron import check_schedule

    return check_schedule(value)


def _timezone(value: Any) -> str:
    from forge.cron import check_timezone

    return check_timezone(value)


_CRON_JOB = _section(
    {
        "name": ("name", _value(_cron_name), True),
        "schedule": ("schedule", _value(_schedule), True),
        "command": ("command", _value(_text(what="command")), True),
        "timeout": ("timeout_seconds", _bounded(parse_duration, 1, 86400, fmt_duration), False),
        "timezone": ("timezone", _value(_timezone), False),
    }
)


def _cron(value: Any, path: str, errs: list[dict[str, str]]) -> list[Any]:
    if not isinstance(value, list):
        errs.append({"path": path, "message": f"must be a list of cron jobs, not {_type(value)}"})
        return []
    if len(value) > 50:
        errs.append({"path": path, "message": f"has {len(value)} cron jobs; at most 50"})
    return [_CRON_JOB(job, f"{path}[{i}]", errs) for i, job in enumerate(value)]


_TOP = _section(
    {
        "name": ("name", _value(_app_name), False),
        "runtime": ("runtime", _value(_runtime), False),
        "build": (
            "build",
            _section(
                {
                    "commands": ("commands", _commands, False),
                    "timeout": ("timeout_seconds", _bounded(parse_duration, 1, 7200, fmt_duration), False),
                }
            ),
            False,
        ),
        "run": (
            "run",
            _section(
                {
                    "command": ("command", _value(_text(what="command")), True),
                    "port": ("port", _int(1, 65535), False),
                    "stop_timeout": (
                        "stop_timeout_seconds",
                        _bounded(parse_duration, 0, 600, fmt_duration),
                        False,
                    ),
                }
            ),
            True,
        ),
        "resources": ("resources", _RESOURCES, False),
        "health": ("health", _HEALTH, False),
        "env": ("env", _env, False),
        "processes": ("processes", _processes, False),
        "cron": ("cron", _cron, False),
        "release": (
            "release",
            _section(
                {
                    "command": ("command", _value(_text(what="command")), True),
                    "timeout": ("timeout_seconds", _bounded(parse_duration, 1, 7200, fmt_duration), False),
                }
            ),
            False,
        ),
        "storage": (
            "storage",
            _section(
                {
                    "size": ("size", _bounded(parse_size, DISK_MIN, DISK_MAX, _fmt_size), True),
                }
            ),
            False,
        ),
    }
)
