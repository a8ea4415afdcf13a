"""Zero-config builds: what a repository is and how to build and run it, without a ``forge.yaml``.

One rule, one place. ``detect(files)`` is a pure function of the small files at the root of a
commit (``DETECT_FILES``, name → bytes, absent files left out) and returns a ``BuildPlan``: the
build commands, the run command, a release command and process types (from a ``Procfile``), and
``notes`` — the sentences the build log starts with (what was detected and why). Problems raise
``Invalid`` naming the files involved.

Order (the first match decides the language; two dependency files of one language conflict):

1. Python — ``requirements.txt``; ``pyproject.toml`` with ``uv.lock``, ``poetry.lock`` or
   ``pdm.lock``; ``Pipfile.lock``. The interpreter version comes from ``.python-version``, then
   ``runtime.txt`` (``python-3.11.7``), then ``requires-python`` is *not* used (a range says what
   works, not what to run).
2. Node — ``package-lock.json`` (``npm ci``), ``pnpm-lock.yaml``, ``yarn.lock``, a bare
   ``package.json`` (``npm install``); the version from ``engines.node``.

A repository with both a Python and a Node dependency set is refused, naming the files:
guessing wrong costs a broken deploy, and a ``forge.yaml`` with ``build.commands`` settles it.

``resolve_manifest`` is what the source controller calls: a ``forge.yaml`` with ``build`` is
taken as written (no detection); otherwise the detected plan fills in, and every field the
``forge.yaml`` gives (``run``, ``release``, a process type, ``env``, ``resources``…) wins over
the Procfile's and the defaults.

The run command: the Procfile's ``web:`` line; without one, ``gunicorn`` for a Django or Flask
app that depends on it, ``uvicorn`` for FastAPI, ``npm start`` for Node (which needs
``scripts.start`` or a ``server.js``). Every command runs with the app's tools on ``PATH``
(``.venv/bin``, ``node_modules/.bin``) and ``$PORT`` set by the platform.

The install steps themselves (and the per-App build cache they use) are ``forge.buildsteps``.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from forge import buildsteps
from forge.errors import Invalid
from forge.manifest import Manifest, load_yaml, parse_manifest, validate_data

PY_LOCKS: tuple[tuple[str, str], ...] = (
    ("uv.lock", "uv"),
    ("poetry.lock", "poetry"),
    ("pdm.lock", "pdm"),
)
NODE_LOCKS: tuple[tuple[str, str], ...] = (
    ("package-lock.json", "npm"),
    ("pnpm-lock.yaml", "pnpm"),
    ("yarn.lock", "yarn"),
)
DETECT_FILES: tuple[str, ...] = (
    "requirements.txt",
    "pyproject.toml",
    "uv.lock",
    "poetry.lock",
    "pdm.lock",
    "Pipfile",
    "Pipfile.lock",
    ".python-version",
    "runtime.txt",
    "package.json",
    "package-lock.json",
    "pnpm-lock.yaml",
    "yarn.lock",
    "Procfile",
    "manage.py",
    "app.py",
    "main.py",
    "wsgi.py",
    "asgi.py",
)
MAX_FILE = 4 * 2**20  # lockfiles larger than this are hashed on the node, never parsed here
_PROC_LINE = re.compile(r"^([A-Za-z0-9_-]+)\s*:\s*(.*)$")
_PY_VERSION = re.compile(r"^(?:python-?)?(3(?:\.\d+){0,2})$")
_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_][\w]*)\.settings""")


@dataclass(frozen=True)
class BuildPlan:
    language: str  # python | node
    installer: str  # pip | uv | poetry | pdm | pipenv | npm | pnpm | yarn
    dependency_file: str  # the file whose hash keys the build cache
    version: str | None  # the interpreter version asked for, None: the node's default
    build: list[str]
    run: str | None  # None: nothing to run was found (an error unless forge.yaml gives run.command)
    release: str | None = None
    processes: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def manifest_data(self) -> dict[str, Any]:
        """This plan as forge.yaml-shaped data (``forge.manifest.validate_data`` checks it)."""
        out: dict[str, Any] = {"build": {"commands": list(self.build)}}
        if self.run is not None:
            out["run"] = {"command": self.run}
        if self.release is not None:
            out["release"] = {"command": self.release}
        if self.processes:
            out["processes"] = {k: {"command": v} for k, v in self.processes.items()}
        return out


class DetectionFailed(Invalid):
    """No build could be detected, or the repository's files contradict each other."""

    reason = "DetectionFailed"


def _fail(message: str) -> DetectionFailed:
    return DetectionFailed(f"build detection: {message}")


def wants_detection(yaml_text: bytes | None) -> bool:
    """Whether a commit's build is detected: no forge.yaml, or one that leaves ``build`` out."""
    if yaml_text is None:
        return True
    try:
        return "build" not in load_yaml(yaml_text)
    except Invalid:
        return False  # parse_manifest reports it


def has_dependency_files(files: Mapping[str, bytes]) -> bool:
    """Whether ``files`` hold anything a build could be detected from."""
    locks = [lock for lock, _ in (*PY_LOCKS, *NODE_LOCKS)]
    return any(n in files for n in ("requirements.txt", "Pipfile.lock", "package.json", *locks))


def read_files(read: Callable[[str], bytes | None]) -> dict[str, bytes]:
    """``DETECT_FILES`` present at a commit, through ``read(path)`` (None: absent)."""
    out: dict[str, bytes] = {}
    for name in DETECT_FILES:
        data = read(name)
        if data is not None:
            out[name] = data
    return out


def resolve_manifest(yaml_text: bytes | None, files: Mapping[str, bytes], app: str | None) -> Manifest:
    """The commit's manifest: forge.yaml as written when it has ``build``, else the detected plan
    with forge.yaml's fields on top. ``Invalid`` (``DetectionFailed`` for detection problems)."""
    if yaml_text is not None and (not wants_detection(yaml_text) or not has_dependency_files(files)):
        return parse_manifest(yaml_text, app)  # as written: a build of its own, or nothing to install
    data: dict[str, Any] = dict(load_yaml(yaml_text)) if yaml_text is not None else {}
    plan = detect(files)
    merged = {**plan.manifest_data(), **data}
    if isinstance(data.get("processes"), dict):
        merged["processes"] = {**plan.manifest_data().get("processes", {}), **data["processes"]}
    if "run" not in merged:
        raise _fail(f"{'; '.join(plan.notes)}. Nothing to run: add a Procfile with a web: line")
    manifest = validate_data(merged, app)
    manifest.build.detected = list(plan.notes)
    return manifest


def _text(files: Mapping[str, bytes], name: str) -> str:
    return files[name][:MAX_FILE].decode("utf-8", "replace")


def parse_procfile(text: str) -> dict[str, str]:
    """``name: command`` lines (Heroku/Dokku/piku); comments and blank lines skipped."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PROC_LINE.match(line)
        if not m or not m.group(2).strip():
            raise _fail(f"Procfile line {n}: expected 'name: command', got {line[:80]!r}")
        name = m.group(1)
        if name in out:
            raise _fail(f"Procfile line {n}: process type {name!r} is defined twice")
        out[name] = m.group(2).strip()
    return out


def detect(files: Mapping[str, bytes]) -> BuildPlan:
    """The build plan for a commit whose root holds ``files`` (name → contents); ``Invalid``."""
    python = [n for n in ("requirements.txt", "Pipfile.lock") if n in files]
    if "pyproject.toml" in files:
        python += [lock for lock, _ in PY_LOCKS if lock in files]
    node = [lock for lock, _ in NODE_LOCKS if lock in files]
    if python and node:
        raise _fail(
            f"both Python ({', '.join(python)}) and Node ({', '.join(node)}) dependency files; "
            "keep one or say how to build in forge.yaml (build.commands)"
        )
    if len(python) > 1:
        raise _fail(f"conflicting dependency files {' and '.join(python)}: keep one of them")
    if len(node) > 1:
        raise _fail(f"conflicting lockfiles {' and '.join(node)}: keep one of them")
    procfile = parse_procfile(_text(files, "Procfile")) if "Procfile" in files else {}
    if python:
        plan = _python(files, python[0])
    elif node or "package.json" in files:
        plan = _node(files, node[0] if node else "package.json")
    else:
        hint = "pyproject.toml without a lockfile" if "pyproject.toml" in files else "nothing"
        raise _fail(
            f"no forge.yaml and no dependency file to detect a build from (found {hint}); "
            "add requirements.txt, a lockfile or package.json, or a forge.yaml"
        )
    return _with_procfile(plan, procfile)


def _with_procfile(plan: BuildPlan, procfile: dict[str, str]) -> BuildPlan:
    if not procfile:
        return plan
    prefix = buildsteps.path_prefix(plan.language)
    web = procfile.get("web")
    kept = [n for n in plan.notes if web is None or not n.startswith("run:")]
    notes = [*kept, f"Procfile: {', '.join(procfile)}"]
    run = prefix + web if web is not None else plan.run
    if web is not None:
        notes.append("run: the Procfile's web line")
    release = prefix + procfile["release"] if "release" in procfile else None
    procs = {k: prefix + v for k, v in procfile.items() if k not in ("web", "release")}
    return BuildPlan(
        plan.language,
        plan.installer,
        plan.dependency_file,
        plan.version,
        plan.build,
        run,
        release,
        procs,
        notes,
    )


# --------------------------------------------------------------------------- Python


def python_version(files: Mapping[str, bytes]) -> tuple[str | None, str | None]:
    """(version, the file that asked for it) from .python-version or runtime.txt."""
    for name in (".python-version", "runtime.txt"):
        if name in files:
            lines = [ln.strip() for ln in _text(files, name).splitlines() if ln.strip()]
            first = lines[0] if lines else ""
            m = _PY_VERSION.match(first)
            if not m:
                raise _fail(f"{name}: {first[:40]!r} is not a Python version (write 3.11 or 3.11.7)")
            return m.group(1), name
    return None, None


def _requirement_names(files: Mapping[str, bytes], dep_file: str) -> set[str]:
    """Lower-case distribution names the dependency file mentions (for picking a server)."""
    text = _text(files, dep_file).lower() if dep_file in files else ""
    if dep_file == "Pipfile.lock":
        try:
            return {k.lower() for k in json.loads(text).get("default", {})}
        except (ValueError, AttributeError):
            raise _fail("Pipfile.lock is not valid JSON") from None
    if dep_file in ("uv.lock", "poetry.lock", "pdm.lock"):
        return set(re.findall(r'^name\s*=\s*"([^"]+)"', text, re.M))
    return {re.split(r"[\s<>=!~\[;@]", ln.strip(), maxsplit=1)[0] for ln in text.splitlines() if ln.strip()}


def _python(files: Mapping[str, bytes], dep_file: str) -> BuildPlan:
    installer = {"requirements.txt": "pip", "Pipfile.lock": "pipenv", **dict(PY_LOCKS)}[dep_file]
    version, source = python_version(files)
    notes = [
        f"detected Python: {dep_file}"
        + (" with pyproject.toml" if dep_file in dict(PY_LOCKS) else "")
        + f" → {buildsteps.INSTALL_WORDS[installer]}",
        f"Python {version} (from {source})" if version else "Python: the node's python3 (no .python-version)",
    ]
    if dep_file in dict(PY_LOCKS):
        _check_pyproject(files)
    names = _requirement_names(files, dep_file)
    refs, local = requirement_refs(_text(files, dep_file)) if dep_file == "requirements.txt" else ((), False)
    build = [buildsteps.python_install(installer, dep_file, version, source, refs, reusable=not local)]
    run, why = _python_default(files, names)
    notes.append(why)
    prefix = buildsteps.path_prefix("python")
    return BuildPlan(
        "python", installer, dep_file, version, build, prefix + run if run else None, notes=notes
    )


def requirement_refs(text: str) -> tuple[tuple[str, ...], bool]:
    """(files requirements.txt includes with -r/-c, whether it installs local code: -e, paths)."""
    refs: list[str] = []
    local = False
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        m = re.match(r"^(?:-r|-c|--requirement|--constraint)[\s=]+(\S+)$", line)
        if m:
            refs.append(m.group(1))
        elif line.startswith(("-e", "--editable", ".", "/", "file:")) or "@ file:" in line:
            local = True
    return tuple(refs), local


def _check_pyproject(files: Mapping[str, bytes]) -> None:
    try:
        tomllib.loads(_text(files, "pyproject.toml"))
    except tomllib.TOMLDecodeError as exc:
        raise _fail(f"pyproject.toml is not valid TOML: {exc}") from None


def _python_default(files: Mapping[str, bytes], names: set[str]) -> tuple[str | None, str]:
    bind = "--bind 0.0.0.0:$PORT"
    if "django" in names and "gunicorn" in names and "manage.py" in files:
        m = _SETTINGS.search(_text(files, "manage.py"))
        if m:
            return f"gunicorn {m.group(1)}.wsgi {bind}", f"run: gunicorn (Django project {m.group(1)})"
    if "flask" in names and "gunicorn" in names:
        for mod in ("app", "wsgi", "main"):
            if f"{mod}.py" in files:
                return f"gunicorn {mod}:app {bind}", f"run: gunicorn {mod}:app (Flask)"
    if "fastapi" in names and "uvicorn" in names:
        for mod in ("main", "app", "asgi"):
            if f"{mod}.py" in files:
                return (
                    f"uvicorn {mod}:app --host 0.0.0.0 --port $PORT",
                    f"run: uvicorn {mod}:app (FastAPI)",
                )
    return None, "run: no default found (add a Procfile with a web: line)"


# --------------------------------------------------------------------------- Node


def _node(files: Mapping[str, bytes], dep_file: str) -> BuildPlan:
    if "package.json" not in files:
        raise _fail(f"{dep_file} without package.json")
    try:
        pkg = json.loads(_text(files, "package.json"))
    except ValueError as exc:
        raise _fail(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(pkg, dict):
        raise _fail("package.json must hold a JSON object")
    installer = dict(NODE_LOCKS).get(dep_file, "npm")
    engines: dict[str, Any] = pkg["engines"] if isinstance(pkg.get("engines"), dict) else {}
    want = engines.get("node") if isinstance(engines.get("node"), str) else None
    major, op = node_major(want) if want else (None, "")
    scripts: dict[str, Any] = pkg["scripts"] if isinstance(pkg.get("scripts"), dict) else {}
    notes = [
        f"detected Node: {dep_file} → {buildsteps.INSTALL_WORDS[installer if dep_file != 'package.json' else 'npm-install']}",
        f"Node {want} (from package.json engines.node)"
        if want
        else "Node: the node's node (no engines.node)",
    ]
    build = [buildsteps.node_install(installer, dep_file, major, op, want)]
    if isinstance(scripts.get("build"), str):
        build.append(
            buildsteps.path_prefix("node") + f"{installer if installer != 'yarn' else 'yarn'} run build"
        )
        notes.append("build: package.json scripts.build")
    run: str | None = None
    if isinstance(scripts.get("start"), str) or "server.js" in files:
        run = buildsteps.path_prefix("node") + "npm start"
        notes.append("run: npm start")
    else:
        notes.append("run: no scripts.start or server.js (add a Procfile with a web: line)")
    return BuildPlan("node", installer, dep_file, want, build, run, notes=notes)


def node_major(spec: str) -> tuple[int, str]:
    """``engines.node`` → (major, op): ``20``/``20.x``/``^20.1``/``~20`` → (20, "=");
    ``>=18`` → (18, ">="). Anything else is refused rather than guessed."""
    s = spec.strip().replace(" ", "")
    m = re.fullmatch(r"(>=|\^|~|=)?v?(\d+)(?:\.(?:\d+|x|\*))?(?:\.(?:\d+|x|\*))?", s)
    if not m:
        raise _fail(f"package.json engines.node {spec!r}: use 20, 20.x, ^20, ~20.1 or >=18")
    return int(m.group(2)), ">=" if m.group(1) == ">=" else "="
