"""``forge up``: the whole platform on one machine as supervised child processes.

Children: Caddy (``caddy run`` with the generated base config, admin on ``--caddy-admin``),
the API (``forge server``), the controllers (``forge controllers``) and one local agent
(``forge agent`` with a node token minted here). A child that dies is restarted with
back-off (1 s doubling to 30 s) and the restart is logged. SIGINT/SIGTERM stops everything,
the apps included. State lives in the data dir, so a later ``forge up`` brings the same
live releases back from the stored desired state.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from forge.clock import Clock, SystemClock, parse_iso
from forge.config import Config, default_data_dir
from forge.errors import ForgeError, Unavailable
from forge.upguard import UpLock, die_with_parent, owned_by

log = logging.getLogger("forge.up")

READY_TIMEOUT = 60.0


def write_private(path: Path, text: str) -> None:
    """Create or replace a 0600 file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_admin_token(cfg: Config, env: dict[str, str]) -> tuple[str, str]:
    """The admin token and where it came from; generated into a 0600 file when unset."""
    if cfg.admin_token:
        return cfg.admin_token, "$FORGE_ADMIN_TOKEN"
    path = Path(cfg.data_dir) / "admin-token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, str(path)
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token, str(path)


def proxy_metrics_default(listen: str) -> str:
    """The proxy's metrics address when none is given: the port after ``listen``'s (the
    controllers' metrics), on the same host: 127.0.0.1:9110 with forge up's defaults."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 1}"


def cli_hint(data: Path) -> str:
    """How another shell's ``forge`` finds this install (it reads api-url and admin-token here)."""
    env_default = {k: v for k, v in os.environ.items() if k != "FORGE_DATA_DIR"}
    if Path(data).resolve() == default_data_dir(env_default).resolve():
        return f"forge apps, forge status … find this install in {data} (the default data dir)"
    return (
        f"export FORGE_DATA_DIR={data} in other shells (forge reads api-url and admin-token "
        "there), or FORGE_URL and FORGE_ADMIN_TOKEN; see forge --help"
    )


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff: float = 1.0
    ready: Callable[[], bool] | None = None
    started: list[float] = field(default_factory=list)
    started_wall: float = 0.0


class Supervisor:
    def __init__(
        self,
        cfg: Config,
        metrics_listen: str,
        node_name: str,
        env: dict[str, str],
        clock: Clock | None = None,
        controllers_metrics_listen: str | None = None,
        local_agent: bool = True,
        proxy_metrics_listen: str | None = None,
    ) -> None:
        self.cfg, self.metrics_listen, self.node_name = cfg, metrics_listen, node_name
        self.local_agent = local_agent
        self.controllers_metrics_listen = controllers_metrics_listen
        self.proxy_metrics_listen = proxy_metrics_listen or proxy_metrics_default(
            controllers_metrics_listen or metrics_listen
        )
        self.base_env = {k: v for k, v in env.items() if k not in ("FORGE_NODE_TOKEN",)}
        self.clock = clock or SystemClock()
        self.data = Path(cfg.data_dir).resolve()
        self.children: dict[str, Child] = {}
        self.exits: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()
        self.api_url = f"http://{cfg.api_listen}"
        self.caddy_admin = cfg.effective_caddy_admin
        self.lock = UpLock(self.data, self.clock)
        self.lock_fd: int | None = None

    # ------------------------------------------------------------------ children
    def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(child.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            # The child inherits the data dir's lock (held until the last child is gone) and is
            # sent SIGTERM by the kernel if this process dies, however it dies.
            child.proc = subprocess.Popen(
                child.argv,
                env=child.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(self.lock_fd,) if self.lock_fd is not None else (),
                preexec_fn=die_with_parent,
            )  # noqa: PLW1509 - prctl only
        finally:
            out.close()
        self.lock.child_started(child.name, child.proc.pid)
        child.started.append(self.clock.monotonic())
        child.started_wall = self.clock.now()
        proc = child.proc
        threading.Thread(
            target=self._reap, args=(child.name, proc), daemon=True, name=f"reap-{child.name}"
        ).start()
        log.info("started %s (pid %d, log %s)", child.name, proc.pid, child.log_path)

    def _reap(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self.exits.put(name)

    def _wait_ready(self, child: Child, timeout: float = READY_TIMEOUT) -> None:
        deadline = self.clock.monotonic() + timeout
        while self.clock.monotonic() < deadline and not self.stopping.is_set():
            if child.proc is not None and child.proc.poll() is not None:
                raise Unavailable(
                    f"{child.name} exited with {child.proc.returncode} while starting; see {child.log_path}"
                )
            if child.ready is None or child.ready():
                return
            self.stopping.wait(0.1)  # bounded start-up wait for a readiness probe
        if not self.stopping.is_set():
            raise Unavailable(
                f"{child.name} did not become ready within {timeout:.0f}s; see {child.log_path}"
            )

    def _http_ok(self, url: str, headers: dict[str, str] | None = None) -> bool:
        try:
            return httpx.get(url, timeout=1.0, headers=headers).status_code < 400
        except httpx.HTTPError:
            return False

    # ------------------------------------------------------------------ setup
    def prepare(self) -> dict[str, str]:
        self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        from forge.hostperms import private_umask, secure_data_dir

        private_umask()
        secure_data_dir(self.data, self.data / "node" if self.local_agent else None)
        token, where = ensure_admin_token(self.cfg, self.base_env)
        self.admin_token_source = where
        write_private(self.data / "api-url", self.api_url + "\n")
        if not self.cfg.webhook_secret:
            log.warning(
                "FORGE_GITHUB_WEBHOOK_SECRET is not set: every GitHub webhook delivery will be refused"
            )
        from forge.secrets import Keyring

        Keyring.load(self.cfg)  # create the key file once, before several workers race for it
        env = dict(self.base_env)
        env.update(
            FORGE_ADMIN_TOKEN=token,
            FORGE_DATA_DIR=str(self.data),
            FORGE_MODE=self.cfg.mode,
            FORGE_DOMAIN=self.cfg.domain,
            PYTHONUNBUFFERED="1",
        )
        self.admin_token = token
        return env

    def _caddy_child(self) -> Child:
        from forge.proxy.caddy import forge_config, hosts_dir
        from forge.proxy.daemon import caddy_config_file
        from forge.proxy.nft import nft_available
        from forge.proxy.reconcilers import write_caddy_config

        caddy_dir = self.data / "caddy"
        caddy_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(caddy_dir, 0o700)  # the admin socket lives here: only root reaches it
        (self.data / "logs").mkdir(parents=True, exist_ok=True)
        # Caddy starts from the config the proxy keeps: static (no app in it; the host map is on
        # disk), so a Caddy restart serves every app at once.
        conf = forge_config(
            self.cfg, kernel=nft_available() is None, ask_url=f"{self.api_url}/api/v1/tls/ask"
        )
        config_file = caddy_config_file(self.data)
        write_caddy_config(config_file, conf)
        hosts_dir(self.data).mkdir(parents=True, exist_ok=True)
        caddy = shutil.which("caddy")
        if caddy is None:
            raise Unavailable("caddy is not installed (run make setup as root, or apt-get install caddy)")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(caddy_dir),
            "XDG_DATA_HOME": str(caddy_dir / "data"),
            "XDG_CONFIG_HOME": str(caddy_dir / "config"),
        }
        child = Child(
            "caddy",
            [caddy, "run", "--config", str(config_file)],
            env,
            self.data / "logs" / "caddy.log",
        )
        child.ready = lambda: self._owns_port(child, self.cfg.http_listen) and self._caddy_ready()
        return child

    @staticmethod
    def _owns_port(child: Child, listen: str) -> bool:
        """Our child — and nobody else — listens on ``listen``'s port (not a leftover of an earlier run)."""
        if child.proc is None or child.proc.poll() is not None:
            return False
        return owned_by(child.proc.pid, int(listen.rpartition(":")[2]))

    def _caddy_ready(self) -> bool:
        from forge.proxy.caddy import CaddyAdmin

        admin = CaddyAdmin(self.caddy_admin, timeout=1.0)
        try:
            admin.ping()
        except ForgeError:
            return False
        finally:
            admin.close()
        if self.caddy_admin.startswith("unix/"):
            os.chmod(self.caddy_admin[len("unix/") :], 0o600)
        return True

    @staticmethod
    def _metrics_url(listen: str | None) -> str:
        return f"http://{listen}/metrics" if listen else "(not served)"

    def _forge(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "forge", *args]

    def build_children(self, env: dict[str, str]) -> list[Child]:
        logs = self.data / "logs"
        api = Child(
            "api",
            self._forge("server", "--listen", self.cfg.api_listen, "--data-dir", str(self.data)),
            env,
            logs / "api.log",
        )
        api.ready = lambda: (
            self._owns_port(api, self.cfg.api_listen) and self._http_ok(f"{self.api_url}/readyz")
        )
        # The controllers write App.status.url from the domain, TLS mode and listeners.
        ctrl_args = ["controllers", "--data-dir", str(self.data), "--domain", self.cfg.domain]
        ctrl_args += ["--tls", self.cfg.tls, "--http-listen", self.cfg.http_listen]
        if self.cfg.https_listen:
            ctrl_args += ["--https-listen", self.cfg.https_listen]
        if self.controllers_metrics_listen:
            ctrl_args += ["--metrics-listen", self.controllers_metrics_listen]
        ctrl = Child("controllers", self._forge(*ctrl_args), env, logs / "controllers.log")
        return [self._caddy_child(), api, ctrl, self.proxy_child(env)]

    def proxy_child(self, env: dict[str, str]) -> Child:
        """This host's proxy: programs its Caddy, service map and node routes from the records."""
        args = [
            "proxy",
            "--api",
            self.api_url,
            "--data-dir",
            str(self.data),
            "--domain",
            self.cfg.domain,
            "--caddy-admin",
            self.caddy_admin,
            "--tls",
            self.cfg.tls,
            "--http-listen",
            self.cfg.http_listen,
        ]
        if self.cfg.https_listen:
            args += ["--https-listen", self.cfg.https_listen]
        args += ["--metrics-listen", self.proxy_metrics_listen]
        return Child("proxy", self._forge(*args), env, self.data / "logs" / "proxy.log")

    def mint_node_token(self) -> str:
        """The local node's token: the one kept in ``DATA/node-token`` while the API still accepts
        it (an agent of an earlier run is never locked out), else a new one, kept there (0600)."""
        from forge.client import ForgeClient

        path = self.data / "node-token"
        try:
            kept = path.read_text().strip()
        except OSError:
            kept = ""
        if kept:
            try:
                r = httpx.get(
                    f"{self.api_url}/api/v1/nodes/{self.node_name}",
                    timeout=5,
                    headers={"Authorization": f"Bearer {kept}"},
                )
                if r.status_code == 200:
                    return kept
            except httpx.HTTPError:
                pass
        with ForgeClient(self.api_url, self.admin_token) as c:
            token = str(c.request("POST", f"/api/v1/nodes/{self.node_name}/token", json={})["token"])
        write_private(path, token + "\n")
        return token

    def agent_child(self, env: dict[str, str], node_token: str) -> Child:
        agent_env = dict(env)
        agent_env["FORGE_NODE_TOKEN"] = node_token
        argv = self._forge(
            "agent",
            "--api",
            self.api_url,
            "--name",
            self.node_name,
            "--data-dir",
            str(self.data / "node"),
            "--metrics-listen",
            self.metrics_listen,
            "--stop-apps-on-exit",
        )
        child = Child("agent", argv, agent_env, self.data / "logs" / "agent.log")
        child.ready = lambda: self._node_ready(child)
        return child

    def _node_ready(self, child: Child) -> bool:
        """The Node is Ready *by our agent*: its heartbeat is newer than our agent's start."""
        try:
            r = httpx.get(
                f"{self.api_url}/api/v1/nodes/{self.node_name}",
                timeout=1.0,
                headers={"Authorization": f"Bearer {self.admin_token}"},
            )
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        status = r.json().get("status", {})
        beat = status.get("lastHeartbeatTime")
        fresh = bool(beat) and parse_iso(beat) >= child.started_wall - 1.0
        return fresh and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
        )

    # ------------------------------------------------------------------ run
    def start(self) -> None:
        env = self.prepare()
        for child in self.build_children(env):
            self.children[child.name] = child
            self._spawn(child)
            if child.name not in ("controllers", "proxy"):
                self._wait_ready(child)
        if self.local_agent:
            agent = self.agent_child(env, self.mint_node_token())
            self.children[agent.name] = agent
            self._spawn(agent)
            self._wait_ready(agent)
        scheme = "https" if self.cfg.tls != "off" else "http"
        from forge.signin import TTL_SECONDS, mint

        link = f"{self.api_url}/ui#signin={mint(self.data, self.clock)}"
        metrics = f"{self.api_url}/metrics, controllers {self._metrics_url(self.controllers_metrics_listen)}"
        metrics += f", proxy {self._metrics_url(self.proxy_metrics_listen)}"
        nodes = ""
        if self.local_agent:
            metrics += f", agent {self._metrics_url(self.metrics_listen)}"
        else:
            nodes = "  Nodes:      none on this machine (--no-agent); workers join with forge agent (see README)\n"
        print(
            f"Forge is up.\n"
            f"  API:        {self.api_url}   (admin token: {self.admin_token_source})\n"
            f"  Apps:       {scheme}://APP.{self.cfg.domain} via {self.cfg.http_listen}\n"
            f"  Webhook:    {self.api_url}/api/v1/webhook/github\n"
            f"  Dashboard:  {link}\n"
            f"              (a one-time sign-in link, valid {TTL_SECONDS / 60:.0f} min; after that sign in with the token)\n"
            f"  Metrics:    {metrics}\n{nodes}"
            f"  Logs:       {self.data / 'logs'}\n"
            f"  CLI:        {cli_hint(self.data)}\n"
            f"Press Ctrl-C to stop everything.",
            flush=True,
        )

    def supervise(self, stop: threading.Event) -> None:
        def wake() -> None:
            stop.wait()
            self.exits.put("")

        threading.Thread(target=wake, daemon=True).start()
        while not stop.is_set():
            name = self.exits.get()
            if stop.is_set() or not name:
                break
            child = self.children[name]
            code = child.proc.returncode if child.proc else None
            log.warning(
                "%s exited with %s; restarting in %.0fs (restart #%d)",
                name,
                code,
                child.backoff,
                child.restarts + 1,
            )
            if stop.wait(child.backoff):
                break
            up_for = self.clock.monotonic() - (child.started[-1] if child.started else 0)
            child.backoff = 1.0 if up_for > 60 else min(child.backoff * 2, 30.0)
            child.restarts += 1
            try:
                self._spawn(child)
            except OSError as exc:
                log.error("cannot restart %s: %s", name, exc)

    def shutdown(self) -> None:
        """Stop every child at once (each stops its own work: the agent its apps, with their
        stop timeouts), then wait for each; a child past its deadline is killed."""
        self.stopping.set()
        log.info("stopping every child")
        order = ("agent", "proxy", "controllers", "api", "caddy")
        running = [
            c
            for n in order
            if (c := self.children.get(n)) is not None and c.proc is not None and c.proc.poll() is None
        ]
        for child in running:
            assert child.proc is not None
            child.proc.terminate()
        start = self.clock.monotonic()
        for child in running:
            assert child.proc is not None
            budget = (40 if child.name == "agent" else 15) - (self.clock.monotonic() - start)
            try:
                child.proc.wait(timeout=max(0.1, budget))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                child.proc.kill()
                child.proc.wait(timeout=5)
            log.info("stopped %s", child.name)
        self._remove_network()

    def _remove_network(self) -> None:
        """The service table and, should the agent not have done it, the node's namespaces,
        bridge and table: nothing of this install's data plane outlives ``forge up``."""
        from forge.nodeagent.teardown import remove_node_network, unmount_release_disks
        from forge.proxy.nft import NetError, nft_available
        from forge.proxy.noderoutes import NodeRoutes
        from forge.proxy.servicemap import ServiceMap

        try:
            unmount_release_disks(self.data / "node")
        except OSError as exc:
            log.warning("could not unmount the release filesystems: %s", exc)
        if nft_available() is not None:
            return
        try:
            ServiceMap(self.data, self.cfg.service_address).teardown()
            NodeRoutes(self.data).teardown()
            remove_node_network(self.data / "node")
        except (NetError, OSError) as exc:
            log.warning("could not remove all of the data plane: %s", exc)

    def run(self, stop: threading.Event) -> None:
        self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock_fd = self.lock.acquire()  # before anything starts: one forge up per data dir
        try:
            self.start()
            self.supervise(stop)
        except ForgeError as exc:
            log.error("%s", exc.message)
            raise
        finally:
            try:
                self.shutdown()
            finally:
                self.lock.release()
