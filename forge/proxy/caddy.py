"""Caddy, driven only through its Admin API: its one static config, a client and a child process.

Caddy 2.6 closes every hijacked connection (websockets) of every app whenever its config is
loaded, and re-provisions the whole config on any Admin API change, even a PATCH of one string.
So Forge's config holds no app, host or route: it depends only on the install's settings
(listeners, TLS mode, admin address, the host map's directory) and is loaded once. Which host
dials what is looked up per request in the host map on disk (``forge.proxy.hostmap``);
measurements and the choice are in ``docs/data-plane.md``. The server holds two routes:

1. ``@id forge-proxy`` — a ``file`` matcher finds ``HOSTS/{http.request.host}/*`` (one file,
   named after the host's dials, packed and space-separated); a ``map`` takes the name out of
   the matched path, a second static ``map`` unpacks it with one regexp per replica count N
   (1..K): slot i = replica ``i % N``, so all K slots dial something real and round-robin over
   them is an even split for N dividing K (K = ``UPSTREAM_SLOTS`` = 12). ONE
   ``reverse_proxy`` dials the K slot placeholders, with a short ``try_duration`` so a refused
   connection (an instance that just stopped) is retried on the next slot. Passive health
   checks stay off on purpose: Caddy keys upstream health by the *unexpanded* dial string, so
   one app's dead replica would mark a slot down for every app. In kernel mode (the default
   with root) the one dial is the App's service address and the kernel's map picks the
   Instance (``forge.proxy.servicemap``).
2. ``@id forge-catchall`` — 404 with a short body, never Caddy's empty 200.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Final

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

from forge.config import Config
from forge.errors import ForgeError, Invalid, Unavailable
from forge.proxy.accesslog import access_log_address, caddy_logging
from forge.proxy.hostmap import SLOTS

PROXY_ID: Final[str] = "forge-proxy"
CATCHALL_ID: Final[str] = "forge-catchall"
SERVER_NAME: Final[str] = "forge"
NOT_FOUND_BODY: Final[str] = "no app is served at this host\n"
UPSTREAM_SLOTS: Final[int] = SLOTS
PACKED_VAR: Final[str] = "forge_upstreams"
TLS_MODES: Final[tuple[str, ...]] = ("off", "internal", "on-demand")
ADMIN_SOCKET_HOST: Final[str] = "caddy-admin"


def slot_var(i: int) -> str:
    return f"forge_up{i}"


def ph(name: str) -> str:
    return "{" + name + "}"


def slot_map(slots: int = UPSTREAM_SLOTS) -> dict[str, Any]:
    """Static map: N packed dials → slot i dials replica ``i % N``, so every slot is real."""
    return {
        "handler": "map",
        "source": ph(PACKED_VAR),
        "destinations": [ph(slot_var(i)) for i in range(slots)],
        "defaults": [""] * slots,
        "mappings": [
            {
                "input_regexp": "^" + " ".join(["([^ ]+)"] * n) + "$",
                "outputs": ["${" + str(i % n + 1) + "}" for i in range(slots)],
            }
            for n in range(1, slots + 1)
        ],
    }


DIAL_TIMEOUT = "1s"  # backends are on this host or the nodes' LAN: a SYN answered takes milliseconds


def server_routes(
    hosts_dir: str, slots: int = UPSTREAM_SLOTS, upstream_keepalive: bool = True
) -> list[dict[str, Any]]:
    proxy: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": ph(slot_var(i))} for i in range(slots)],
        "load_balancing": {
            "selection_policy": {"policy": "round_robin"},
            "try_duration": "2s",
            "try_interval": "50ms",
        },
    }
    # A backend whose machine died (no RST, only silence) must cost a request one short dial, not
    # Caddy's default 3 s, which outlasts try_duration: the retry then reaches a live replica.
    proxy["transport"] = {"protocol": "http", "dial_timeout": DIAL_TIMEOUT}
    if not upstream_keepalive:
        proxy["transport"]["keep_alive"] = {"enabled": False}
    entry = {
        "handler": "map",
        "source": "{http.matchers.file.relative}",
        "destinations": [ph(PACKED_VAR)],
        "defaults": [""],
        "mappings": [{"input_regexp": "^/[^/]+/(.+)$", "outputs": ["${1}"]}],
    }
    return [
        {
            "@id": PROXY_ID,
            "match": [{"file": {"root": hosts_dir, "try_files": ["/{http.request.host}/*"]}}],
            "handle": [entry, slot_map(slots), proxy],
            "terminal": True,
        },
        {
            "@id": CATCHALL_ID,
            "handle": [
                {
                    "handler": "static_response",
                    "status_code": 404,
                    "body": NOT_FOUND_BODY,
                    "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                }
            ],
            "terminal": True,
        },
    ]


def _port(listen: str) -> int:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise Invalid(f"listen address {listen!r} must be HOST:PORT")
    return int(port)


def base_config(
    http_listen: str,
    admin_listen: str,
    tls_mode: str = "off",
    ask_url: str | None = None,
    domain: str = "localhost",
    *,
    https_listen: str | None = None,
    hosts_dir: str,
    slots: int = UPSTREAM_SLOTS,
    upstream_keepalive: bool = True,
    access_log: str | None = None,
) -> dict[str, Any]:
    """The whole Caddy JSON config Forge runs with; the hosts it serves are ``hosts_dir``'s.

    ``access_log``: ``HOST:PORT`` to send the access log to, one UDP datagram per request
    (``forge.proxy.accesslog``; the proxy counts them per app), or None for no access log.

    ``tls_mode``: ``off`` (plain HTTP on ``http_listen``), ``internal`` (also HTTPS on
    ``https_listen`` with certificates from Caddy's internal CA, issued on demand for hosts the
    ask endpoint approves) or ``on-demand`` (the same with Caddy's default ACME issuers).
    ``domain`` is informational here: which hosts are served is decided by the host map alone.
    """
    if tls_mode not in TLS_MODES:
        raise Invalid(f"tls mode {tls_mode!r} must be one of {', '.join(TLS_MODES)}")
    server: dict[str, Any] = {
        "listen": [http_listen],
        "routes": server_routes(hosts_dir, slots, upstream_keepalive),
    }
    http_app: dict[str, Any] = {"servers": {SERVER_NAME: server}}
    apps: dict[str, Any] = {"http": http_app}
    if tls_mode == "off":
        server["automatic_https"] = {"disable": True}
    else:
        if not ask_url:
            raise Invalid(f"tls mode {tls_mode!r} needs the tls/ask URL")
        https_listen = https_listen or (":443" if tls_mode == "on-demand" else _default_https(http_listen))
        server["listen"].append(https_listen)
        # One server, two listeners: Caddy serves plain HTTP on the listener whose port is
        # http_port and TLS on the other, so both share one routing table (one @id to patch).
        http_app["http_port"] = _port(http_listen)
        http_app["https_port"] = _port(https_listen)
        server["automatic_https"] = {"disable_redirects": True}
        server["tls_connection_policies"] = [{}]
        server["protocols"] = ["h1", "h2"]  # no HTTP/3: it would also bind UDP on the HTTPS port
        policy: dict[str, Any] = {"on_demand": True}
        if tls_mode == "internal":
            policy["issuers"] = [{"module": "internal"}]
            apps["pki"] = {"certificate_authorities": {"local": {"install_trust": False}}}
        apps["tls"] = {"automation": {"policies": [policy], "on_demand": {"ask": ask_url}}}
    logs: dict[str, Any] = {"default": {"level": "WARN"}}
    if access_log:
        logs, server["logs"] = caddy_logging(access_log)
    admin: dict[str, Any] = {"listen": admin_listen, "config": {"persist": False}}
    if admin_listen.startswith("unix/"):
        # Caddy checks the Host header even on a socket; this is the name our client sends.
        admin["origins"] = [ADMIN_SOCKET_HOST]
    # Every Admin API request is counted by Caddy itself: caddy_admin_http_requests_total
    # {method, path} on the admin endpoint's /metrics (how tests count config writes).
    return {"admin": admin, "logging": {"logs": logs}, "apps": apps}


def _default_https(http_listen: str) -> str:
    host = http_listen.rpartition(":")[0]
    return f"{host}:{_port(http_listen) + 443}"


_retry = retry(
    retry=retry_if_exception_type(httpx.TransportError),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.05, max=0.5),
    reraise=True,
)


class CaddyError(ForgeError):
    """Caddy answered, but refused the change (bad config): a bug on our side, not an outage."""

    reason = "CaddyError"


class CaddyAdmin:
    """A thin client of Caddy's Admin API. Connection failures surface as ``Unavailable``."""

    def __init__(self, admin_url: str, timeout: float = 10.0) -> None:
        """``admin_url``: ``HOST:PORT``, ``http://HOST:PORT`` or ``unix//PATH`` (Caddy's own spelling)."""
        if admin_url.startswith("unix/"):
            self.admin_url = admin_url
            self._http = httpx.Client(
                base_url=f"http://{ADMIN_SOCKET_HOST}",
                timeout=timeout,
                transport=httpx.HTTPTransport(uds=admin_url[len("unix/") :]),
            )
            return
        base = admin_url if "://" in admin_url else f"http://{admin_url}"
        self.admin_url = base.rstrip("/")
        self._http = httpx.Client(base_url=self.admin_url, timeout=timeout)

    @_retry
    def _send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        content = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": "application/json"} if content is not None else {}
        return self._http.request(method, path, content=content, headers=headers)

    def request(self, method: str, path: str, body: Any = None, missing_ok: bool = False) -> Any:
        try:
            r = self._send(method, path, body)
        except httpx.TransportError as exc:
            raise Unavailable(f"caddy admin API at {self.admin_url} is unreachable: {exc}") from None
        if missing_ok and r.status_code == 404:
            return None
        if r.status_code >= 400:
            raise CaddyError(f"caddy {method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content.strip() else None

    def get_id(self, object_id: str, sub: str = "") -> Any:
        """The config object under ``@id`` (and sub-path), or None when Caddy has no such id."""
        return self.request("GET", f"/id/{object_id}{sub}", missing_ok=True)

    def patch_id(self, object_id: str, sub: str, value: Any) -> None:
        self.request("PATCH", f"/id/{object_id}{sub}", value)

    def load(self, config: dict[str, Any]) -> None:
        self.request("POST", "/load", config)

    def config(self) -> Any:
        return self.request("GET", "/config/")

    def ping(self) -> None:
        self.request("GET", "/config/")

    def close(self) -> None:
        self._http.close()


def count_admin_writes(admin: CaddyAdmin) -> int:
    """Admin API requests other than GET so far, from Caddy's own counter
    ``caddy_admin_http_requests_total`` (its admin ``/metrics``); closes ``admin``."""
    try:
        r = admin._http.get("/metrics")
    except httpx.TransportError as exc:
        raise Unavailable(f"caddy admin API at {admin.admin_url} is unreachable: {exc}") from None
    finally:
        admin.close()
    total = 0.0
    for line in r.text.splitlines():
        if line.startswith("caddy_admin_http_requests_total{") and 'method="GET"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


class CaddyProcess:
    """``caddy run`` as a child (never ``caddy start``, which daemonizes) with its own state dir.

    Caddy's storage and config dirs go under ``workdir`` (XDG_DATA_HOME / XDG_CONFIG_HOME) so
    it never writes to the invoking user's home.
    """

    def __init__(self, config: dict[str, Any], workdir: Path, caddy_bin: str = "caddy") -> None:
        self.config, self.workdir, self.caddy_bin = config, Path(workdir), caddy_bin
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_listen: str = config["admin"]["listen"]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, ready_timeout: float = 15.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "caddy.json"
        cfg.write_text(json.dumps(self.config, indent=1))
        env = dict(
            os.environ,
            XDG_DATA_HOME=str(self.workdir / "data"),
            XDG_CONFIG_HOME=str(self.workdir / "config"),
            HOME=str(self.workdir),
        )
        with open(self.workdir / "caddy.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.caddy_bin, "run", "--config", str(cfg), "--adapter", ""],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.workdir,
            )
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        admin = CaddyAdmin(self.admin_listen, timeout=2.0)

        @retry(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_delay(timeout),
            wait=wait_exponential(multiplier=0.02, max=0.2),
            reraise=True,
        )
        def ping() -> None:
            if self.proc is not None and self.proc.poll() is not None:
                raise ForgeError(
                    f"caddy exited with {self.proc.returncode}; see {self.workdir / 'caddy.log'}"
                )
            admin.ping()

        try:
            ping()
        finally:
            admin.close()

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of route restoration)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def hosts_dir(data_dir: str | Path) -> Path:
    """Where a proxy host keeps its host map (``forge.proxy.hostmap``), which its Caddy reads."""
    return Path(data_dir).resolve() / "proxy" / "hosts"


def tls_ask_url(api_listen: str) -> str:
    host, _, port = api_listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{host}:{port}/api/v1/tls/ask"


def forge_config(config: Config, kernel: bool, ask_url: str | None = None) -> dict[str, Any]:
    """The whole Caddy config of one proxy host (what Caddy starts from and what the proxy keeps
    loaded): static, whatever apps exist.

    In kernel mode Caddy opens a new upstream connection per request (no upstream keep-alive):
    every request then meets the kernel's current map, so a switch takes effect at once and
    no pooled connection to a stopped release can fail a request. Caddy sends its access log to
    the install's own loopback port (``forge.proxy.accesslog``), where the proxy counts it."""
    return base_config(
        config.http_listen,
        config.effective_caddy_admin,
        config.tls,
        ask_url or tls_ask_url(config.api_listen),
        config.domain,
        https_listen=config.https_listen or None,
        hosts_dir=str(hosts_dir(config.data_dir)),
        upstream_keepalive=not kernel,
        access_log=access_log_address(config.data_dir),
    )
