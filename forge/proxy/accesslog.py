"""Caddy's access log, sent to this host's proxy as one UDP datagram per request (#25).

Caddy's config names one more log (``forge_access``): the server's access logger writes JSON
through Caddy's ``net`` writer to ``udp/127.0.0.1:PORT``, the port derived from the install's
data dir, and a ``filter`` encoder keeps only what the proxy reads (the host, cut at 253
characters), so an entry is ~180 bytes whatever the request::

    {"level":"info","ts":1796682015.24,"logger":"http.log.access.forge_access",
     "msg":"handled request","request":{"host":"hello.localhost:8000"},
     "duration":0.0012,"size":2,"status":200}

Why UDP on loopback (the choice and the others are in ``docs/data-plane.md``): nothing goes to
disk, so nothing grows; Caddy never waits for the proxy (a full socket buffer drops datagrams,
which the kernel counts and the proxy exports, where a stream or a unix datagram socket would
block Caddy's request path on a stalled reader); Caddy starts and serves whether or not the proxy
runs (2.6's ``net`` writer has no ``soft_start``: a stream address that does not answer fails
Caddy's config load); and each entry is one whole datagram, so a proxy that restarts can meet
no half line, and reads only what was sent after it bound the port: nothing is counted twice.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

from forge.proxy.nft import install_hash

log = logging.getLogger(__name__)

LOGGER_NAME: Final[str] = "forge_access"
ACCESS_LOGGER: Final[str] = f"http.log.access.{LOGGER_NAME}"
PORT_BASE: Final[int] = 20000  # below Linux's ephemeral range (32768-60999)
PORT_SPAN: Final[int] = 12000
RECV_BUFFER: Final[int] = 8 * 1024 * 1024  # what the proxy asks for; the kernel may give less
MAX_DATAGRAM: Final[int] = 65536
# Fields an entry carries that the proxy never reads: dropped by Caddy's encoder, so no header
# (cookies, tokens), address or URI ever leaves Caddy, and an entry always fits one datagram: a
# client's 70 KB URI made an entry UDP cannot carry, and that request went uncounted (measured).
DROPPED_FIELDS: Final[tuple[str, ...]] = (
    "request>headers",
    "request>tls",
    "request>remote_ip",
    "request>remote_port",
    "request>client_ip",
    "request>proto",
    "request>method",
    "request>uri",
    "resp_headers",
    "user_id",
)
MAX_HOST: Final[int] = 253  # a longer Host is no DNS name and never served: cut, it stays unrouted


def access_log_address(data_dir: str | Path) -> str:
    """``127.0.0.1:PORT`` where this install's Caddy sends its access log and its proxy reads it."""
    port = PORT_BASE + int(install_hash(data_dir, "access-log"), 16) % PORT_SPAN
    return f"127.0.0.1:{port}"


def caddy_logging(address: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``logging.logs`` entries, the server's ``logs``): the access log to ``udp/ADDRESS``,
    kept out of the default log (Caddy 2.6 logs a 5xx at ERROR, which the WARN default would
    otherwise copy into Caddy's own log file)."""
    logs = {
        "default": {"level": "WARN", "exclude": [ACCESS_LOGGER]},
        LOGGER_NAME: {
            "level": "INFO",
            "include": [ACCESS_LOGGER],
            "writer": {"output": "net", "address": f"udp/{address}", "dial_timeout": "1s"},
            "encoder": {
                "format": "filter",
                "wrap": {"format": "json"},
                "fields": {
                    **{name: {"filter": "delete"} for name in DROPPED_FIELDS},
                    "request>host": {
                        "filter": "regexp",
                        "regexp": f"(?s)^(.{{{MAX_HOST}}}).+$",  # longer only: else no match, unchanged
                        "value": "${1}",
                    },
                },
            },
        },
    }
    return logs, {"default_logger_name": LOGGER_NAME}


class Entry(NamedTuple):
    host: str  # as Caddy's host map looked it up: without the port, case and dots as sent
    status: int
    duration: float  # seconds
    ts: float  # Unix seconds, when Caddy logged it (the response was written)


def bare_host(raw: str) -> str:
    """The host as ``{http.request.host}`` gives it to the host map: ``hello.localhost:8000`` →
    ``hello.localhost``, ``[::1]:80`` → ``::1``. Nothing else changes: Caddy's lookup does not
    fold case or drop a trailing dot, so ``WEB.localhost`` got the catch-all's 404, not the
    app, and must not count as the app's."""
    host = raw
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host


def parse_entry(line: bytes) -> Entry | None:
    """One access-log line → Entry; None for anything else (a cut or foreign line, another log)."""
    try:
        obj = json.loads(line)
        request = obj["request"]
        status, duration, ts = obj["status"], obj["duration"], obj["ts"]
        host = request["host"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(host, str) or isinstance(status, bool) or not isinstance(status, int):
        return None
    if not isinstance(duration, (int, float)) or not isinstance(ts, (int, float)):
        return None
    return Entry(bare_host(host), status, max(0.0, float(duration)), float(ts))


class AccessLogSocket:
    """The bound UDP socket and its reading loop: ``handle(entry)`` per entry, ``bad()`` per line
    it cannot read. ``bind`` first (datagrams then wait in the kernel), ``run`` once ready."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.sock: socket.socket | None = None
        self._closed = threading.Event()
        self._failed = False

    def bind(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # As root the proxy may exceed net.core.rmem_max (a burst of 2,000 requests waits
            # here while the proxy's other threads hold the GIL); otherwise take what it gives.
            sock.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def run(self, handle: Callable[[Entry], None], bad: Callable[[], None]) -> None:
        """Read until ``close``. A datagram holds whole lines (one, as Caddy writes them)."""
        sock = self.sock
        if sock is None:
            return
        recv = sock.recv
        while not self._closed.is_set():
            try:
                data = recv(MAX_DATAGRAM)
            except OSError as exc:
                if self._closed.is_set() or exc.errno == errno.EBADF:
                    return
                log.warning("proxy: access log socket: %s", exc)
                continue
            if not data:
                continue  # an empty datagram, or the wake-up of close()
            for line in data.splitlines():
                entry = parse_entry(line)
                if entry is None:
                    bad()
                    continue
                try:
                    handle(entry)
                except Exception:  # noqa: BLE001 - the per-line boundary: a bug must not end the reading
                    bad()
                    if not self._failed:
                        log.exception("proxy: counting an access-log line failed (logged once)")
                    self._failed = True

    def close(self) -> None:
        self._closed.set()
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread (Linux)
        except OSError:
            pass
        sock.close()

    def drops(self) -> int | None:
        """Datagrams the kernel dropped on this socket (its buffer was full): /proc/net/udp's
        ``drops`` of the socket bound to our port; None when not bound or not found."""
        if self.sock is None:
            return None
        try:
            rows = Path("/proc/net/udp").read_text().splitlines()[1:]
        except OSError:
            return None
        ip = (
            socket.inet_aton(self.host or "0.0.0.0")[::-1].hex().upper()
        )  # little-endian, as the kernel prints it
        want = f"{ip}:{self.port:04X}"
        for row in rows:
            cols = row.split()
            if len(cols) >= 13 and cols[1] == want:
                return int(cols[12])
        return None
