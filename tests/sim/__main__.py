"""``python -m tests.sim``: ``--seeds N`` (how many passed), ``--seed S`` (one seed's trace),
``--selftest`` (each planted fault caught). ``make sim`` / ``make sim-selftest`` call this."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time

from tests.sim.plan import KNOWN_BUG_TRIGGERS, generate, included, run, shrink
from tests.sim.planted import PLANTED

# planted fault → (the combination its seeds contain, the known-bug families it needs on)
SELFTEST_FOCUS: dict[str, tuple[str | None, set[str] | None]] = {
    "router-unready": ("crash-live", None),
    "webhook-drops-processes": ("scale-proc", {"scale-then-push"}),
    "rollback-ignores-config": ("config-rollback", None),
    "source-ignores-stale": ("stale-settled", {"stale-then-config"}),
    "leader-fence-off": ("leader-pause", None),
    "gc-deletes-live": ("cp-crash", None),
}


def _hash_seed() -> None:
    """Set iteration order is part of a trace: pin Python's string hashing, then run again."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "tests.sim", *sys.argv[1:]])


def report_failure(seed: int, shrink_budget: float) -> None:
    plan = generate(seed)
    first = run(seed, plan)
    if first.violation is None:
        return
    print(f"seed {seed} FAILED: {first.violation}")
    small = shrink(seed, plan, first.violation.name, budget=shrink_budget)
    print(f"  shrunk to {len([o for o in small if not o.setup])} actions/faults (+ setup):")
    for op in small:
        print(f"    {op}{'  [setup]' if op.setup else ''}")


def one_seed(seed: int) -> tuple[int, str | None, int]:
    out = run(seed, generate(seed))
    return seed, None if out.passed else str(out.violation), out.steps


def cmd_seeds(n: int, start: int, shrink_budget: float, max_reports: int, jobs: int) -> int:
    t0 = time.monotonic()
    failed: list[int] = []
    steps = 0
    seeds = range(start, start + n)
    if jobs > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs) as pool:
            results = list(pool.imap(one_seed, seeds, chunksize=4))
    else:
        results = [one_seed(s) for s in seeds]
    for seed, violation, took_steps in results:
        steps += took_steps
        if violation is not None:
            failed.append(seed)
            print(f"seed {seed}: {violation}", flush=True)
    took = time.monotonic() - t0
    on = sorted(included())
    off = sorted(set(KNOWN_BUG_TRIGGERS) - set(on))
    print(
        f"{n - len(failed)}/{n} seeds passed in {took:.1f}s ({steps} steps); "
        f"known-bug families off: {', '.join(off) or 'none'}; on: {', '.join(on) or 'none'}"
    )
    for seed in failed[:max_reports]:
        report_failure(seed, shrink_budget)
    return 1 if failed else 0


def cmd_seed(seed: int, do_shrink: bool) -> int:
    plan = generate(seed)
    print(f"seed {seed}: plan")
    for op in plan:
        print(f"  {op}{'  [setup]' if op.setup else ''}")
    out = run(seed, plan)
    print(f"seed {seed}: trace")
    for line in out.lines:
        print(line)
    print(
        f"seed {seed}: {'passed' if out.passed else f'FAILED: {out.violation}'} ({out.steps} steps, {out.sim_seconds:.1f}s simulated)"
    )
    if not out.passed and do_shrink:
        assert out.violation is not None
        small = shrink(seed, plan, out.violation.name, budget=90.0)
        print(f"seed {seed}: shrunk to")
        for op in small:
            print(f"  {op}{'  [setup]' if op.setup else ''}")
    return 0 if out.passed else 1


def cmd_regression(name: str) -> int:
    from tests.sim.regressions import REGRESSIONS, plan_of

    family, seed, invariant, what, _ = REGRESSIONS[name]
    plan = plan_of(name)
    print(f"regression {name} (seed {seed}, family {family}): {what}")
    for op in plan:
        print(f"  {op}{'  [setup]' if op.setup else ''}")
    out = run(seed, plan, families={family})
    for line in out.lines:
        print(line)
    verdict = "passed" if out.passed else f"FAILED: {out.violation}"
    print(f"regression {name}: {verdict} ({out.steps} steps, {out.sim_seconds:.1f}s simulated)")
    return 0 if out.passed else 1


def selftest_one(fault: str, max_seeds: int = 40) -> tuple[int, str] | None:
    """A seed that passes as the code is and fails with ``fault`` planted (None: missed). Where an
    open bug already breaks the same invariant on every such seed, a seed failing planted is
    reported with that note: the plant cannot be told from the bug until the bug is fixed."""
    focus, families = SELFTEST_FOCUS.get(fault, (None, None))
    for seed in range(max_seeds):
        plan = generate(seed, families=families, focus=focus)
        planted = run(seed, plan, planted=fault)
        if planted.passed:
            continue
        assert planted.violation is not None
        base = run(seed, plan)
        if base.passed:
            return seed, str(planted.violation)
        if base.violation is not None and base.violation.name == planted.violation.name:
            note = ", ".join(sorted(families or ()))
            return seed, f"{planted.violation} [unplanted fails the same way: the open bug ({note})]"
    return None


def cmd_selftest(only: list[str]) -> int:
    missed = []
    for fault in only or list(PLANTED):
        t0 = time.monotonic()
        got = selftest_one(fault)
        took = time.monotonic() - t0
        if got is None:
            missed.append(fault)
            print(f"MISSED {fault}: {PLANTED[fault]} ({took:.1f}s)", flush=True)
        else:
            print(f"caught {fault}: seed {got[0]}: {got[1][:150]} ({took:.1f}s)", flush=True)
    print(f"{len(only or PLANTED) - len(missed)} caught, {len(missed)} missed")
    return 1 if missed else 0


def main() -> int:
    _hash_seed()
    logging.disable(logging.CRITICAL)
    p = argparse.ArgumentParser(prog="python -m tests.sim")
    p.add_argument("--seeds", type=int)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--selftest", action="store_true")
    p.add_argument("--fault", action="append", default=[])
    p.add_argument("--shrink-budget", type=float, default=60.0)
    p.add_argument("--reports", type=int, default=3)
    p.add_argument("--no-shrink", action="store_true")
    p.add_argument(
        "--jobs", type=int, default=int(os.environ.get("FORGE_SIM_JOBS", "0")) or min(2, os.cpu_count() or 1)
    )
    p.add_argument("--regression", default=None, help="replay a pinned regression (tests/sim/regressions.py)")
    p.add_argument("--include", default=None, help="known-bug families to turn on (FORGE_SIM_INCLUDE)")
    a = p.parse_args()
    if a.include is not None:
        os.environ["FORGE_SIM_INCLUDE"] = a.include
    if a.selftest:
        return cmd_selftest(a.fault)
    if a.regression is not None:
        return cmd_regression(a.regression)
    if a.seed is not None:
        return cmd_seed(a.seed, not a.no_shrink)
    return cmd_seeds(a.seeds or 100, a.start, a.shrink_budget, a.reports, a.jobs)


if __name__ == "__main__":
    sys.exit(main())
