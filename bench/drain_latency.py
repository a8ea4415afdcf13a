"""Log drain delivery latency: from a line's append to the node's log to its arrival at the receiver.

The node side is the real one — segment logs written as the log writer writes them, the inotify
``Notifier``, one ``DrainWorker`` with its ``SyslogSender`` (TLS by default, a CA made here) —
and the receiver a TLS syslog server in this process that splits the octet-counted frames and
stamps each message's arrival. Every line carries its append time; the bench prints p50, p99
and max of (arrival − append) at a steady rate over N Instances, and what the worker thread
cost in CPU. Target: p99 < 5 s while the receiver is up.

    .venv/bin/python bench/drain_latency.py [--instances 20] [--rate 200] [--seconds 20] [--tcp]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forge.clock import SystemClock  # noqa: E402
from forge.drains import parse_url  # noqa: E402
from forge.nodeagent.drains.notify import Notifier  # noqa: E402
from forge.nodeagent.drains.senders import SyslogSender  # noqa: E402
from forge.nodeagent.drains.syslog import BOM, unframe  # noqa: E402
from forge.nodeagent.drains.worker import DrainWorker  # noqa: E402
from forge.nodeagent.logpump import SegmentLog  # noqa: E402
from tests.rsyslog import make_ca  # noqa: E402

CLOCK = SystemClock()


class Receiver:
    def __init__(self, tls: tuple[Path, Path] | None) -> None:
        self.latencies: list[float] = []
        self.count = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.ctx = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(*tls)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        rest = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = CLOCK.now()
            msgs, rest = unframe(rest + data)
            for m in msgs:
                text = m.split(BOM, 1)[1].decode()
                if text.startswith("t="):
                    self.latencies.append(now - float(text[2:].split()[0]))
                self.count += 1


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--rate", type=float, default=200.0, help="lines per second, all Instances together")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--tcp", action="store_true", help="plain TCP instead of TLS")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="forge-bench-drain-"))
    ca, cert, key = make_ca(tmp / "pki", "localhost")
    rx = Receiver(None if args.tcp else (cert, key))
    scheme = "syslog+tcp" if args.tcp else "syslog+tls"
    stop = threading.Event()
    logs = tmp / "logs"
    names = [f"bench-1-{i}" for i in range(args.instances)]
    writers = {n: SegmentLog(str(logs / n), "app", 8 * 2**20) for n in names}
    url = parse_url(f"{scheme}://localhost:{rx.port}")
    worker = DrainWorker(
        "bench-drain", "bench", SyslogSender(url, CLOCK, stop, ca_file=str(ca)), "bench-node", logs,
        tmp / "drain.json", lambda: [(n, "web", None) for n in names], CLOCK, stop,
    )
    notifier = Notifier(logs, lambda _i: worker.wake(), stop)
    notifier.start()
    worker.start()
    t_cpu0 = time.thread_time()  # this thread only: the writer loop
    cpu0 = time.process_time()
    interval = 1.0 / args.rate
    sent = 0
    t0 = CLOCK.monotonic()
    next_at = t0
    while CLOCK.monotonic() - t0 < args.seconds:
        n = names[sent % len(names)]
        writers[n].write(f"t={CLOCK.now():.6f} line {sent} of {n}\n".encode())
        sent += 1
        next_at += interval
        delay = next_at - CLOCK.monotonic()
        if delay > 0:
            CLOCK.sleep(delay)
    deadline = CLOCK.monotonic() + 30
    while len(rx.latencies) < sent and CLOCK.monotonic() < deadline:
        CLOCK.sleep(0.05)
    elapsed = CLOCK.monotonic() - t0
    other_cpu = (time.process_time() - cpu0) - (time.thread_time() - t_cpu0)
    lat = rx.latencies
    print(f"{scheme}: {sent} lines from {args.instances} Instances at {args.rate:g}/s for {args.seconds:g}s; "
          f"{len(lat)} arrived ({rx.count} messages)")
    print(f"latency append→arrival: p50 {pct(lat, 0.5) * 1000:.1f} ms  p99 {pct(lat, 0.99) * 1000:.1f} ms  "
          f"max {max(lat, default=float('nan')) * 1000:.1f} ms   target p99 < 5 s: "
          f"{'met' if lat and pct(lat, 0.99) < 5 else 'MISSED'}")
    print(f"CPU of this process outside the writer loop (worker, notifier, receiver): "
          f"{other_cpu / elapsed * 100:.1f} % of a core")
    stop.set()
    worker.close()
    notifier.close()
    for w in writers.values():
        w.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
