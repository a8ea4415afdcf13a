"""nftables, in-process: a small ctypes binding of Debian's ``libnftables.so.1`` and ``ip``.

Why in-process: one switch of an app's backends is a handful of map elements; through
libnftables it costs ~0.2 ms whatever the size of the ruleset, while spawning ``nft -f``
costs ~15 ms. The library takes the same text the ``nft`` command does, and each
``run()`` is one netlink batch: the kernel applies all of it or none of it (atomic).

``ip()`` runs iproute2 (``ip -batch -`` for several commands in one process); both raise
``NetError`` with the tool's own message on failure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from forge.errors import ForgeError

__all__ = ["NetError", "Nft", "install_hash", "ip", "ip_json", "nft_available"]

LIBRARY: Final[str] = "libnftables.so.1"
NFT_CTX_DEFAULT: Final[int] = 0
NFT_CTX_OUTPUT_JSON: Final[int] = 1 << 4


class NetError(ForgeError):
    """An nftables or iproute2 command failed; the message is the tool's own."""

    reason = "NetworkSetupFailed"


def _load() -> Any:
    path = ctypes.util.find_library("nftables") or LIBRARY
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_char_p
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    return lib


_LIB: Any = None
_LIB_LOCK = threading.Lock()


def _lib() -> Any:
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            _LIB = _load() or False
    return _LIB or None


CAP_NET_ADMIN: Final[int] = 12


def has_net_admin(status: str = "/proc/self/status") -> bool:
    """CAP_NET_ADMIN in this process's effective set (root, or a unit's AmbientCapabilities)."""
    try:
        for line in Path(status).read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def nft_available() -> str | None:
    """None when this process can program nftables; otherwise what is missing."""
    if not has_net_admin():
        return "no CAP_NET_ADMIN (nftables and network namespaces need root, or that capability)"
    if _lib() is None:
        return "libnftables is missing (apt-get install nftables)"
    if shutil.which("ip") is None:
        return "iproute2's ip is missing (apt-get install iproute2)"
    if shutil.which("nft", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        return "the nft command is missing (apt-get install nftables)"  # run inside namespaces
    try:
        Nft().run("list tables")
    except NetError as exc:
        return f"nftables does not answer: {exc.message}"
    return None


class Nft:
    """One libnftables context (not thread-safe by itself, so calls are serialized)."""

    def __init__(self) -> None:
        lib = _lib()
        if lib is None:
            raise NetError("libnftables.so.1 is not installed (apt-get install nftables)")
        self._lib = lib
        self._ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, script: str) -> str:
        """Apply ``script`` (nft syntax, several commands) as one atomic batch; its output."""
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            first = script.strip().splitlines()[0][:120] if script.strip() else ""
            raise NetError(f"nft failed ({first!r}…): {err.strip()[:800]}")
        return out

    def json(self, command: str) -> list[dict[str, Any]]:
        """``command`` (a list command) with JSON output, as the list of its objects."""
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON)
            try:
                rc = self._lib.nft_run_cmd_from_buffer(self._ctx, command.encode())
                out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
                err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            finally:
                self._lib.nft_ctx_output_set_flags(self._ctx, 0)
        if rc != 0:
            raise NetError(f"nft {command!r} failed: {err.strip()[:500]}")
        try:
            return list(json.loads(out or "{}").get("nftables") or [])
        except ValueError:
            raise NetError(f"nft {command!r} printed no JSON") from None

    def table_exists(self, family: str, name: str) -> bool:
        try:
            self.run(f"list table {family} {name}")
        except NetError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


def ip(*commands: str, netns: str | None = None, check: bool = True) -> str:
    """Run iproute2 commands (``"link add …"``), all in one ``ip -batch -`` process."""
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    text = "".join(c.strip() + "\n" for c in commands)
    done = subprocess.run(argv, input=text.encode(), capture_output=True, timeout=30, check=False, env=_env())
    if check and done.returncode != 0:
        raise NetError(f"ip failed: {done.stderr.decode(errors='replace').strip()[:800]}")
    return done.stdout.decode(errors="replace")


def ip_json(*args: str) -> Any:
    """``ip -j ARGS`` parsed (an empty list when ip prints nothing)."""
    done = subprocess.run(["ip", "-j", *args], capture_output=True, timeout=30, check=False, env=_env())
    if done.returncode != 0:
        raise NetError(f"ip {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()[:500]}")
    out = done.stdout.decode(errors="replace").strip()
    return json.loads(out) if out else []


@dataclass(frozen=True)
class Route:
    net: ipaddress.IPv4Network
    dev: str
    gateway: str | None  # None: on-link (a connected network)
    type: str  # unicast, local, broadcast, …


def ipv4_routes(*args: str) -> list[Route]:
    """``ip -4 route show ARGS`` with a destination prefix (not ``default``), parsed."""
    out = []
    for r in ip_json("-4", "route", "show", *args):
        dst = r.get("dst", "")
        if dst in ("", "default"):
            continue
        try:
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            out.append(Route(net, str(r.get("dev", "")), r.get("gateway"), str(r.get("type", "unicast"))))
    return out


def in_netns(netns: str, argv: list[str], stdin: bytes | None = None) -> str:
    """Run ``argv`` inside the named network namespace (``ip netns exec``)."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
        env=_env(),
    )
    if done.returncode != 0:
        raise NetError(
            f"{argv[0]} in netns {netns} failed: {done.stderr.decode(errors='replace').strip()[:800]}"
        )
    return done.stdout.decode(errors="replace")


def install_hash(data_dir: str | Path, purpose: str = "") -> str:
    """Six hex digits naming one install's kernel objects (and cgroups, uids): derived from its
    data dir, so two installs on one machine never share a name. ``purpose`` separates the
    names the node's network and the router's service map take from the same data dir."""
    return hashlib.sha256(f"{purpose}{Path(data_dir).resolve()}".encode()).hexdigest()[:6]


def _env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
