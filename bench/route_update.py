"""Cost of one app's switch: the kernel's service map against the Caddy maps it replaces.

For 10, 1,000 and 5,000 apps (two replicas each) it times changing one app's backends,
median of ``--repeat`` changes:

- ``kernel``: what Forge does now (``forge.proxy.servicemap``): one nftables batch deleting the
  app's 60 slots and adding the new ones, in a real table holding every app (needs root);
  Caddy is not touched at all.

and, loading each layout into a real Caddy (Debian's ``caddy``, a child on free loopback ports),
through the Admin API:

- ``naive``: one route per app (host matcher + its own ``reverse_proxy``), change =
  PATCH ``/id/app-N/handle/0/upstreams`` — the baseline, measured in the same run;
- ``hostmap``: Forge's layout (``forge.proxy.caddy``), change = the router's real update, one PATCH
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

from forge.clock import SystemClock
from forge.proxy.caddy import HOSTMAP_ID, CaddyAdmin, CaddyProcess, base_config, hostmap_handlers, pack
from forge.proxy.nft import nft_available
from forge.proxy.servicemap import ServiceMap

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


def measure_kernel(n: int, repeat: int, workdir: Path) -> float | None:
    """Median ms of one app's switch in a kernel map of ``n`` apps; None without root/nftables."""
    if nft_available() is not None:
        return None
    services = ServiceMap(workdir / f"kernel-{n}")
    try:
        services.ensure()
        backends = {10000 + i: [f"10.213.{i // 250}.{i % 250 + 2}:8000", f"10.213.{i // 250}.{i % 250 + 3}:8000"]
                    for i in range(n)}
        for start in range(0, n, 500):  # fill it in chunks (the first fill is not what is measured)
            services.apply({p: b for p, b in backends.items() if p < 10000 + start + 500})
        target = 10000 + n // 2

        def switch(k: int) -> None:
            backends[target] = [f"10.214.{k % 250}.2:{9000 + k}", f"10.214.{k % 250}.3:{9000 + k}"]
            assert services.apply(backends) == [target]

        return median_ms(repeat, switch)
    finally:
        services.teardown()


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
            print(f"one app's switch, median of {args.repeat} (ms); Caddy {admin_addr}")
            print(f"{'apps':>6} {'kernel':>8} {'naive':>10} {'hostmap':>10} {'entry':>10} "
                  f"{'hostmap/kernel':>15} {'naive/hostmap':>14}")
            for n in (int(x) for x in args.apps.split(",")):
                k = measure_kernel(n, args.repeat, Path(tmp))
                r = measure(admin, base, n, args.repeat)
                ks = f"{k:>8.2f}" if k is not None else f"{'n/a':>8}"
                ratio = f"{r['hostmap'] / k:>14.0f}x" if k else f"{'n/a':>15}"
                print(f"{n:>6} {ks} {r['naive']:>10.1f} {r['hostmap']:>10.1f} {r['hostmap-entry']:>10.1f} "
                      f"{ratio} {r['naive'] / r['hostmap']:>13.1f}x", flush=True)
        finally:
            admin.close()
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
