"""forge.yaml parsing and validation: every rule, each bad manifest producing one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.errors import Invalid
from forge.manifest import GiB, Manifest, MiB, parse_cpu, parse_duration, parse_manifest, parse_size
from forge.models import Deployment

ROOT = Path(__file__).resolve().parents[2]
SEED = """\
name: hello
runtime: python3.11
build:
  commands: ["python3 -m venv .venv", ". .venv/bin/activate && pip install -r requirements.txt"]
run:
  command: . .venv/bin/activate && uvicorn app:main --host 0.0.0.0 --port $PORT
  port: 8000
resources: {memory: 256M, cpu: 0.5}
health: {path: /health, interval: 10s, timeout: 3s, retries: 3}
"""
RUN = "run: {command: ./serve}\n"


def test_seed_manifest_normalised() -> None:
    """The seed's example parses into bytes, cores and seconds."""
    m = parse_manifest(SEED, app_name="hello")
    assert m.name == "hello" and m.runtime == "python3.11"
    assert m.build.commands[1].endswith("requirements.txt")
    assert m.run.port == 8000 and m.run.command.startswith(". .venv")
    assert m.resources.memory == 256 * MiB and m.resources.cpu == 0.5 and m.resources.pids == 512
    assert (m.health.path, m.health.interval_seconds, m.health.timeout_seconds, m.health.retries) == (
        "/health", 10.0, 3.0, 3)


def test_minimal_manifest_gets_defaults() -> None:
    """Only run.command is required; everything else has documented defaults."""
    m = parse_manifest(RUN.encode())
    assert m.name is None and m.runtime is None and m.build.commands == []
    assert m.build.timeout_seconds == 600 and m.run.stop_timeout_seconds == 10 and m.run.port is None
    assert m.health.model_dump() == {"path": "/", "interval_seconds": 10.0, "timeout_seconds": 3.0,
                                     "retries": 3, "start_period_seconds": 0.0, "min_ready_seconds": 10.0}
    assert m.env == {}


def test_example_file_in_manifests_dir_is_valid() -> None:
    """manifests/forge.yaml, the documented example, passes validation with every extension."""
    m = parse_manifest((ROOT / "manifests" / "forge.yaml").read_text(), app_name="hello")
    assert m.build.timeout_seconds == 600 and m.health.start_period_seconds == 0
    assert m.env == {"LOG_LEVEL": "info", "WORKERS": "2"}


def test_status_round_trip_through_deployment_record() -> None:
    """to_status() is JSON-able camelCase that survives a Deployment record and from_status()."""
    m = parse_manifest(SEED)
    status = m.to_status()
    assert status["health"]["intervalSeconds"] == 10.0 and status["resources"]["memory"] == 256 * MiB
    dep = Deployment.model_validate({"metadata": {"name": "hello-1"},
                                     "spec": {"app": "hello", "commit": "a" * 40},
                                     "status": {"manifest": status}})
    again = Deployment.model_validate_json(dep.model_dump_json(by_alias=True))
    assert Manifest.from_status(again.status.manifest or {}) == m


def test_from_status_rejects_garbage() -> None:
    """A corrupt stored manifest is Invalid, not a pydantic traceback."""
    with pytest.raises(Invalid, match="manifest.run"):
        Manifest.from_status({"run": {"command": "x", "bogus": 1}})


@pytest.mark.parametrize(("text", "expected"), [
    ("128M", 128 * MiB), ("1G", GiB), ("512Mi", 512 * MiB), ("256Ki", 256 * 1024),
    ("1.5G", int(1.5 * GiB)), ("64mb", 64 * MiB), (134217728, 128 * MiB), ("134217728", 128 * MiB),
], ids=["M", "G", "Mi", "Ki", "fraction", "lower-mb", "int-bytes", "text-bytes"])
def test_parse_size(text: object, expected: int) -> None:
    """Memory sizes use binary units; a plain integer is bytes."""
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (0.5, 0.5), (2, 2.0), ("500m", 0.5), ("1.25", 1.25), ("64", 64.0)],
    ids=["float", "int", "millicores", "text", "max"])
def test_parse_cpu(text: object, expected: float) -> None:
    """CPU is cores or millicores."""
    assert parse_cpu(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("500ms", 0.5), ("10s", 10.0), ("1m30s", 90.0), ("2h", 7200.0), ("1h2m3s", 3723.0),
    (5, 5.0), ("2.5s", 2.5), ("1s500ms", 1.5)],
    ids=["ms", "s", "m-s", "h", "h-m-s", "bare-number", "fraction", "s-ms"])
def test_parse_duration(text: object, expected: float) -> None:
    """Durations combine h/m/s/ms; a bare number is seconds."""
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize(("yaml_text", "check"), [
    ("resources: {memory: 16Mi}", lambda m: m.resources.memory == 16 * MiB),
    ("resources: {memory: 64G}", lambda m: m.resources.memory == 64 * GiB),
    ("resources: {cpu: 1m}", lambda m: m.resources.cpu == 0.001),
    ("resources: {pids: 100}", lambda m: m.resources.pids == 100),
    ("resources: {disk: 5G}", lambda m: m.resources.disk == 5 * GiB),
    ("run: {command: x}", lambda m: m.resources.disk == GiB),
    ("health: {interval: 1s}", lambda m: m.health.timeout_seconds == 1.0),
    ("health: {interval: 1h, timeout: 1h, start_period: 30s}",
     lambda m: m.health.timeout_seconds == 3600 and m.health.start_period_seconds == 30),
    ("health: {path: '/a/b?c=1', retries: 100}", lambda m: m.health.path == "/a/b?c=1"),
    ("build: {timeout: 2h}", lambda m: m.build.timeout_seconds == 7200),
    ("run: {command: x, port: 65535, stop_timeout: 0s}",
     lambda m: m.run.port == 65535 and m.run.stop_timeout_seconds == 0),
    ("env: {A: x, B: 3, C: 1.5, D: ''}", lambda m: m.env == {"A": "x", "B": "3", "C": "1.5", "D": ""}),
    ("runtime: node", lambda m: m.runtime == "node"),
    ("build: {commands: []}", lambda m: m.build.commands == []),
], ids=["memory-min", "memory-max", "cpu-1m", "pids", "disk", "disk-default", "timeout-follows-short-interval",
        "health-bounds", "path-query", "build-timeout-max", "run-extensions", "env-coercion",
        "runtime-node", "no-build-commands"])
def test_accepted_edges(yaml_text: str, check: object) -> None:
    """Values at the documented edges are accepted and normalised."""
    text = yaml_text + "\n" + ("" if yaml_text.startswith("run:") else RUN)
    assert check(parse_manifest(text))  # type: ignore[operator]


BAD = [
    ("unknown-top", "bogus: 1", "bogus", "unknown field"),
    ("unknown-nested", "build: {comands: [x]}", "build.comands", 'unknown field (did you mean "commands"?)'),
    ("unknown-health", "health: {intervall: 5s}", "health.intervall", "unknown field"),
    ("unknown-resources", "resources: {disks: 1G}", "resources.disks", "unknown field"),
    ("disk-too-small", "resources: {disk: 8M}", "resources.disk", "out of range (32Mi to 1024Gi)"),
    ("disk-unit", "resources: {disk: 5 parsecs}", "resources.disk", "is not a size"),
    ("memory-unit", "resources: {memory: 12Q}", "resources.memory",
     '"12Q" is not a size (use 128M, 1G, 512Mi)'),
    ("memory-too-small", "resources: {memory: 8M}", "resources.memory", "out of range (16Mi to 64Gi)"),
    ("memory-bare-number", "resources: {memory: 256}", "resources.memory",
     "256 is out of range (16Mi to 64Gi); a bare number is bytes: did you mean 256M?"),
    ("memory-bare-string", "resources: {memory: '2'}", "resources.memory", "did you mean 2G?"),
    ("disk-bare-number", "resources: {disk: 512}", "resources.disk", "did you mean 512M?"),
    ("cpu-millicores-without-m", "resources: {cpu: 500}", "resources.cpu",
     "a bare number is cores: did you mean 500m (0.5 cores)?"),
    ("stop-timeout-ms-without-unit", "run: {command: x, stop_timeout: 30000}", "run.stop_timeout",
     "a bare number is seconds: did you mean 30000ms?"),
    ("memory-too-big", "resources: {memory: 65G}", "resources.memory", "out of range"),
    ("memory-fraction-bytes", "resources: {memory: 1.5}", "resources.memory", "is not a size"),
    ("memory-bool", "resources: {memory: true}", "resources.memory", "is not a size"),
    ("memory-huge-digits", "resources: {memory: " + "9" * 40 + "G}", "resources.memory", "is not a size"),
    ("cpu-zero", "resources: {cpu: 0}", "resources.cpu", "out of range"),
    ("cpu-too-many", "resources: {cpu: 65}", "resources.cpu", "out of range"),
    ("cpu-negative", "resources: {cpu: -1}", "resources.cpu", "out of range"),
    ("cpu-word", "resources: {cpu: lots}", "resources.cpu", '"lots" is not a CPU amount'),
    ("cpu-inf", "resources: {cpu: .inf}", "resources.cpu", "is not a CPU amount"),
    ("pids-low", "resources: {pids: 1}", "resources.pids", "out of range (16 to 65536)"),
    ("duration-unit", "health: {interval: 10x}", "health.interval", '"10x" is not a duration'),
    ("duration-empty", "health: {interval: ''}", "health.interval", "is not a duration"),
    ("interval-too-short", "health: {interval: 500ms}", "health.interval", "out of range (1s to 3600s)"),
    ("interval-too-long", "health: {interval: 2h}", "health.interval", "out of range"),
    ("timeout-over-interval", "health: {interval: 5s, timeout: 6s}", "health.timeout",
     "6s must not exceed health.interval (5s)"),
    ("timeout-too-short", "health: {timeout: 10ms}", "health.timeout", "out of range (100ms"),
    ("start-period-long", "health: {start_period: 2h}", "health.start_period", "out of range"),
    ("path-relative", "health: {path: health}", "health.path", "must start with /"),
    ("path-space", "health: {path: '/a b'}", "health.path", "no whitespace"),
    ("path-number", "health: {path: 5}", "health.path", "must be a path, not an integer"),
    ("retries-zero", "health: {retries: 0}", "health.retries", "out of range (1 to 100)"),
    ("retries-big", "health: {retries: 101}", "health.retries", "out of range"),
    ("retries-text", "health: {retries: three}", "health.retries", "is not an integer"),
    ("retries-bool", "health: {retries: true}", "health.retries", "is not an integer"),
    ("name-invalid", "name: Hello_App", "name", "is not a valid app name"),
    ("name-too-long", "name: " + "a" * 41, "name", "at most 40 characters"),
    ("name-mismatch", "name: other", "name", '"other" does not match the App name "hello"'),
    ("name-number", "name: 12", "name", "must be a string"),
    ("runtime-bad", "runtime: 'Python 3'", "runtime", "is not a runtime name"),
    ("build-not-mapping", "build: [x]", "build", "must be a mapping, not a list"),
    ("build-null", "build:", "build", "must be a mapping, not null"),
    ("commands-string", "build: {commands: make}", "build.commands", "must be a list of strings"),
    ("command-empty", "build: {commands: [ok, '  ']}", "build.commands[1]", "must be a non-empty command"),
    ("command-number", "build: {commands: [1]}", "build.commands[0]", "must be a command, not an integer"),
    ("command-too-long", "build: {commands: [" + "x" * 4097 + "]}", "build.commands[0]", "at most 4096"),
    ("commands-too-many", "build: {commands: [" + ",".join(["x"] * 51) + "]}", "build.commands",
     "at most 50"),
    ("build-timeout", "build: {timeout: 3h}", "build.timeout", "out of range"),
    ("stop-timeout", "run: {command: x, stop_timeout: 11m}", "run.stop_timeout", "out of range"),
    ("port-zero", "run: {command: x, port: 0}", "run.port", "out of range (1 to 65535)"),
    ("port-big", "run: {command: x, port: 70000}", "run.port", "out of range"),
    ("port-text", "run: {command: x, port: '80'}", "run.port", "is not an integer"),
    ("run-missing", "name: hello", "run", "field required"),
    ("run-command-missing", "run: {port: 8000}", "run.command", "field required"),
    ("run-command-empty", "run: {command: ''}", "run.command", "must be a non-empty command"),
    ("run-command-list", "run: {command: [a]}", "run.command", "must be a command, not a list"),
    ("env-not-mapping", "env: [A=1]", "env", "must be a mapping"),
    ("env-bad-name", "env: {1A: x}", "env.1A", "is not a valid environment variable name"),
    ("env-bool", "env: {DEBUG: yes}", "env.DEBUG", "a boolean value; quote it"),
    ("env-null", "env: {DEBUG: }", "env.DEBUG", "null value; quote it"),
    ("env-nested", "env: {A: {b: c}}", "env.A", "must be a string"),
    ("env-port", "env: {PORT: '1'}", "env.PORT", "PORT is set by the platform"),
]


@pytest.mark.parametrize(("body", "path", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_manifest_one_clear_error(body: str, path: str, message: str) -> None:
    """Each bad manifest yields exactly one error with the right path and a clear message."""
    text = body + "\n" + ("" if body.startswith("run:") or path == "run" else RUN)
    with pytest.raises(Invalid) as exc:
        parse_manifest(text, app_name="hello")
    assert exc.value.details == [{"path": path, "message": exc.value.details[0]["message"]}]
    assert message in exc.value.details[0]["message"]
    assert exc.value.message.startswith(f"invalid forge.yaml: {path}: ")
    assert "Traceback" not in exc.value.message


@pytest.mark.parametrize(
    "body",
    ["resources: {memory: 8M}", "resources: {memory: 999999999999999}", "resources: {cpu: 99999}",
     "health: {interval: 500ms}"],
    ids=["has-a-unit", "no-unit-fits", "not-millicores-either", "duration-with-unit"],
)
def test_no_unit_hint_where_no_unit_helps(body: str) -> None:
    """"did you mean" only for a bare number that a unit puts in range."""
    with pytest.raises(Invalid) as exc:
        parse_manifest(body + "\n" + RUN, app_name="hello")
    assert "out of range" in exc.value.message and "did you mean" not in exc.value.message


DOC_ERRORS = [
    ("empty", "", "is empty"),
    ("only-comment", "# nothing\n", "is empty"),
    ("null-root", "~\n", "is empty"),
    ("list-root", "- a\n- b\n", "root must be a mapping, not a list"),
    ("scalar-root", "hello\n", "root must be a mapping, not a string"),
    ("two-docs", RUN + "---\n" + RUN, "exactly one YAML document"),
    ("anchor", "run: &r {command: x}\n", "anchors and aliases are not allowed"),
    ("alias", "a: &x 1\nrun: {command: *x}\n", "anchors and aliases are not allowed"),
    ("billion-laughs", 'a: &a ["lol","lol"]\nb: &b [*a,*a,*a]\nc: &c [*b,*b,*b]\n' + RUN,
     "anchors and aliases"),
    ("merge-key-alias", "base: &b {command: x}\nrun: {<<: *b}\n", "anchors and aliases"),
    ("syntax", "run: {command: x\n", "invalid YAML at line 2, column 1"),
    ("bad-indent", "run:\n  command: x\n port: 1\n", "invalid YAML at line 3"),
    ("duplicate-key", RUN + RUN, "line 2, column 1: duplicate key 'run'"),
    ("python-tag", "run: !!python/object:os.system {command: x}\n", "invalid YAML at line 1"),
    ("too-deep", "a: " + "[" * 20 + "]" * 20 + "\n" + RUN, "nests deeper than 16"),
    ("too-big", RUN + "# " + "x" * 70_000 + "\n", "the limit is 65536 (64 KiB)"),
    ("not-utf8", b"run: {command: \xff}\n", "not UTF-8"),
]


@pytest.mark.parametrize(("text", "message"), [d[1:] for d in DOC_ERRORS], ids=[d[0] for d in DOC_ERRORS])
def test_document_level_errors(text: str | bytes, message: str) -> None:
    """Malformed or dangerous documents are refused with one clear, traceback-free error."""
    with pytest.raises(Invalid) as exc:
        parse_manifest(text)
    assert len(exc.value.details) == 1
    assert message in exc.value.message


def test_size_cap_applies_before_parsing() -> None:
    """Oversized input is refused by its length even when it is not valid YAML at all."""
    with pytest.raises(Invalid, match="64 KiB"):
        parse_manifest(b"{" * (64 * 1024 + 1))


def test_several_problems_listed_first_named() -> None:
    """All problems are reported; the message names the first and counts the rest."""
    with pytest.raises(Invalid) as exc:
        parse_manifest("resources: {memory: 12Q, cpu: 0}\nbuild: {comands: []}\nrun: {}\n")
    paths = [d["path"] for d in exc.value.details]
    assert paths == ["resources.memory", "resources.cpu", "build.comands", "run.command"]
    assert exc.value.message == ('invalid forge.yaml: resources.memory: "12Q" is not a size '
                                 "(use 128M, 1G, 512Mi) (and 3 more)")


def test_name_checked_only_against_given_app() -> None:
    """A valid name passes when no App name is given, and must match when one is."""
    assert parse_manifest("name: other\n" + RUN).name == "other"
    assert parse_manifest("name: hello\n" + RUN, app_name="hello").name == "hello"


def test_process_types_cron_release_and_storage() -> None:
    """processes inherit resources and env field by field; cron, release and storage normalise."""
    m = parse_manifest(b"""
run: {command: gunicorn app:app}
resources: {memory: 256M, cpu: 1}
env: {A: top}
processes:
  worker: {command: python -m app.worker, replicas: 2, resources: {memory: 512M}, env: {B: w}, min_running: 5s}
cron:
  - {name: nightly-report, schedule: "0 3 * * *", command: python -m app.report, timeout: 30m}
  - {name: hourly, schedule: "@hourly", command: "true", timezone: Europe/Paris}
release: {command: python manage.py migrate --noinput, timeout: 10m}
storage: {size: 5G}
""")
    w = m.processes["worker"]
    assert (w.replicas, w.resources.memory, w.resources.cpu, w.env, w.min_running_seconds) == (2, 512 * MiB, 1.0, {"B": "w"}, 5)
    assert [(c.name, c.schedule, c.timeout_seconds, c.timezone) for c in m.cron] == [
        ("nightly-report", "0 3 * * *", 1800, "UTC"), ("hourly", "@hourly", 1800, "Europe/Paris")]
    assert m.release is not None and m.release.timeout_seconds == 600
    assert m.storage is not None and m.storage.size == 5 * GiB
    assert Manifest.from_status(m.to_status()) == m


@pytest.mark.parametrize(("text", "path", "message"), [
    ("processes: {web: {command: x}}", "processes.web", "reserved"),
    ("processes: {Worker_1: {command: x}}", "processes.Worker_1", "not a process type name"),
    ("processes: {w: {comand: x}}", "processes.w.comand", "unknown field"),
    ("processes: {w: {command: x, replicas: 101}}", "processes.w.replicas", "out of range"),
    ("cron: [{name: a, schedule: '61 * * * *', command: x}]", "cron[0].schedule", "not a valid cron expression"),
    ("cron: [{name: a, schedule: '* * * * * *', command: x}]", "cron[0].schedule", "not a 5-field cron expression"),
    ("cron: [{name: a, schedule: '@fortnightly', command: x}]", "cron[0].schedule", "not a schedule shortcut"),
    ("cron: [{name: a, schedule: '@daily', command: x, timezone: Mars/Base}]", "cron[0].timezone", "not a known time zone"),
    ("cron: [{name: a, schedule: '@daily', command: x}, {name: a, schedule: '@daily', command: y}]", "cron[1].name",
     "used by another cron job"),
    ("cron: {name: a}", "cron", "must be a list"),
    ("release: {command: ''}", "release.command", "non-empty"),
    ("storage: {size: 1M}", "storage.size", "out of range"),
    ("storage: {}", "storage.size", "field required"),
])
def test_process_type_errors_name_the_field(text: str, path: str, message: str) -> None:
    with pytest.raises(Invalid) as exc:
        parse_manifest((text + "\n" + RUN).encode())
    assert any(d["path"] == path and message in d["message"] for d in exc.value.details), exc.value.details
