"""The simulator in the suite: seeds pass, planted faults are caught, traces replay byte for byte,
and each bug the simulator found keeps its pinned seed (``regressions.py``): a strict xfail while
its family is in ``plan.KNOWN_BUG_TRIGGERS``; after the fix merges, delete the family there and the
seed becomes a plain regression test.

Every run is a subprocess of ``python -m tests.sim`` (as ``make sim`` runs it): a trace depends on
set iteration order, which the module pins by running with ``PYTHONHASHSEED=0``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.controllers.ownership import parse_table
from tests.sim.plan import KNOWN_BUG_TRIGGERS, generate
from tests.sim.planted import PLANTED
from tests.sim.regressions import REGRESSIONS

ROOT = Path(__file__).resolve().parents[2]
# 300, not the 1,000 issue #21 asks for (300 seeds: 67 s on a quiet machine; 1,000: 276 s).
# Against merged main seeds 0-999 held 6 failures: 404, 449, 926 were the simulator's (a release
# on a lost only node may stay open for its whole deadline, build and release-command timeouts
# included: judging now waits up to 2,580 s); 881, 933 (an App deleted while its only node is lost
# kept its records) and 887 (an automatic rollback after a scale ran the target's replica count)
# were Forge's, fixed on branch sim2 and pinned in regressions.py. The default families changed
# since (up-restart, clock-step, cut-nodes run in every seed), so seed numbers there are not these.
SEEDS = int(os.environ.get("FORGE_SIM_TEST_SEEDS", "300"))


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


@pytest.mark.timeout(3600)
def test_default_seeds_pass() -> None:
    """``make sim``'s run: every seed of the default families passes (known-bug families off)."""
    got = sim("--seeds", str(SEEDS), "--reports", "1", "--shrink-budget", "30", timeout=3600)
    assert got.returncode == 0, got.stdout[-4000:] + got.stderr[-2000:]
    assert f"{SEEDS}/{SEEDS} seeds passed" in got.stdout


@pytest.mark.timeout(3600)
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
    assert off <= on
    assert {"clock-step", "up-restart", "cut-nodes"} <= off  # fixed (branch sim2): in the default run


class OtherFailure(Exception):
    """The seed fails, but not the way its bug does (not covered by the xfail)."""


def _regression(name: str) -> None:
    invariant = REGRESSIONS[name][2]
    got = sim("--regression", name, timeout=600)
    if got.returncode != 0 and f"FAILED: {invariant}" not in got.stdout:
        raise OtherFailure(got.stdout[-3000:] + got.stderr[-2000:])
    assert got.returncode == 0, got.stdout[-3000:]


def _cases() -> list[Any]:
    out = []
    for name, (family, _seed, _inv, what, _plan) in sorted(REGRESSIONS.items()):
        marks = []
        if family in KNOWN_BUG_TRIGGERS:  # still open: xfail until the fix lands, then it XPASSes (fails)
            marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"open bug: {what}"))
        out.append(pytest.param(name, id=name, marks=marks))
    return out


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", _cases())
def test_regression(name: str) -> None:
    """A pinned seed of a bug the simulator found passes (strict xfail while the bug is open)."""
    _regression(name)


def test_regressions_cover_every_known_bug_family() -> None:
    """Each family left out of the default run keeps at least one pinned seed."""
    assert set(KNOWN_BUG_TRIGGERS) <= {f for f, *_ in REGRESSIONS.values()}


def test_owner_check_uses_mains_ownership_table() -> None:
    """The owner-only invariant reads docs/CONTRACTS.md with the controller suite's parser, and a
    write by a non-owner is a violation (the check can fail)."""
    from tests.sim.fakes import SimStore
    from tests.sim.invariants import Checker, Violation
    from tests.sim.world import World

    table = parse_table()
    assert table[("Deployment", "phase")].owner == "rollout"
    world = World(0)
    try:
        checker = Checker(world)
        assert checker.owners == table
        from forge.models import App, AppSpec, ObjectMeta

        before = App(metadata=ObjectMeta(name="a0"), spec=AppSpec(repo="o/a0"))
        after = before.model_copy(deep=True)
        after.status.live_deployment = "a0-1"
        store = SimStore(world.api_store.inner, "x")
        store.actor = "health"
        with pytest.raises(Violation, match="owned by rollout"):
            checker.on_write(store, "update_status", before, after)
        store.actor = "rollout"
        checker.on_write(store, "update_status", before, after)
    finally:
        world.close()
