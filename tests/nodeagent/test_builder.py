"""The builder with real git and the real sandbox: cached object store, shared builds, failures, timeouts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.cgroups import detect_driver
from forge.nodeagent.builder import REASON_BUILD_FAILED, REASON_FETCH_FAILED, Builder, BuildError, tail
from forge.nodeagent.logwriter import read_all
from forge.nodeagent.sandbox import Sandbox, SandboxSpec, UidAllocator
from forge.nodeagent.spec import RunSpec
from tests.nodeagent.test_agent_harness import CLOCK, NEEDS, make_repo

LIMITS = (256 * 1024 * 1024, 1.0, 256)


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"a\nb\n", "a\nb"), (b"".join(b"%d\n" % i for i in range(100)), "\n".join(str(i) for i in range(80, 100))),
     (b"x" * 5000 + b"\n", "x" * 2048)],
    ids=["short", "last-20-lines", "byte-capped"],
)
def test_tail(data: bytes, expected: str) -> None:
    """The failure message keeps the last 20 lines, at most 2 KB."""
    assert tail(data) == expected


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.commit = make_repo(tmp / "repos")
        self.driver = detect_driver(parent=f"forge-test-builder-{uuid.uuid4().hex[:8]}")
        uids = UidAllocator(tmp / "data" / "uids.json")
        self.builder = Builder(tmp / "data", f"file://{tmp}/repos/{{full_name}}.git", Sandbox(self.driver),
                               self.driver, CLOCK, SandboxSpec, lambda app: (uids.uid_for(app),) * 2)

    def build(self, instance: str, deployment: str, commands: list[str], timeout: float = 60,
              commit: str | None = None, repo: str = "acme/hello", ref: str = "") -> Path:
        run = RunSpec(build_commands=tuple(commands), build_timeout=timeout, command="true")
        return self.builder.ensure_built(instance, "hello", deployment, repo, commit or self.commit, run,
                                         {"PATH": "/usr/bin:/bin"}, LIMITS, self.tmp / "logs" / instance / "build.log",
                                         ref=ref)


@pytest.fixture
def rig() -> Iterator[Rig]:
    if not NEEDS:
        pytest.skip("needs root, git and bwrap")
    tmp = Path(tempfile.mkdtemp(prefix="forge-builder-"))
    r = Rig(tmp)
    yield r
    r.driver.remove_parent()
    shutil.rmtree(tmp, ignore_errors=True)


def test_build_fetches_once_per_repo_and_marks_release(rig: Rig) -> None:
    """The first build fetches into the cached store; a second release of the repo does not fetch again."""
    release = rig.build("hello-1-0", "hello-1", ["echo made > built.txt"])
    assert (release / "app.py").exists() and (release / "built.txt").read_text() == "made\n"
    assert rig.builder.marker(release).read_text().strip() == rig.commit
    assert not (release / ".forge-built").exists()  # nothing of the agent's in the app's tree
    assert os.stat(release).st_uid != 0, "the release belongs to the app's uid"
    cache = rig.tmp / "data" / "git" / "acme" / "hello.git"
    assert (cache / "shallow").exists(), "the fetch was shallow"
    packs_before = sorted(p.name for p in (cache / "objects").rglob("*") if p.is_file())
    rig.build("hello-2-0", "hello-2", [])
    packs_after = sorted(p.name for p in (cache / "objects").rglob("*") if p.is_file())
    assert packs_before == packs_after
    assert b"fetching" in read_all(rig.tmp / "logs" / "hello-2-0", "build")


def test_instances_of_one_deployment_share_a_build(rig: Rig) -> None:
    """Two Instances of one Deployment building at once run the build commands once."""
    results: list[Path] = []
    threads = [threading.Thread(target=lambda n=n: results.append(rig.build(n, "hello-3", ["echo run >> count.txt"])))
               for n in ("hello-3-0", "hello-3-1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2 and results[0] == results[1]
    assert (results[0] / "count.txt").read_text() == "run\n"


@pytest.mark.parametrize(
    ("commands", "timeout", "reason", "needle"),
    [
        (["echo one", "echo 'fatal: it broke' >&2; exit 4"], 60, REASON_BUILD_FAILED, "fatal: it broke"),
        (["sleep 30"], 1, REASON_BUILD_FAILED, "'sleep 30': the build ran out of time: build.timeout is 1s; raise it"),
    ],
    ids=["failing-command", "timeout"],
)
def test_build_failures(rig: Rig, commands: list[str], timeout: float, reason: str, needle: str) -> None:
    """A failing or overlong build command fails with BuildFailed, the output tail, and no marker or cgroup left."""
    with pytest.raises(BuildError) as exc:
        rig.build("hello-4-0", "hello-4", commands, timeout=timeout)
    assert exc.value.reason == reason and needle in exc.value.message
    assert not rig.builder.marker(rig.builder.release_dir("hello", "hello-4")).exists()
    assert not rig.driver.exists("build-hello-4-0")


def test_a_pull_request_head_is_fetched_by_its_ref(rig: Rig) -> None:
    """A commit that exists on the remote only as refs/pull/N/head (a fork's, on GitHub) is
    fetched by that ref, as the source controller fetches it (one fetch rule: forge.gitsource)."""
    repo = rig.tmp / "repos" / "acme" / "hello.git"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(rig.tmp), "GIT_CONFIG_NOSYSTEM": "1"}
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "checkout", "-q", "-b", "fork"], cwd=repo, env=env, check=True)
    (repo / "fork.txt").write_text("from a fork\n")
    subprocess.run([*git, "add", "fork.txt"], cwd=repo, env=env, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fork"], cwd=repo, env=env, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run(["git", "update-ref", "refs/pull/7/head", head], cwd=repo, env=env, check=True)
    subprocess.run([*git, "checkout", "-q", "main"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "branch", "-q", "-D", "fork"], cwd=repo, env=env, check=True)
    release = rig.build("hello-7-0", "hello-7", [], commit=head, ref="refs/pull/7/head")
    assert (release / "fork.txt").read_text() == "from a fork\n"
    cache = rig.tmp / "data" / "git" / "acme" / "hello.git"
    fetched = subprocess.run(["git", f"--git-dir={cache}", "for-each-ref", "--format=%(refname) %(objectname)"],
                             env=env, check=True, capture_output=True, text=True).stdout.split("\n")
    assert f"refs/forge/pull/7/head {head}" in fetched


def test_unknown_commit_is_a_fetch_failure(rig: Rig) -> None:
    """A commit the remote does not have fails the build with FetchFailed."""
    with pytest.raises(BuildError) as exc:
        rig.build("hello-5-0", "hello-5", [], commit="0" * 40)
    assert exc.value.reason == REASON_FETCH_FAILED


def test_build_env_has_no_agent_secrets(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Build commands see only the environment they are given, never the agent's."""
    monkeypatch.setenv("FORGE_NODE_TOKEN", "forge-node.x.leak")
    release = rig.build("hello-6-0", "hello-6", ["env > env.txt"])
    seen = (release / "env.txt").read_text()
    assert "leak" not in seen and "FORGE_NODE_TOKEN" not in seen


@pytest.mark.parametrize("plant", [
    "ln -s {canary} .forge-built",
    "mkfifo .forge-built",
    "ln {canary} .forge-built || ln -s {canary} .forge-built",  # a hard link, where the kernel allows it
    "ln -s {canary} built.marker && ln -s {canary_dir} sub",
], ids=["symlink", "fifo", "hardlink", "links-everywhere"])
def test_root_never_follows_what_the_build_planted(rig: Rig, plant: str) -> None:
    """A build (the app's uid) plants links and a FIFO where root used to write its marker: the
    build still completes, the marker lives outside the release, and a root-owned canary outside
    is untouched (content, mode, owner)."""
    canary_dir = rig.tmp / "root-only"
    canary_dir.mkdir(mode=0o755)
    canary = canary_dir / "admin-token"
    canary.write_text("secret-admin-token\n")
    os.chmod(canary, 0o600)
    before = (canary.read_text(), os.stat(canary).st_mode, os.stat(canary).st_uid)
    release = rig.build("hello-9-0", "hello-9", [plant.format(canary=canary, canary_dir=canary_dir)])
    assert rig.builder.is_built(release, rig.commit)
    assert rig.builder.marker(release).parent.is_relative_to(rig.tmp / "data" / "built")
    assert (canary.read_text(), os.stat(canary).st_mode, os.stat(canary).st_uid) == before
    assert sorted(p.name for p in canary_dir.iterdir()) == ["admin-token"]
    # a second Instance of the release reuses the build without touching the planted paths
    assert rig.build("hello-9-1", "hello-9", ["false"]) == release
    assert canary.read_text() == "secret-admin-token\n"


def test_operator_allowlist_reaches_builds_only(rig: Rig) -> None:
    """FORGE_BUILD_ENV's variables and FORGE_BUILD_FILES' files reach the build (read-only);
    nothing else of the agent's environment does."""
    from forge.nodeagent.network import parse_build_env, parse_build_files

    conf = rig.tmp / "pip.conf"
    conf.write_text("[global]\nindex-url = http://index.internal/simple\n")
    os.chmod(conf, 0o644)
    os.chmod(rig.tmp, 0o755)
    rig.builder.build_env = parse_build_env("PIP_INDEX_URL, NOT_SET", {"PIP_INDEX_URL": "http://index.internal/simple",
                                                                     "SECRET_OF_THE_AGENT": "x"})
    rig.builder.build_files = parse_build_files(f"{conf}:/etc/pip.conf")
    release = rig.build("hello-8-0", "hello-8", [
        'echo "url=$PIP_INDEX_URL secret=${SECRET_OF_THE_AGENT:-none}" > out.txt',
        "cat /etc/pip.conf >> out.txt", "echo tamper >> /etc/pip.conf || echo ro >> out.txt"])
    assert (release / "out.txt").read_text() == (
        "url=http://index.internal/simple secret=none\n[global]\nindex-url = http://index.internal/simple\nro\n")
    assert conf.read_text().count("tamper") == 0


@pytest.mark.parametrize(("names", "files"), [("9BAD", ""), ("", "relative/pip.conf"), ("", "/etc/../root/x")],
                         ids=["bad-name", "relative", "dotdot"])
def test_allowlist_refuses_bad_entries(names: str, files: str) -> None:
    """Malformed allowlist entries are errors naming the variable."""
    from forge.errors import Invalid
    from forge.nodeagent.network import parse_build_env, parse_build_files

    with pytest.raises(Invalid, match="FORGE_BUILD_ENV" if names else "FORGE_BUILD_FILES"):
        parse_build_env(names, {}) if names else parse_build_files(files)


def test_build_lines_carry_the_time_they_were_produced(rig: Rig) -> None:
    """Two build lines 1.5 s apart carry stamps 1.5 s apart (not one shipping time); the
    stamps never show in the text and the failure tail is clean."""
    from forge.clock import parse_iso
    from forge.nodeagent.buildlog import unstamp

    rig.build("hello-7-0", "hello-7", ["echo first", "sleep 1.5", "echo second"])
    raw = read_all(rig.tmp / "logs" / "hello-7-0", "build").decode()
    lines = [unstamp(ln) for ln in raw.split("\n") if ln]  # (str.splitlines would split at \x1e too)
    assert all(when is not None for when, _ in lines), "every line is stamped"
    times = {text: parse_iso(when) for when, text in lines if when}
    assert times["second"] - times["first"] >= 1.4
    assert all("\x1e" not in text and "\x1f" not in text for _, text in lines)
    with pytest.raises(BuildError) as failed:
        rig.build("hello-6-0", "hello-6", ["echo about to fail", "exit 3"])
    assert "\x1e" not in failed.value.message and "exited with code 3" in failed.value.message


def test_builds_wait_while_the_data_dir_is_nearly_full(rig: Rig) -> None:
    """The node-level guard: with less free space than the threshold no build starts (no fetch,
    no release dir); with room again the same build goes through."""
    from forge.nodeagent.builder import DiskLow, free_space

    free, _ = free_space(rig.tmp)
    rig.builder.min_free_bytes = free + 2**40  # more than this filesystem has free
    with pytest.raises(DiskLow, match="MiB free"):
        rig.build("hello-5-0", "hello-5", ["true"])
    assert not rig.builder.release_dir("hello", "hello-5").exists()
    assert not (rig.tmp / "data" / "git").exists(), "nothing fetched"
    rig.builder.min_free_bytes = 0
    assert rig.builder.is_built(rig.build("hello-5-0", "hello-5", ["true"]), rig.commit)
