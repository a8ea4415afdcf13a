"""Seeds that reproduced a bug, pinned with their shrunk plans (robust to changes of ``generate``).

Each entry: name → (known-bug family, seed, the invariant it breaks, what it shows, the plan as
``(t, kind, args, setup)`` tuples). ``python -m tests.sim --regression NAME`` replays one with its
trace; ``tests/sim/test_sim.py`` runs each as a strict xfail while its family is in
``plan.KNOWN_BUG_TRIGGERS`` (the bug is open) and as a plain test once it is not (fixed).
The Sieve class of each (crash between writes, stale read, missed intermediate events, or an
ordering of actions no single-fault model covers) is in the description.
"""

from __future__ import annotations

from typing import Any

from tests.sim.plan import Op

Entry = tuple[str, int, str, str, list[tuple[float, str, tuple[Any, ...], bool]]]

REGRESSIONS: dict[str, Entry] = {
    "clock-step-fails-rollout": (
        "clock-step",
        2,
        "healthy-not-failed",
        "the leader's wall clock steps: a healthy release fails "
        "ProgressDeadlineExceeded (time read across a step; #20)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.1, "app", ("a0", 10.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (4.0, "clock-step", (600.0,), False),
        ],
    ),
    "late-older-push-blocks-head": (
        "stale-inflight",
        2,
        "head-live",
        "an older push delivered again 0.3-2 s after a newer one: the newest is "
        "Cancelled, the head never goes live (ordering / stale decision; #20)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.1, "app", ("a0", 10.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (8.6, "push", ("a0", "healthy", False), False),
            (8.96, "stale", ("a0",), False),
        ],
    ),
    "node-skew-beats-min-ready": (
        "node-skew",
        0,
        "min-ready",
        "node clocks behind the leader's: promoted before min_ready, judged from "
        "the node's ready time (stale/foreign timestamp; found by the simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "control-plane", ("cp1",), True),
            (0.0, "node", ("n0", -7.2), True),
            (0.0, "node", ("n1", -19.0), True),
            (0.1, "app", ("a0", 10.0, True), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (62.6, "push", ("a0", "healthy", False), False),
        ],
    ),
    "push-after-scale-drops-processes": (
        "scale-then-push",
        2,
        "release-config",
        "forge scale worker=N, then a push: the webhook's release carries "
        "processes=None (ordering of actions; #20)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.1, "app", ("a0", 10.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (32.63, "scale-proc", ("a0", 0), False),
            (45.05, "push", ("a0", "healthy", False), False),
        ],
    ),
    "restart-waits-own-lease": (
        "up-restart",
        2,
        "leader-after-restart",
        "forge up restarted waits out its own dead predecessor's lease before acting "
        "(crash, then restart; #20)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.1, "app", ("a0", 10.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (8.6, "up-restart", (True,), False),
        ],
    ),
    "scale-lost-after-failed-push": (
        "scale-then-bad-push",
        17,
        "config-live",
        "scale, then a push whose release fails: the scale's release was "
        "Cancelled and the App's config is never released (missed intermediate "
        "state; found by the simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.1, "app", ("a0", 10.0, False), True),
            (0.2, "push", ("a0", "healthy", False), True),
            (21.3, "scale", ("a0", 2), False),
            (21.98, "push", ("a0", "release-fails", True), False),
        ],
    ),
}


def plan_of(name: str) -> list[Op]:
    return [Op(t, kind, tuple(args), setup) for t, kind, args, setup in REGRESSIONS[name][4]]
