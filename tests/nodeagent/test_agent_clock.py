"""The agent's waits survive steps of its machine's wall clock: a crash back-off and the time
since a process started are measured on the monotonic clock (FakeClock.step moves wall time
only), and what a step can do to a state file written before is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.clock import FakeClock
from forge.nodeagent.reconciler import Reconciler
from forge.nodeagent.state import AgentState, InstanceState
from forge.nodeagent.supervisor import BACKOFF_CAP

STEPS = [7200.0, -4 * 3600.0]
IDS = ["plus-2h", "minus-4h"]


def reconciler(tmp_path: Path, clock: FakeClock) -> Reconciler:
    """Only the clock-keeping parts are exercised: the collaborators are never called."""
    return Reconciler(
        None,
        "n1",
        tmp_path,
        AgentState(tmp_path / "state.json"),
        None,
        None,
        None,  # type: ignore[arg-type]
        None,
        clock,
        None,
    )  # type: ignore[arg-type]


def instance() -> InstanceState:
    return InstanceState(
        name="hello-1-0", app="hello", deployment="hello-1", cgroup="inst-hello-1-0", release_dir="/r"
    )


@pytest.mark.parametrize("step", STEPS, ids=IDS)
def test_crash_back_off_is_not_moved_by_a_wall_clock_step(tmp_path: Path, step: float) -> None:
    """A crash's 1 s back-off is 1 s of real time: a −4 h step does not hold the restart for
    hours, a +2 h step does not skip it."""
    clock = FakeClock()
    r, st = reconciler(tmp_path, clock), instance()
    r._schedule_restart(st)
    assert r._backoff_left(st) == pytest.approx(1.0)
    clock.step(step)
    assert r._backoff_left(st) == pytest.approx(1.0)
    clock.advance(0.6)
    assert r._backoff_left(st) == pytest.approx(0.4)
    clock.advance(0.4)
    assert r._backoff_left(st) == 0.0


@pytest.mark.parametrize("step", STEPS, ids=IDS)
def test_time_since_start_is_not_moved_by_a_wall_clock_step(tmp_path: Path, step: float) -> None:
    """Start period, min_running and a one-shot's timeout count real seconds since the start."""
    clock = FakeClock()
    r, st = reconciler(tmp_path, clock), instance()
    st.started_time, st.started_mono = clock.now(), clock.monotonic()
    clock.advance(5)
    clock.step(step)
    assert r._up(st) == pytest.approx(5.0)


@pytest.mark.parametrize("step", STEPS, ids=IDS)
def test_a_state_file_with_wall_times_only_is_bounded(tmp_path: Path, step: float) -> None:
    """A state written before the monotonic fields existed (or a reboot ago): a step can at most
    hold a restart for the longest back-off, and time since start is never negative."""
    clock = FakeClock()
    r, st = reconciler(tmp_path, clock), instance()
    st.next_start, st.started_time = clock.now() + 2.0, clock.now()
    clock.step(step)
    assert 0.0 <= r._backoff_left(st) <= BACKOFF_CAP
    assert r._up(st) >= 0.0
