"""Which TCP ports an app's processes listen on, read from /proc — and what that says about $PORT.

Forge gives every web Instance a port in ``$PORT``; an app that binds another one (3000, 5000,
8000 are the usual suspects) is otherwise only seen as "connection refused" after several
probes. The kernel already knows better: ``/proc/PID/net/tcp{,6}`` lists the listening sockets of
the process's network namespace, and ``/proc/PID/fd`` says which socket inodes the app's own
processes hold — so the host network (where the namespace is shared with everything else)
gives the right answer too.

``parse_listeners`` and ``port_verdict`` are pure; ``listening`` is the thin reader.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

TCP_LISTEN: Final[str] = "0A"
REASON_WRONG_PORT: Final[str] = "WrongPort"


@dataclass(frozen=True)
class Listener:
    address: str  # "0.0.0.0", "127.0.0.1", "::"
    port: int
    inode: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def _address(hex_addr: str) -> str:
    """A /proc/net/tcp address (little-endian 32-bit words) in ordinary notation."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    v6 = ipaddress.IPv6Address(words)
    return f"::ffff:{v6.ipv4_mapped}" if v6.ipv4_mapped else v6.compressed


def parse_listeners(text: str) -> list[Listener]:
    """The LISTEN rows of a /proc/net/tcp or tcp6 table."""
    out: list[Listener] = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] != TCP_LISTEN:
            continue
        addr, _, port = cols[1].partition(":")
        try:
            out.append(Listener(_address(addr), int(port, 16), int(cols[9])))
        except ValueError:
            continue
    return out


def socket_inodes(pids: Iterable[int], proc: Path = Path("/proc")) -> set[int]:
    """Inodes of the sockets the given processes hold open."""
    inodes: set[int] = set()
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def listening(pids: list[int], proc: Path = Path("/proc")) -> list[Listener]:
    """The TCP sockets the processes ``pids`` (one app's, one network namespace) listen on."""
    if not pids:
        return []
    owned = socket_inodes(pids, proc)
    found: dict[tuple[str, int], Listener] = {}
    for table in ("tcp", "tcp6"):
        try:
            text = (proc / str(pids[0]) / "net" / table).read_text()
        except OSError:
            continue
        for lst in parse_listeners(text):
            if lst.inode in owned:
                found.setdefault((lst.address, lst.port), lst)
    return sorted(found.values(), key=lambda x: (x.port, x.address))


def port_verdict(port: int, listeners: list[Listener]) -> str | None:
    """Why the probe of ``$PORT`` cannot succeed given what the app listens on, or None when
    nothing is known to be wrong (it listens on $PORT at any address — the node reaches a
    loopback-bound app in its namespace too — or listens nowhere yet)."""
    if not listeners:
        return None
    on_port = [x for x in listeners if x.port == port]
    if not on_port:
        bound = ", ".join(str(x) for x in listeners)
        return (
            f"the app listens on {bound} but not on $PORT={port}, the port Forge gave it: "
            "make it listen on the port in the PORT environment variable (e.g. "
            "gunicorn -b 0.0.0.0:$PORT, flask run --host 0.0.0.0 --port $PORT, "
            "app.listen(process.env.PORT))"
        )
    return None
