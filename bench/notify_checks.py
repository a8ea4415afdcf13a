"""Notify controller: the cost of looking at every App each minute when an install-wide notifier
hears error-rate alerts.

A real SQLite store (and its series store) with N Apps, each with a live release, 10 earlier
releases and 5 minutes of request points (30 ten-second samples); one install-wide notifier.
Times ``NotifyController.reconcile(app)`` (deploy decisions + the error-rate read of the window)
over every App, beside a baseline measured in the same run on the same records: the rollback
controller's reconcile of the same Apps (every Deployment and Instance of the App, its plan).
Prints milliseconds per App, the ratio to the baseline, and the share of one core the notify
controller costs at one look per App per ``ERROR_RATE_CHECK_SECONDS``.

    .venv/bin/python bench/notify_checks.py [--apps 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forge.api.notify import build_notifier  # noqa: E402
from forge.appmetrics import RequestSample, bucket_of  # noqa: E402
from forge.clock import FakeClock  # noqa: E402
from forge.config import Config  # noqa: E402
from forge.controllers.cache import CachedStore, InformerCache  # noqa: E402
from forge.controllers.notify import NotifyController  # noqa: E402
from forge.controllers.rollback import RollbackController  # noqa: E402
from forge.models import (  # noqa: E402
    LABEL_APP,
    LABEL_DEPLOYMENT,
    App,
    AppSpec,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    ObjectMeta,
)
from forge.notify import ERROR_RATE_CHECK_SECONDS  # noqa: E402
from forge.secrets import Keyring  # noqa: E402
from forge.store.sqlite import SqliteStore  # noqa: E402


def seed(store: SqliteStore, clock: FakeClock, apps: int) -> list[str]:
    names = []
    for a in range(apps):
        name = f"app{a}"
        names.append(name)
        store.create(App(metadata=ObjectMeta(name=name), spec=AppSpec(repo=f"acme/{name}")))
        for n in range(1, 12):
            dep = store.create(
                Deployment(
                    metadata=ObjectMeta(name=f"{name}-{n}", labels={LABEL_APP: name}),
                    spec=DeploymentSpec(app=name, commit=f"{n:040x}"),
                )
            )
            dep.status.phase = "Live" if n == 11 else "Superseded"
            dep.status.live_time = clock.now_iso()
            store.update_status(dep)
        labels = {LABEL_APP: name, LABEL_DEPLOYMENT: f"{name}-11"}
        store.create(
            Instance(
                metadata=ObjectMeta(name=f"{name}-11-0", labels=labels),
                spec=InstanceSpec(app=name, deployment=f"{name}-11", repo=f"acme/{name}", commit="b" * 40),
            )
        )
        samples = [
            RequestSample(
                name, f"{name}-11", bucket_of(clock.now() - 10 * i), by_class={"2xx": 100, "5xx": 1}
            )
            for i in range(30)
        ]
        store.add_requests("proxy/bench", f"{name}-b", samples)
    return names


def per_app(ctl: object, names: list[str], rounds: int) -> float:
    reconcile = ctl.reconcile  # type: ignore[attr-defined]
    start = time.perf_counter()
    for _ in range(rounds):
        for name in names:
            reconcile(name)
    return (time.perf_counter() - start) / (rounds * len(names))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="forge-bench-notify-") as tmp:
        clock = FakeClock()
        config = Config(data_dir=Path(tmp), secret_key=bytes(range(32)))
        store = SqliteStore(str(Path(tmp) / "forge.db"), clock=clock)
        try:
            t0 = time.perf_counter()
            names = seed(store, clock, args.apps)
            print(f"seeded {args.apps} apps in {time.perf_counter() - t0:.1f}s")
            store.create(build_notifier(Keyring.load(config), "", "https://hooks.example/bench/0000000000"))
            # as under the runtime: reads of watched kinds from the informer cache
            cache = InformerCache(store, ["App", "Deployment", "Instance", "Notifier", "Notification"])
            for kind in cache.kinds:
                cache.fill(kind)
            view = CachedStore(store, cache)
            notify = NotifyController(view, clock, config)  # type: ignore[arg-type]
            rollback = RollbackController(view, clock, config)  # type: ignore[arg-type]
            per_app(notify, names[:20], 1)  # warm up
            base = per_app(rollback, names, args.rounds)
            cost = per_app(notify, names, args.rounds)
            share = cost / ERROR_RATE_CHECK_SECONDS * args.apps
            print(f"rollback reconcile (baseline): {base * 1000:.2f} ms per app")
            print(f"notify reconcile (decisions + 5 min of request points): {cost * 1000:.2f} ms per app")
            print(f"ratio notify/rollback: {cost / base:.2f}")
            print(
                f"at one look per app every {ERROR_RATE_CHECK_SECONDS:g}s: {share:.2%} of a core "
                f"for {args.apps} apps ({share / args.apps * 5000:.1%} at 5,000)"
            )
        finally:
            store.close()


if __name__ == "__main__":
    main()
