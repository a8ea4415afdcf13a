"""The simulator in the suite: seeds pass, planted faults are caught, traces replay byte for byte,
and each known bug of issue #20 keeps a seed that reproduces it (strict xfail: it turns into a
failure the moment the fix lands, and the lead then moves it to ``FIXED``).

Every run is a subprocess of ``python -m tests.sim`` (as ``make sim`` runs it): a trace depends on
set iteration order, which the module pins by running with ``PYTHONHASHSEED=0``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.invariants import owner_table
from tests.sim.plan import KNOWN_BUG_TRIGGERS, generate
from tests.sim.planted import PLANTED

ROOT = Path(__file__).resolve().parents[2]
SEEDS = int(os.environ.get("FORGE_SIM_TEST_SEEDS", "1000"))


def sim(*args: str, timeout: float = 600, include: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORGE_SIM_INCLUDE", "PYTHONHASHSEED")}
    if include is not None:
        env["FORGE_SIM_INCLUDE"] = include
    return subprocess.run(
        [sys.executable, "-m", "tests.sim", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# (known-bug family, seed, the invariant it breaks, what the seed shows). Each is a strict xfail
# until its fix merges; then the entry moves to FIXED (a plain regression test).
KNOWN_BUGS: list[tuple[str, int, str, str]] = [
    (
        "scale-then-push",
        5,
        "release-config",
        "forge scale worker=2, then a push: its release has processes=None",
    ),
    (
        "scale-then-push",
        4,
        "release-config",
        "a secret set, then a push: its release drops the secrets version",
    ),
    (
        "stale-inflight",
        15,
        "head-live",
        "an older push delivered again 0.3-2 s after a newer one: head never live",
    ),
    (
        "stale-inflight",
        16,
        "head-live",
        "the same, two apps: the newest push Cancelled, nothing Live at the head",
    ),
    (
        "clock-step",
        15,
        "healthy-not-failed",
        "the leader's wall clock steps: ProgressDeadlineExceeded at once",
    ),
    (
        "clock-step",
        16,
        "healthy-not-failed",
        "the leader's wall clock steps during the first release: it fails",
    ),
    (
        "up-restart",
        7,
        "leader-after-restart",
        "forge up killed and started again waits out its own dead lease",
    ),
    ("up-restart", 9, "leader-after-restart", "the same after a Ctrl-C restart mid-rollout"),
    ("node-skew", 0, "min-ready", "node clocks behind the leader's: promoted before min_ready"),
    ("git-down", 5, "busy-loop", "GitHub down during a push: the source controller spins on its own writes"),
    ("git-down", 14, "busy-loop", "the same, another interleaving"),
    ("scale-then-bad-push", 13, "config-live", "scale, then a push whose release fails: the scale is lost"),
    (
        "stale-then-config",
        17,
        "config-live",
        "a late older push Cancelled StalePush, then scale: never released",
    ),
]
FIXED: list[tuple[str, int, str, str]] = []  # entries of KNOWN_BUGS whose fix merged


def test_default_seeds_pass() -> None:
    """``make sim``'s run: every seed of the default families passes (known-bug families off)."""
    got = sim("--seeds", str(SEEDS), "--reports", "1", "--shrink-budget", "30", timeout=3600)
    assert got.returncode == 0, got.stdout[-4000:] + got.stderr[-2000:]
    assert f"{SEEDS}/{SEEDS} seeds passed" in got.stdout


def test_selftest_catches_every_planted_fault() -> None:
    """``make sim-selftest``: each planted fault makes a seed fail that passes without it."""
    got = sim("--selftest", timeout=3600)
    assert got.returncode == 0, got.stdout[-4000:] + got.stderr[-2000:]
    for fault in PLANTED:
        assert f"caught {fault}:" in got.stdout


def test_same_seed_same_trace_byte_for_byte() -> None:
    """Two runs of a seed print the same trace, whatever hash seed the caller had."""
    one = sim("--seed", "3", "--no-shrink", timeout=300)
    os.environ["PYTHONHASHSEED"] = "123"
    try:
        two = sim("--seed", "3", "--no-shrink", timeout=300)
    finally:
        del os.environ["PYTHONHASHSEED"]
    assert one.stdout.count("\n") > 100
    assert one.stdout == two.stdout


def test_plan_depends_on_the_seed_and_the_switch_only() -> None:
    """The plan of a seed is a pure function of the seed and the families turned on."""
    assert [str(o) for o in generate(7, families=set())] == [str(o) for o in generate(7, families=set())]
    assert [str(o) for o in generate(7, families=set())] != [str(o) for o in generate(8, families=set())]
    on = {o.kind for s in range(40) for o in generate(s, families=set(KNOWN_BUG_TRIGGERS))}
    off = {o.kind for s in range(40) for o in generate(s, families=set())}
    assert {"scale-proc", "secret", "clock-step", "up-restart"} <= on - off


class OtherFailure(Exception):
    """The seed fails, but not the way its bug does (not covered by the xfail)."""


def _bug_case(family: str, seed: int, invariant: str) -> None:
    got = sim("--seed", str(seed), "--no-shrink", include=family, timeout=600)
    if got.returncode != 0 and f"FAILED: {invariant}" not in got.stdout:
        raise OtherFailure(got.stdout[-3000:] + got.stderr[-2000:])
    assert got.returncode == 0, got.stdout[-3000:]


@pytest.mark.parametrize(
    ("family", "seed", "invariant"),
    [
        pytest.param(
            f, s, inv, id=f"{f}-{s}", marks=pytest.mark.xfail(strict=True, reason=f"open bug: {why}")
        )
        for f, s, inv, why in KNOWN_BUGS
    ],
)
def test_known_bug_seed(family: str, seed: int, invariant: str) -> None:
    """A seed of a known bug's family passes (xfail strict until the bug is fixed)."""
    _bug_case(family, seed, invariant)


@pytest.mark.parametrize(
    ("family", "seed", "invariant"),
    [(f, s, i) for f, s, i, _ in FIXED]
    or [pytest.param("", 0, "", marks=pytest.mark.skip(reason="none fixed yet"))],
)
def test_fixed_bug_stays_fixed(family: str, seed: int, invariant: str) -> None:
    """A seed that reproduced a bug before its fix passes now."""
    _bug_case(family, seed, invariant)


def test_owner_table_is_read_when_contracts_has_one(tmp_path: Path) -> None:
    """The ownership check reads docs/CONTRACTS.md's table of status fields and owners."""
    doc = tmp_path / "CONTRACTS.md"
    doc.write_text(
        "intro\n\n| Field | Owner |\n|---|---|\n| `Deployment.status.phase` | rollout |\n"
        "| App.status.liveDeployment | rollout |\n| `Instance.status.ready` | agent |\n"
    )
    table = owner_table(doc)
    assert table[("Deployment", "phase")] == {"rollout"}
    assert table[("App", "liveDeployment")] == {"rollout"}
    assert owner_table(tmp_path / "missing.md") == {}
