"""forge.detect: the zero-config rule, a pure function of a commit's root files."""

from __future__ import annotations

import pytest

from forge.detect import DetectionFailed, detect, node_major, parse_procfile, resolve_manifest
from forge.errors import Invalid

FLASK = {"requirements.txt": b"Flask==3.0.3\ngunicorn==22.0.0\n", "app.py": b"app = 1\n"}
DJANGO_MANAGE = b"os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"


@pytest.mark.parametrize(
    ("files", "language", "installer", "dep_file"),
    [
        ({"requirements.txt": b"x\n"}, "python", "pip", "requirements.txt"),
        ({"pyproject.toml": b"[project]\nname='a'\n", "uv.lock": b""}, "python", "uv", "uv.lock"),
        ({"pyproject.toml": b"", "poetry.lock": b""}, "python", "poetry", "poetry.lock"),
        ({"pyproject.toml": b"", "pdm.lock": b""}, "python", "pdm", "pdm.lock"),
        ({"Pipfile": b"", "Pipfile.lock": b'{"default": {}}'}, "python", "pipenv", "Pipfile.lock"),
        ({"package.json": b"{}", "package-lock.json": b"{}"}, "node", "npm", "package-lock.json"),
        ({"package.json": b"{}", "pnpm-lock.yaml": b""}, "node", "pnpm", "pnpm-lock.yaml"),
        ({"package.json": b"{}", "yarn.lock": b""}, "node", "yarn", "yarn.lock"),
        ({"package.json": b"{}"}, "node", "npm", "package.json"),
        # a lockfile of a tool whose manifest is missing is not a Python project
        ({"uv.lock": b"", "package.json": b"{}"}, "node", "npm", "package.json"),
    ],
    ids=[
        "pip",
        "uv",
        "poetry",
        "pdm",
        "pipenv",
        "npm-ci",
        "pnpm",
        "yarn",
        "bare-package-json",
        "stray-uv-lock",
    ],
)
def test_language_and_installer(files, language, installer, dep_file) -> None:
    """Each dependency file picks its language and installer, and the notes say which file."""
    plan = detect(files)
    assert (plan.language, plan.installer, plan.dependency_file) == (language, installer, dep_file)
    assert dep_file in plan.notes[0]


@pytest.mark.parametrize(
    ("files", "names"),
    [
        ({"requirements.txt": b"", "Pipfile.lock": b"{}"}, ("requirements.txt", "Pipfile.lock")),
        ({"pyproject.toml": b"", "uv.lock": b"", "poetry.lock": b""}, ("uv.lock", "poetry.lock")),
        (
            {"package.json": b"{}", "package-lock.json": b"", "yarn.lock": b""},
            ("package-lock.json", "yarn.lock"),
        ),
        ({"package.json": b"{}", "pnpm-lock.yaml": b"", "yarn.lock": b""}, ("pnpm-lock.yaml", "yarn.lock")),
        (
            {"requirements.txt": b"", "package.json": b"{}", "package-lock.json": b""},
            ("requirements.txt", "package-lock.json"),
        ),
    ],
    ids=["req+pipfile", "uv+poetry", "npm+yarn", "pnpm+yarn", "python+node"],
)
def test_conflicting_files_are_named(files, names) -> None:
    """Two dependency files fail detection with a message naming both."""
    with pytest.raises(DetectionFailed) as exc:
        detect(files)
    assert all(n in exc.value.message for n in names)


@pytest.mark.parametrize(
    ("files", "run"),
    [
        (FLASK, "gunicorn app:app --bind 0.0.0.0:$PORT"),
        (
            {"requirements.txt": b"django\ngunicorn\n", "manage.py": DJANGO_MANAGE},
            "gunicorn mysite.wsgi --bind 0.0.0.0:$PORT",
        ),
        (
            {"requirements.txt": b"fastapi\nuvicorn[standard]\n", "main.py": b""},
            "uvicorn main:app --host 0.0.0.0 --port $PORT",
        ),
        ({"package.json": b'{"scripts": {"start": "node index.js"}}'}, "npm start"),
        ({"package.json": b"{}", "server.js": b""}, "npm start"),
    ],
    ids=["flask", "django", "fastapi", "npm-start", "server-js"],
)
def test_default_run_commands(files, run) -> None:
    """Without a Procfile: gunicorn for Django/Flask that have it, uvicorn for FastAPI, npm start."""
    plan = detect(files)
    assert plan.run is not None and plan.run.endswith(run)
    assert plan.run.startswith('export PATH="$PWD/')


def test_flask_without_gunicorn_has_no_default() -> None:
    """A Flask app that does not depend on gunicorn gets no guessed server: a Procfile is needed."""
    plan = detect({"requirements.txt": b"flask\n", "app.py": b""})
    assert plan.run is None
    with pytest.raises(DetectionFailed, match="Procfile with a web: line"):
        resolve_manifest(None, {"requirements.txt": b"flask\n", "app.py": b""}, "hello")


def test_procfile_lines() -> None:
    """web is run, release the release phase, every other line a process type."""
    files = {
        **FLASK,
        "Procfile": b"# comment\n\nweb: gunicorn app:app\nrelease: ./migrate\nworker: celery -A t worker\nclock: python clock.py\n",
    }
    m = resolve_manifest(None, files, "hello")
    assert m.run.command.endswith("gunicorn app:app")
    assert m.release is not None and m.release.command.endswith("./migrate")
    assert sorted(m.processes) == ["clock", "worker"]
    assert any(n == "Procfile: web, release, worker, clock" for n in m.build.detected)


@pytest.mark.parametrize(
    "text", ["web gunicorn", "web:", "web: a\nweb: b"], ids=["no-colon", "empty-command", "twice"]
)
def test_bad_procfile_is_refused(text) -> None:
    """A malformed Procfile names its line."""
    with pytest.raises(DetectionFailed, match="Procfile line"):
        parse_procfile(text)


def test_procfile_name_must_be_a_process_type() -> None:
    """A Procfile type that is not a DNS label fails validation with its path."""
    with pytest.raises(Invalid, match="processes.my_worker"):
        resolve_manifest(None, {**FLASK, "Procfile": b"web: x\nmy_worker: y\n"}, "hello")


def test_forge_yaml_wins_field_by_field() -> None:
    """forge.yaml's run, release and a same-named process type win over the Procfile's."""
    yaml_text = b"run:\n  command: mine\nrelease:\n  command: rel\nprocesses:\n  worker:\n    command: w2\n"
    files = {**FLASK, "Procfile": b"web: theirs\nrelease: theirs\nworker: w1\nother: o\n"}
    m = resolve_manifest(yaml_text, files, "hello")
    assert (m.run.command, m.release.command if m.release else None) == ("mine", "rel")
    assert m.processes["worker"].command == "w2" and m.processes["other"].command.endswith("o")
    assert m.build.commands and m.build.detected


@pytest.mark.parametrize(
    ("files", "version"),
    [
        ({".python-version": b"3.12\n"}, "3.12"),
        ({"runtime.txt": b"python-3.11.7\n"}, "3.11.7"),
        ({".python-version": b"3.10.4", "runtime.txt": b"python-3.12"}, "3.10.4"),
    ],
    ids=["python-version", "runtime-txt", "python-version-first"],
)
def test_python_version_is_checked_in_the_build(files, version) -> None:
    """The asked-for Python is checked by the build step on the node, naming the file."""
    plan = detect({"requirements.txt": b"x", **files})
    assert plan.version == version
    step = plan.build[0]
    assert f"Python {version} is asked for by" in step and "this node has Python $V" in step


@pytest.mark.parametrize("bad", ["latest", "python 3", "2.7.x"], ids=["word", "space", "py2"])
def test_bad_python_version_is_refused(bad) -> None:
    """A .python-version that is not a Python 3 version fails detection naming the file."""
    with pytest.raises(DetectionFailed, match=".python-version"):
        detect({"requirements.txt": b"x", ".python-version": bad.encode()})


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("20", (20, "=")),
        ("20.x", (20, "=")),
        ("^18.2.0", (18, "=")),
        ("~20.1", (20, "=")),
        (">= 18", (18, ">=")),
    ],
)
def test_node_engines(spec, want) -> None:
    """engines.node reduces to a major version and a comparison."""
    assert node_major(spec) == want


def test_node_engines_unknown_range_is_refused() -> None:
    """A range Forge cannot check is refused rather than guessed."""
    with pytest.raises(DetectionFailed, match="engines.node"):
        detect({"package.json": b'{"engines": {"node": "18 || 20"}}'})


def test_nothing_to_detect() -> None:
    """A repository with nothing Forge knows fails with a hint, pyproject without a lock included."""
    with pytest.raises(DetectionFailed, match="pyproject.toml without a lockfile"):
        detect({"pyproject.toml": b""})


def test_forge_yaml_without_build_or_dependency_files_runs_as_written() -> None:
    """A forge.yaml with only run.command and nothing to install stays as it was: no build."""
    m = resolve_manifest(b"run:\n  command: python3 -m http.server $PORT\n", {"app.py": b""}, "hello")
    assert m.build.commands == [] and m.build.detected == [] and m.run.command.startswith("python3")


@pytest.mark.parametrize(
    ("text", "refs", "local"),
    [
        ("flask\n-r base.txt\n--constraint=c.txt\n", ("base.txt", "c.txt"), False),
        ("-e .\n", (), True),
        ("./libs/mine\n", (), True),
        ("mine @ file:///src/mine\n", (), True),
        ("flask==3.0  # pinned\n", (), False),
    ],
    ids=["includes", "editable", "path", "file-url", "plain"],
)
def test_requirements_includes_and_local_code(text, refs, local) -> None:
    """Included files join the cache key; installing the repo's own code turns reuse off."""
    from forge.detect import requirement_refs

    assert requirement_refs(text) == (refs, local)
    step = detect({"requirements.txt": text.encode()}).build[0]
    assert all(f" {r}" in step.split("KEY=")[1].split("\n")[0] for r in refs)
    assert ("no reuse" in step) == local
