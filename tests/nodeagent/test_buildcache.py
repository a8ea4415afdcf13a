"""The per-App build cache: the LRU rule, disk GC's pruning, the dirs' ownership, a build's
view of it in the real sandbox (its own cache only), and the install steps' hit/miss logic run
for real with ``sh`` (no registry needed: empty dependency sets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forge import buildsteps
from forge.nodeagent import buildcache
from forge.nodeagent.buildcache import Entry, entries_to_remove
from forge.nodeagent.sandbox import BUILD_CACHE_PATH, Sandbox
from tests.nodeagent.test_sandbox import DRIVER, data_dir, needs_all, out, release, spec_for  # noqa: F401


@pytest.mark.parametrize(
    ("sizes", "limit", "removed"),
    [
        ({"a/env/1": (1.0, 50), "a/env/2": (2.0, 50)}, 100, []),
        ({"a/env/1": (1.0, 50), "a/env/2": (2.0, 60)}, 100, ["a/env/1"]),
        ({"a/env/1": (3.0, 50), "b/pip": (1.0, 40), "b/env/9": (2.0, 70)}, 60, ["b/pip", "b/env/9"]),
        ({"a/env/1": (1.0, 500)}, 100, ["a/env/1"]),
        ({}, 0, []),
    ],
    ids=["fits", "oldest-goes", "across-apps-lru", "one-too-big", "empty"],
)
def test_lru_rule(sizes: dict[str, tuple[float, int]], limit: int, removed: list[str]) -> None:
    """Least recently used entries go first, only until the rest fits the limit."""
    entries = [Entry(p, t, s) for p, (t, s) in sizes.items()]
    assert [e.path for e in entries_to_remove(entries, limit)] == removed


def _entry(root: Path, rel: str, size: int, used: float) -> None:
    p = root / rel
    p.mkdir(parents=True)
    (p / "blob").write_bytes(b"x" * size)
    os.utime(p, (used, used))


def test_prune_removes_least_recently_used_and_never_follows_links(tmp_path: Path) -> None:
    """Disk GC's pass removes the oldest entries beyond the limit; a planted link is not followed."""
    root = tmp_path / "buildcache"
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "keep").write_bytes(b"k" * 5000)
    _entry(root, "a/env/old", 4000, 1000.0)
    _entry(root, "a/env/new", 4000, 3000.0)
    _entry(root, "b/env/mid", 4000, 2000.0)
    (root / "b" / "env" / "link").symlink_to(victim)
    os.utime(root / "a", (500.0, 500.0))
    os.utime(root / "b", (2500.0, 2500.0))
    removed = buildcache.prune(root, limit=9000)
    assert [e.path for e in removed] == ["a/env/old"]
    assert not (root / "a/env/old").exists() and (root / "a/env/new").exists() and (root / "b/env/mid").exists()
    assert (victim / "keep").exists()
    buildcache.prune(root, limit=0)
    assert not any((root / "a" / "env").iterdir()) and (victim / "keep").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own dirs as an app uid")
def test_app_dir_is_owned_by_the_app_and_private(tmp_path: Path) -> None:
    """DATA/buildcache is 0711 root, each App's dir 0700 its uid; a planted symlink is replaced."""
    (tmp_path / "buildcache").mkdir()
    (tmp_path / "buildcache" / "beta").symlink_to("/etc")
    path = Path(buildcache.ensure_app_dir(tmp_path, "beta", 50123, 50123))
    st = os.lstat(path)
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (50123, "0o700") and not path.is_symlink()
    assert oct((tmp_path / "buildcache").stat().st_mode & 0o777) == "0o701"


@needs_all
def test_a_build_sees_only_its_own_apps_cache(release, data_dir: Path) -> None:  # noqa: F811
    """In the sandbox the App's cache is writable at /forge-cache; another App's cache is not there."""
    wd, uid = release("alpha")
    _, beta_uid = release("beta")
    mine = buildcache.ensure_app_dir(data_dir, "alpha", uid, uid)
    theirs = Path(buildcache.ensure_app_dir(data_dir, "beta", beta_uid, beta_uid))
    (theirs / "env").mkdir()
    os.chown(theirs / "env", beta_uid, beta_uid)
    probe = (
        f"echo mine > {BUILD_CACHE_PATH}/x && echo wrote-mine; "
        f"(echo evil > {theirs}/env/x) 2>/dev/null && echo wrote-theirs; "
        f"ls {theirs} >/dev/null 2>&1 && echo saw-theirs; true"
    )
    spec = spec_for(wd, uid, None, probe, app="alpha")
    spec.build_cache = mine
    assert Sandbox(DRIVER).run(spec, timeout=20) == 0
    assert out(spec).split() == ["wrote-mine"]
    assert (Path(mine) / "x").read_text() == "mine\n" and not (theirs / "env" / "x").exists()


def _sh(script: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(cwd),
           "FORGE_BUILD_CACHE": str(cache)}
    return subprocess.run(["sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_python_step_misses_then_hits_and_relocates_the_venv(tmp_path: Path) -> None:
    """First build installs and stores .venv; the next release copies it, scripts aimed at itself."""
    cache = tmp_path / "cache"
    cache.mkdir()
    step = buildsteps.python_install("pip", "requirements.txt", None, None)
    first, second = tmp_path / "r1", tmp_path / "r2"
    for d in (first, second):
        d.mkdir()
        (d / "requirements.txt").write_text("# nothing to install\n")
    one = _sh(step, first, cache)
    assert one.returncode == 0, one.stderr
    assert "build cache miss" in one.stdout and "stored Python" in one.stdout
    two = _sh(step, second, cache)
    assert two.returncode == 0, two.stderr
    assert "build cache hit" in two.stdout and "stored" not in two.stdout
    assert (second / ".venv" / "bin" / "pip").read_text().splitlines()[0] == f"#!{second}/.venv/bin/python"
    ran = subprocess.run([str(second / ".venv/bin/pip"), "--version"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and str(second / ".venv") in ran.stdout
    (second / "requirements.txt").write_text("# changed\n")  # another dependency set: another key
    third = _sh(step, second, cache)
    assert "build cache miss" in third.stdout
    assert len(list((cache / "env").iterdir())) == 2


def test_python_version_mismatch_names_both(tmp_path: Path) -> None:
    """A .python-version the node cannot satisfy fails, naming the file, wanted and installed."""
    (tmp_path / "requirements.txt").write_text("")
    step = buildsteps.python_install("pip", "requirements.txt", "3.99", ".python-version")
    done = _sh(step, tmp_path, tmp_path / "no-cache")
    have = ".".join(map(str, sys.version_info[:2]))
    assert done.returncode == 1
    assert "Python 3.99 is asked for by .python-version but this node has Python" in done.stderr
    assert f"python{have}" in done.stderr or f"Python {have}" in done.stderr


def test_node_engines_mismatch_names_both(tmp_path: Path) -> None:
    """engines.node the node cannot satisfy fails with both versions."""
    if subprocess.run(["sh", "-c", "command -v node"], capture_output=True).returncode != 0:
        pytest.skip("needs node")
    (tmp_path / "package.json").write_text("{}")
    step = buildsteps.node_install("npm", "package.json", 99, ">=", ">=99")
    done = _sh(step, tmp_path, tmp_path / "no-cache")
    assert done.returncode == 1 and "Node >=99 is asked for by package.json engines.node but this node has Node" in done.stderr


def test_included_requirements_change_the_key_and_local_code_is_never_reused(tmp_path: Path) -> None:
    """A change in a -r file is another dependency set; -e . installs are never reused."""
    cache = tmp_path / "cache"
    cache.mkdir()
    rel = tmp_path / "r"
    rel.mkdir()
    (rel / "requirements.txt").write_text("-r base.txt\n")
    (rel / "base.txt").write_text("# v1\n")
    step = buildsteps.python_install("pip", "requirements.txt", None, None, ("base.txt",))
    assert "build cache miss" in _sh(step, rel, cache).stdout
    assert "build cache hit" in _sh(step, rel, cache).stdout
    (rel / "base.txt").write_text("# v2\n")
    assert "build cache miss" in _sh(step, rel, cache).stdout
    local = buildsteps.python_install("pip", "requirements.txt", None, None, reusable=False)
    for _ in range(2):
        done = _sh(local, rel, cache)
        assert done.returncode == 0 and "hit" not in done.stdout and "no reuse" in done.stdout


def test_an_entry_pruned_during_the_copy_falls_back_to_installing(tmp_path: Path) -> None:
    """A hit whose copy fails (the entry removed meanwhile) installs instead of failing the build."""
    cache = tmp_path / "cache"
    cache.mkdir()
    rel = tmp_path / "r"
    rel.mkdir()
    (rel / "requirements.txt").write_text("")
    step = buildsteps.python_install("pip", "requirements.txt", None, None)
    assert _sh(step, rel, cache).returncode == 0
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "cp").write_text('#!/bin/sh\ncase "$*" in *"/env/py-"*" .venv") exit 1;; esac\nexec /bin/cp "$@"\n')
    (shim / "cp").chmod(0o755)  # the copy out of the cache fails, as on an entry vanishing under it
    done = _sh(f'export PATH="{shim}:$PATH"\n' + step, rel, cache)
    assert done.returncode == 0, done.stderr
    assert "build cache hit" not in done.stdout and (rel / ".venv" / "bin" / "python").exists()
