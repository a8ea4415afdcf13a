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
    "clock-step-back-stalls-rollout": (
        "clock-step-back",  # fixed by branch `status` (monotonic Stopwatch deadlines)
        58,
        "releases-end",
        "the leader's wall clock steps back: the release never ends (time read across a step; #20)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.0, "node", ("n2", 0.0), True),
            (0.1, "app", ("a0", 0.0, False), True),
            (0.2, "push", ("a0", "healthy", False), True),
            (1.3, "clock-step", (-600.0,), False),
        ],
    ),
    "clock-step-fails-rollout": (
        "clock-step",
        2,
        "min-ready",
        "the leader's wall clock steps forward 600 s in its first 10 s: the release is promoted at "
        "once, before min_ready (the Stopwatch reads a start it first sees off the wall clocks, "
        "unbounded until it has watched 10 s). It used to fail ProgressDeadlineExceeded (#20), "
        "which branch `status` fixed",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.1, "app", ("a0", 10.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (4.0, "clock-step", (600.0,), False),
        ],
    ),
    "config-lost-after-stale-push": (
        "stale-then-config",
        30,
        "config-live",
        "a late older push Cancelled StalePush, then scale: rollout takes the "
        "Cancelled push as newest, the scale is never released (found by the "
        "simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "control-plane", ("cp1",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.1, "app", ("a0", 2.0, False), True),
            (0.2, "push", ("a0", "healthy", False), True),
            (3.0, "push", ("a0", "healthy", False), False),
            (45.58, "stale", ("a0",), False),
            (47.02, "scale", ("a0", 2), False),
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
    "source-spins-while-github-down": (
        "git-down",
        1,
        "busy-loop",
        "GitHub down during a push: the source controller's own status writes "
        "wake it past its back-off, a hot loop (found by the simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "control-plane", ("cp1",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.1, "app", ("a0", 10.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (9.0, "disk-full", (1.1,), False),
            (17.0, "env", ("a0", "v57"), False),
            (20.0, "git-down", (7.9,), False),
            (20.3, "push", ("a0", "healthy", False), False),
        ],
    ),
}

# Pinned by hand from the shrunk output of `make sim SEEDS=300` (before these families left the default run).
REGRESSIONS.setdefault(
    "second-node-loss-freezes",
    (
        "second-node-loss",
        198,
        "config-live",
        "a node lost a minute after another freezes evictions for good: the 55 % rule counts every "
        "lapsed node, not the ones that lapsed together (stale history; found by the simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.0, "node", ("n2", 0.0), True),
            (0.1, "app", ("a0", 10.0, False), True),
            (0.1, "app", ("a1", 0.0, False), True),
            (0.2, "push", ("a0", "healthy", False), True),
            (0.2, "push", ("a1", "healthy", False), True),
            (4.3, "node-loss", ("n1",), False),
            (66.91, "node-loss", ("n0",), False),
        ],
    ),
)
REGRESSIONS.setdefault(
    "drain-rolls-back-healthy",
    (
        "drain-rollback",
        249,
        "healthy-not-failed",
        "draining a node rolls back the healthy release whose Instances it moves: the platform's "
        "own move is judged as the app failing (found by the simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.1, "app", ("a0", 0.0, False), True),
            (0.1, "app", ("a1", 10.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (0.2, "push", ("a1", "healthy", False), True),
            (1.3, "disk-full", (18.0,), False),
            (2.3, "env", ("a1", "v24"), False),
            (34.85, "rollback", ("a1",), False),
            (54.85, "cordon", ("n0",), False),
            (57.85, "drain", ("n0",), False),
            (65.85, "env", ("a0", "v73"), False),
            (75.46, "uncordon", ("n0",), False),
            (77.0, "uncordon", ("n0",), False),
            (89.33, "rollback", ("a0",), False),
        ],
    ),
)

REGRESSIONS.setdefault(
    "rollback-undoes-scale",
    (
        "rollback-after-scale",
        887,
        "config-live",
        "scale to 3 while the newest release crashes: the automatic rollback release carried its "
        "target's replica count (1) and pinned it, so the App said 3 and 1 ran (counts are not "
        "release config; fixed in forge/release.py's rollback_release; found by the simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "control-plane", ("cp1",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.1, "app", ("a0", 0.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (12.0, "push", ("a0", "crash-after", True), False),
            (33.0, "scale", ("a0", 3), False),
        ],
    ),
)
REGRESSIONS.setdefault(
    "delete-on-lost-only-node",
    (
        "delete-lost-node",
        933,
        "deleted-clean",
        "an App deleted while its only node is lost keeps its release and Instance: teardown "
        "waited for the lost node to confirm the stop, and with every node lapsed the nodes "
        "controller (frozen, rightly evicting nothing) never said the node was gone (found by the "
        "simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "control-plane", ("cp1",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.1, "app", ("a0", 2.0, False), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (9.0, "node-loss", ("n0",), False),
            (17.0, "delete", ("a0",), False),
        ],
    ),
)
REGRESSIONS.setdefault(
    "delete-while-building-on-lost-node",
    (
        "delete-lost-node",
        881,
        "releases-end",
        "the same with the release still building on the lost node: it stayed Building for good",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.1, "app", ("a0", 0.0, False), True),
            (0.2, "push", ("a0", "healthy", False), True),
            (1.3, "node-loss", ("n0",), False),
            (21.3, "delete", ("a0",), False),
        ],
    ),
)

REGRESSIONS.setdefault(
    "clock-step-at-takeover-fails-release",
    (
        "clock-step",
        133,
        "healthy-not-failed",
        "the leader pauses, the wall clock steps +2 h, the other control plane takes over: its first "
        "look read the release's age off the wall clocks, hours past its deadline, and failed a "
        "healthy release ProgressDeadlineExceeded at once (a first reading now counts at most half "
        "the deadline; found by the simulator)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "control-plane", ("cp1",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.1, "app", ("a0", 0.0, True), True),
            (0.1, "app", ("a1", 2.0, True), True),
            (0.2, "push", ("a0", "healthy", True), True),
            (0.2, "push", ("a1", "healthy", False), True),
            (2.4, "leader-pause", (20.2,), False),
            (3.0, "clock-step", (7200.0,), False),
        ],
    ),
)

REGRESSIONS.setdefault(
    "three-nodes-cut-one-evicted",
    (
        "nodes-cut-together",
        58,
        "mass-cut-evicted",
        "three nodes cut off at one instant: their leases lapse 0.35 s apart and the nodes "
        "controller judged the first alone (1 of 3 lapsed), writing it off while the 55 % rule "
        "should have frozen all three (found by the simulator once agents renew out of lockstep)",
        [
            (0.0, "control-plane", ("cp0",), True),
            (0.0, "node", ("n0", 0.0), True),
            (0.0, "node", ("n1", 0.0), True),
            (0.0, "node", ("n2", 0.0), True),
            (0.1, "app", ("a0", 0.0, False), True),
            (0.2, "push", ("a0", "healthy", False), True),
            (21.3, "cut-nodes", (37.2,), False),
        ],
    ),
)


def plan_of(name: str) -> list[Op]:
    return [Op(t, kind, tuple(args), setup) for t, kind, args, setup in REGRESSIONS[name][4]]
