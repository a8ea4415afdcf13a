"""Cost of one app's upstream change in Caddy, Forge's layout against one route per app.

For 10, 1,000 and 5,000 apps (two replicas each) it loads each layout into a real Caddy
(Debian's ``caddy``, a child on free loopback ports) and times changing one app's upstreams
through the Admin API, median of ``--repeat`` changes:

- ``naive``: one route per app (host matcher + its own ``reverse_proxy``), change =
  PATCH ``/id/app-N/handle/0/upstreams`` — the baseline, measured in the same run;
- ``hostmap``: Forge's layout (``forge.caddy``), change = the router's real update, one PATCH
  of ``/id/forge-hostmap/handle`` (digest + whole map);
- ``hostmap-entry``: the same layout, PATCH of the one changed mapping entry only (shows
  whether sending less helps when Caddy re-provisions everything anyway).

Run: ``.venv/bin/python bench/route_update.py [--repeat 10] [--apps 10,1000,5000]``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forge.caddy import HOSTMAP_ID, CaddyAdmin, CaddyProcess, base_config, hostmap_handlers, pack
from forge.clock import SystemClock

CLOCK = SystemClock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def table(n: int, gen: int = 0) -> dict[str, list[str]]:
    return {f"app{i}.localhost": [f"127.0.0.1:{20000 + i % 9000}", f"127.0.0.2:{20000 + i % 9000}"]
            for i in range(n)}


def naive_config(base: dict[str, Any], routes: dict[str, list[str]]) -> dict[str, Any]:
    per_app = [
        {"@id": f"app-{i}", "match": [{"host": [host]}], "terminal": True,
         "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": d} for d in dials]}]}
        for i, (host, dials) in enumerate(sorted(routes.items()))
    ]
    server = base["apps"]["http"]["servers"]["forge"]
    server["routes"] = per_app + [r for r in server["routes"] if r.get("@id") == "forge-catchall"]
    return base


def median_ms(repeat: int, change: Callable[[int], None]) -> float:
    times = []
    for k in range(repeat):
        start = CLOCK.monotonic()
        change(k)
        times.append((CLOCK.monotonic() - start) * 1000)
    return statistics.median(times)


def measure(admin: CaddyAdmin, base: Callable[[dict[str, list[str]]], dict[str, Any]], n: int,
            repeat: int) -> dict[str, float]:
    routes = table(n)
    target = sorted(routes)[n // 2]
    idx = sorted(routes).index(target)

    def moved(k: int) -> list[str]:
        return [f"127.0.0.3:{30000 + k}", f"127.0.0.4:{30000 + k}"]

    out: dict[str, float] = {}
    admin.load(naive_config(base({}), routes))
    out["naive"] = median_ms(repeat, lambda k: admin.patch_id(f"app-{idx}", "/handle/0/upstreams",
                                                               [{"dial": d} for d in moved(k)]))
    admin.load(base(routes))

    def whole(k: int) -> None:
        routes[target] = moved(k)
        admin.patch_id(HOSTMAP_ID, "/handle", hostmap_handlers(routes))

    out["hostmap"] = median_ms(repeat, whole)
    out["hostmap-entry"] = median_ms(repeat, lambda k: admin.patch_id(
        HOSTMAP_ID, f"/handle/1/mappings/{idx}", {"input": target, "outputs": [pack(moved(k + 100))]}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--apps", default="10,1000,5000")
    args = ap.parse_args(argv)
    http, admin_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"

    def base(routes: dict[str, list[str]]) -> dict[str, Any]:
        return base_config(http, admin_addr, "off", routes=routes)

    with tempfile.TemporaryDirectory(prefix="forge-bench-caddy-") as tmp:
        proc = CaddyProcess(base({}), Path(tmp))
        proc.start()
        admin = CaddyAdmin(admin_addr, timeout=120)
        try:
            print(f"one app's upstream change, median of {args.repeat} (ms); Caddy {admin_addr}")
            print(f"{'apps':>6} {'naive':>10} {'hostmap':>10} {'entry':>10} {'naive/hostmap':>14}")
            for n in (int(x) for x in args.apps.split(",")):
                r = measure(admin, base, n, args.repeat)
                print(f"{n:>6} {r['naive']:>10.1f} {r['hostmap']:>10.1f} {r['hostmap-entry']:>10.1f} "
                      f"{r['naive'] / r['hostmap']:>13.1f}x", flush=True)
        finally:
            admin.close()
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
