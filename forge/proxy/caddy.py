"""Caddy, driven only through its Admin API: base config, the host map, a client and a child process.

Layout (chosen by measurement, ``bench/route_update.py``). Caddy re-provisions its *whole*
config on every Admin API change, even a PATCH by ``@id`` of one string, so the cost of a
change is set by the size of the whole config (JSON values Caddy re-encodes, decodes and
provisions), not by the size of the PATCH: one route per app (host matcher + its own
``reverse_proxy``) costs about 0.2-0.35 s per change at 5,000 apps here. Forge's server holds
three routes whatever the number of apps:

1. ``@id forge-hostmap`` — a ``vars`` handler carrying the digest of the routing table (so every
   reconcile can tell with one tiny GET whether Caddy still holds what we applied, e.g. after a
   restart) and one ``map``: ``{http.request.host}`` → ONE string per host, its dials packed and
   space-separated (``"10.0.0.5:20001 10.0.0.6:20007"``); unknown hosts map to "".
2. ``@id forge-proxy`` — matches when that string is not empty. A static second ``map`` unpacks
   it with one regexp per replica count N (1..K): slot i = replica ``i % N``, so all K slots
   dial something real and round-robin over them is an even split for N dividing K
   (K = ``UPSTREAM_SLOTS`` = 12: exact for 1, 2, 3, 4, 6 replicas; at most K replicas get
   traffic). ONE ``reverse_proxy`` dials the K slot placeholders, with a short
   ``try_duration`` so a refused connection (an instance that just stopped) is retried on the
   next slot, i.e. the next replica. Passive health checks stay off on purpose: Caddy keys
   upstream health by the *unexpanded* dial string, so one app's dead replica would mark a
   slot down for every app. Readiness is the control plane's job (unready Instances leave the map).
3. ``@id forge-catchall`` — 404 with a short body, never Caddy's empty 200.

Measured (Debian Caddy 2.6.2, 2 cores, median of 10): at 5,000 apps one change costs ~66 ms
with this layout against ~216-350 ms per-app routes in the same run; K dial outputs per host
instead of one packed string cost ~150 ms, so packing is what keeps it in the tens of ms. A
change rewrites ``/id/forge-hostmap/handle`` (digest + map) in one PATCH; patching only the
changed mapping entry saves ~25% but needs a second write for the digest, so one PATCH of the
whole map it is. The map matches hosts by a linear scan per request (microseconds at 5,000).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Final

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

from forge.errors import ForgeError, Invalid, Unavailable

HOSTMAP_ID: Final[str] = "forge-hostmap"
PROXY_ID: Final[str] = "forge-proxy"
CATCHALL_ID: Final[str] = "forge-catchall"
SERVER_NAME: Final[str] = "forge"
NOT_FOUND_BODY: Final[str] = "no app is served at this host\n"
UPSTREAM_SLOTS: Final[int] = 12
PACKED_VAR: Final[str] = "forge_upstreams"
TLS_MODES: Final[tuple[str, ...]] = ("off", "internal", "on-demand")
ADMIN_SOCKET_HOST: Final[str] = "caddy-admin"

Routes = dict[str, list[str]]  # host -> sorted dial addresses ("10.0.0.5:20001")


def slot_var(i: int) -> str:
    return f"forge_up{i}"


def ph(name: str) -> str:
    return "{" + name + "}"


def routes_digest(routes: Routes) -> str:
    """A stable digest of a routing table, stored beside the map in Caddy."""
    text = json.dumps(sorted((h, sorted(d)) for h, d in routes.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def pack(dials: list[str], slots: int = UPSTREAM_SLOTS) -> str:
    """One host's map output: its (first ``slots``) dials, space-separated."""
    return " ".join(sorted(dials)[:slots])


def hostmap_handlers(routes: Routes, slots: int = UPSTREAM_SLOTS) -> list[dict[str, Any]]:
    """The ``handle`` list of the ``forge-hostmap`` route: digest vars + the host map."""
    return [
        {"handler": "vars", "forge_routes": routes_digest(routes)},
        {
            "handler": "map",
            "source": "{http.request.host}",
            "destinations": [ph(PACKED_VAR)],
            "defaults": [""],
            "mappings": [
                {"input": host, "outputs": [pack(dials, slots)]}
                for host, dials in sorted(routes.items())
                if dials
            ],
        },
    ]


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
    routes: Routes, slots: int = UPSTREAM_SLOTS, upstream_keepalive: bool = True
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
    return [
        {"@id": HOSTMAP_ID, "handle": hostmap_handlers(routes, slots)},
        {
            "@id": PROXY_ID,
            "match": [{"not": [{"vars": {ph(PACKED_VAR): [""]}}]}],
            "handle": [slot_map(slots), proxy],
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
    routes: Routes | None = None,
    slots: int = UPSTREAM_SLOTS,
    upstream_keepalive: bool = True,
) -> dict[str, Any]:
    """The whole Caddy JSON config Forge runs with (``routes`` empty unless given).

    ``tls_mode``: ``off`` (plain HTTP on ``http_listen``), ``internal`` (also HTTPS on
    ``https_listen`` with certificates from Caddy's internal CA, issued on demand for hosts the
    ask endpoint approves) or ``on-demand`` (the same with Caddy's default ACME issuers).
    ``domain`` is informational here: which hosts are served is decided by the map alone.
    """
    if tls_mode not in TLS_MODES:
        raise Invalid(f"tls mode {tls_mode!r} must be one of {', '.join(TLS_MODES)}")
    server: dict[str, Any] = {
        "listen": [http_listen],
        "routes": server_routes(routes or {}, slots, upstream_keepalive),
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
    admin: dict[str, Any] = {"listen": admin_listen, "config": {"persist": False}}
    if admin_listen.startswith("unix/"):
        # Caddy checks the Host header even on a socket; this is the name our client sends.
        admin["origins"] = [ADMIN_SOCKET_HOST]
    # Every Admin API request is counted by Caddy itself: caddy_admin_http_requests_total
    # {method, path} on the admin endpoint's /metrics (how tests count config writes).
    return {"admin": admin, "logging": {"logs": {"default": {"level": "WARN"}}}, "apps": apps}


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
