"""What per-app request metrics cost a proxy host (#25): ~2,000 requests/s through a real Caddy.

A real Caddy (Debian's 2.6) runs Forge's static config (``forge_config``: the host map on disk,
the access log as UDP datagrams to the install's port) in front of a trivial upstream (a second
Caddy answering a static 200 — Go, so the upstream is not what limits the rate), one host
routed to it in the host map. The metrics path — ``AccessLogSocket`` reading the datagrams and
``RequestCounter`` labelling and counting them, exactly as ``forge proxy`` runs them — runs in
a child process of its own, so its CPU is measured apart from everything else. A small asyncio
load generator (keep-alive connections, paced to the target rate) drives the front Caddy for
``--seconds``. Two phases, same load:

- ``off``: Caddy without the access log (the config before #25): Caddy's CPU alone;
- ``on``: Caddy with it, and the reader counting.

Printed: the rate reached, CPU seconds of the front Caddy in each phase (the difference is what
encoding and sending the log costs Caddy), of the reader, the ratio reader / Caddy and
(reader + Caddy's extra) / Caddy-off, and whether the reader counted every request (datagrams
the kernel dropped are counted by /proc/net/udp and printed). Figures only; nothing asserted.

Run: ``.venv/bin/python bench/request_metrics.py [--rate 2000] [--seconds 10] [--connections 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from forge.config import Config
from forge.proxy.accesslog import AccessLogSocket, access_log_address
from forge.proxy.caddy import CaddyProcess, base_config, forge_config, hosts_dir
from forge.proxy.hostmap import HostMap
from forge.proxy.reqmetrics import RequestCounter

HOST = "bench.localhost"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def reader_main(address: str) -> None:
    """The child: the proxy's metrics path on ``address``; 'start'/'stop' on stdin → its CPU."""
    counter = RequestCounter(lambda: {HOST: ("bench", "bench-1")})
    sock = AccessLogSocket(address)
    sock.bind()
    threading.Thread(target=sock.run, args=(counter.observe, counter.bad_line), daemon=True).start()
    print("ready", flush=True)
    marks: dict[str, tuple[float, int]] = {}

    def counted() -> int:
        series = counter.series().get(("bench", "bench-1"))
        return sum(series.by_class.values()) if series else 0

    for cmd in sys.stdin:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        marks[cmd.strip()] = (usage.ru_utime + usage.ru_stime, counted())
        if cmd.strip() == "stop":
            break
    print(
        json.dumps(
            {
                "cpu": marks["stop"][0] - marks["start"][0],
                "counted": marks["stop"][1] - marks["start"][1],
                "unrouted": counter.unrouted,
                "unreadable": counter.unreadable,
                "dropped": sock.drops(),
            }
        ),
        flush=True,
    )


async def load(port: int, rate: float, seconds: float, connections: int) -> tuple[int, int, float]:
    """(responses, non-200s, elapsed): ``connections`` keep-alive clients paced to ``rate``/s."""
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    done = bad = 0
    start = time.monotonic()
    end = start + seconds
    per_conn = rate / connections

    async def client(i: int) -> None:
        nonlocal done, bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while (now := time.monotonic()) < end:
            due = start + (n + i / connections) / per_conn
            if due > now:
                await asyncio.sleep(due - now)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for h in head.split(b"\r\n"):
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            done += 1
            bad += not head.startswith(b"HTTP/1.1 200")
            n += 1
        writer.close()

    await asyncio.gather(*(client(i) for i in range(connections)))
    return done, bad, time.monotonic() - start


def upstream(root: Path) -> tuple[CaddyProcess, int]:
    port = free_port()
    conf: dict[str, Any] = {
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {
            "http": {
                "servers": {
                    "up": {
                        "listen": [f"127.0.0.1:{port}"],
                        "automatic_https": {"disable": True},
                        "routes": [
                            {"handle": [{"handler": "static_response", "status_code": 200, "body": "ok\n"}]}
                        ],
                    }
                }
            }
        },
    }
    proc = CaddyProcess(conf, root / "upstream")
    proc.start()
    return proc, port


def phase(cfg: Config, root: Path, logged: bool, args: argparse.Namespace) -> dict[str, Any]:
    conf = forge_config(cfg, kernel=False, ask_url="http://127.0.0.1:9/api/v1/tls/ask")
    if not logged:
        conf = base_config(
            cfg.http_listen,
            cfg.effective_caddy_admin,
            hosts_dir=str(hosts_dir(cfg.data_dir)),
            access_log=None,
        )
    child = None
    if logged:
        child = subprocess.Popen(
            [sys.executable, __file__, "--reader", access_log_address(cfg.data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    caddy = CaddyProcess(conf, root / ("caddy-on" if logged else "caddy-off"))
    caddy.start()
    try:
        port = int(cfg.http_listen.rpartition(":")[2])
        asyncio.run(load(port, 50, 0.5, 2))  # warm up: connections, upstream pool
        time.sleep(0.5)  # the warm-up's datagrams read before "start"
        assert caddy.pid is not None
        if child is not None:
            assert child.stdin is not None
            child.stdin.write("start\n")
            child.stdin.flush()
        before = cpu_of(caddy.pid)
        done, bad, elapsed = asyncio.run(load(port, args.rate, args.seconds, args.connections))
        caddy_cpu = cpu_of(caddy.pid) - before
        out: dict[str, Any] = {"requests": done, "non200": bad, "rate": done / elapsed, "caddy": caddy_cpu}
        if child is not None:
            assert child.stdin is not None and child.stdout is not None
            time.sleep(1.0)  # the last datagrams in flight
            child.stdin.write("stop\n")
            child.stdin.flush()
            out.update(json.loads(child.stdout.readline()))
        return out
    finally:
        caddy.stop()
        if child is not None:
            child.kill()
            child.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=2000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--reader", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reader:
        reader_main(args.reader)
        return
    with tempfile.TemporaryDirectory(prefix="forge-bench-reqmetrics-") as tmp:
        root = Path(tmp)
        cfg = replace(
            Config(data_dir=root / "data"),
            http_listen=f"127.0.0.1:{free_port()}",
            caddy_admin=f"127.0.0.1:{free_port()}",
        )
        up, up_port = upstream(root)
        try:
            HostMap(hosts_dir(cfg.data_dir)).apply({HOST: [f"127.0.0.1:{up_port}"]})
            off = phase(cfg, root, False, args)
            on = phase(cfg, root, True, args)
        finally:
            up.stop()
    load_avg = os.getloadavg()[0]
    print(f"target {args.rate:.0f} req/s for {args.seconds:.0f} s, {args.connections} keep-alive connections")
    print(f"load average at the end: {load_avg:.1f} on {os.cpu_count()} cores")
    for name, r in (("access log off", off), ("access log on ", on)):
        print(
            f"  {name}: {r['requests']} requests ({r['rate']:.0f}/s, {r['non200']} not 200), "
            f"Caddy CPU {r['caddy']:.2f} s"
        )
    print(
        f"  reader (the proxy's metrics path): CPU {on['cpu']:.2f} s; counted {on['counted']} "
        f"of {on['requests']}, unreadable {on['unreadable']}, "
        f"kernel drops {on['dropped']}"
    )
    print(f"  ratio reader / Caddy (same run): {on['cpu'] / on['caddy']:.3f}")
    extra = on["caddy"] * off["rate"] / on["rate"] - off["caddy"] if on["rate"] else 0.0
    print(
        f"  Caddy's own cost of logging (on - off, rate-adjusted): {extra:+.2f} s; "
        f"(reader + that) / Caddy-off: {(on['cpu'] + extra) / off['caddy']:.3f}"
    )


if __name__ == "__main__":
    main()
