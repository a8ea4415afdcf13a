"""Long-running verbs: ``forge server``, ``forge controllers``, ``forge agent``, ``forge up``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import click

from forge.cli import cli
from forge.config import Config
from forge.errors import Invalid


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the rest


def check_listen(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint=what)
    return value


def check_admin(value: str, what: str) -> str:
    """Caddy's admin address: HOST:PORT, or a unix socket as ``unix//PATH`` (or a plain absolute path)."""
    if value.startswith("/"):
        return "unix/" + value
    if value.startswith("unix//"):
        return value
    return check_listen(value, what)


def exit_now() -> None:
    """End a daemon whose work is done, skipping the interpreter's teardown of its modules:
    that alone takes 0.5 s and more on a loaded machine, and forge up's Ctrl-C waits on it.
    Everything it must leave behind is written (logs flushed here; state files are fsynced)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help=(
        "Where Forge keeps its store, keys and releases (default: $FORGE_DATA_DIR, else "
        "/var/lib/forge as root, else ~/.local/share/forge)."
    ),
)


def load_config(data_dir: str | None, **overrides: Any) -> Config:
    from forge.hostperms import private_umask

    private_umask()  # records, logs, keys, tokens: Forge's user only (forge.hostperms)
    cfg = Config.from_env(data_dir=data_dir, **overrides)
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    return cfg


@cli.command()
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for the API.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=32,
    show_default=True,
    help="Threads per worker; each open watch or log stream holds one.",
)
@DATA_DIR
def server(listen: str, workers: int, threads: int, data_dir: str | None) -> None:
    """Serve the Forge API (falcon under gunicorn)."""
    from forge.api.server import serve

    setup_logging()
    cfg = load_config(data_dir, api_listen=check_listen(listen, "--listen"))
    from forge.hostperms import secure_data_dir

    node_dir = Path(cfg.data_dir) / "node"
    secure_data_dir(Path(cfg.data_dir), node_dir if node_dir.is_dir() else None)
    serve(cfg, listen=listen, workers=workers, threads=threads)


@cli.command()
@DATA_DIR
@click.option("--metrics-listen", default=None, help="HOST:PORT to serve controller metrics on.")
@click.option("--domain", default=None, help="Apps are served at APP.DOMAIN.")
@click.option(
    "--caddy-admin",
    default=None,
    help="Caddy Admin API: unix//PATH or HOST:PORT (default: DATA_DIR/caddy/admin.sock).",
)
@click.option("--tls", type=click.Choice(["off", "internal", "on-demand"]), default=None)
@click.option(
    "--http-listen",
    default=None,
    help="Where Caddy serves apps (used when the router rebuilds Caddy's config).",
)
@click.option("--https-listen", default=None, help="Where Caddy serves HTTPS when --tls is on.")
@click.option("--api-listen", default=None, help="The API's HOST:PORT (Caddy's on-demand TLS asks it).")
@click.option(
    "--lease-seconds",
    envvar="FORGE_LEADER_LEASE_SECONDS",
    type=click.FloatRange(3, 300),
    default=15.0,
    show_default=True,
    help="Leader lease: a standby takes over this long after the leader stops renewing.",
)
def controllers(
    data_dir: str | None,
    metrics_listen: str | None,
    domain: str | None,
    caddy_admin: str | None,
    tls: str | None,
    http_listen: str | None,
    https_listen: str | None,
    api_listen: str | None,
    lease_seconds: float,
) -> None:
    """Run the controllers (leader-elected) against the store."""
    from forge.clock import SystemClock
    from forge.controllers.manager import run_controllers
    from forge.store import open_store

    setup_logging()
    overrides: dict[str, object] = {}
    if domain:
        overrides["domain"] = domain
    if caddy_admin:
        overrides["caddy_admin"] = check_admin(caddy_admin, "--caddy-admin")
    if tls:
        overrides["tls"] = tls
    for key, value in (
        ("http_listen", http_listen),
        ("https_listen", https_listen),
        ("api_listen", api_listen),
    ):
        if value:
            overrides[key] = check_listen(value, "--" + key.replace("_", "-"))
    cfg = load_config(data_dir, **overrides)
    stop = stop_on_signals()
    store = open_store(cfg.effective_store_url)
    try:
        run_controllers(
            cfg,
            store,
            SystemClock(),
            stop,
            lease_seconds=lease_seconds,
            metrics_listen=check_listen(metrics_listen, "--metrics-listen") if metrics_listen else None,
        )
    finally:
        store.close()
    exit_now()


@cli.command()
@click.option("--api", "api_url", required=True, help="URL of the Forge API (any control-plane host).")
@click.option(
    "--token",
    envvar="FORGE_ADMIN_TOKEN",
    required=True,
    help="The admin token (or $FORGE_ADMIN_TOKEN, which keeps it out of the process list).",
)
@DATA_DIR
@click.option("--domain", default=None, help="Apps are served at APP.DOMAIN (as the control plane's).")
@click.option(
    "--caddy-admin",
    default=None,
    help="This host's Caddy Admin API: unix//PATH or HOST:PORT (default: DATA_DIR/caddy/admin.sock).",
)
@click.option("--tls", type=click.Choice(["off", "internal", "on-demand"]), default=None)
@click.option("--http-listen", default=None, help="Where this host's Caddy serves apps.")
@click.option("--https-listen", default=None, help="Where this host's Caddy serves HTTPS when --tls is on.")
@click.option("--metrics-listen", default=None, help="HOST:PORT to serve the proxy's metrics on.")
def proxy(
    api_url: str,
    token: str,
    data_dir: str | None,
    domain: str | None,
    caddy_admin: str | None,
    tls: str | None,
    http_listen: str | None,
    https_listen: str | None,
    metrics_listen: str | None,
) -> None:
    """Program this host's Caddy, service map and node routes from the records (one per serving host)."""
    from forge.clock import SystemClock
    from forge.proxy.daemon import run_proxy

    setup_logging()
    overrides: dict[str, object] = {}
    if domain:
        overrides["domain"] = domain.lower()
    if caddy_admin:
        overrides["caddy_admin"] = check_admin(caddy_admin, "--caddy-admin")
    if tls:
        overrides["tls"] = tls
    for key, value in (("http_listen", http_listen), ("https_listen", https_listen)):
        if value:
            overrides[key] = check_listen(value, "--" + key.replace("_", "-"))
    os.environ.pop("FORGE_ADMIN_TOKEN", None)
    cfg = load_config(data_dir, **overrides)
    stop = stop_on_signals()
    run_proxy(
        cfg,
        api_url.rstrip("/"),
        token,
        stop,
        SystemClock(),
        metrics_listen=check_listen(metrics_listen, "--metrics-listen") if metrics_listen else None,
    )


@cli.command()
@click.option("--api", "api_url", required=True, help="URL of the Forge API.")
@click.option(
    "--token",
    envvar="FORGE_NODE_TOKEN",
    required=True,
    help="Node join token (or $FORGE_NODE_TOKEN, which keeps it out of the process list).",
)
@click.option("--name", default=None, help="Node name (default: the hostname).")
@DATA_DIR
@click.option(
    "--address", default="127.0.0.1", show_default=True, help="Address the router dials this node's apps on."
)
@click.option("--metrics-listen", default="127.0.0.1:9108", show_default=True)
@click.option(
    "--instance-subnet",
    envvar="FORGE_INSTANCE_SUBNET",
    default="",
    help="IPv4 network (/16-/28) this node's Instances get addresses from (default: a free /24 of 10.213.0.0/16).",
)
@click.option(
    "--app-host-ports",
    envvar="FORGE_APP_HOST_PORTS",
    default="",
    help="Host TCP ports apps may reach at their gateway address, e.g. 5432,6379 (default: none).",
)
@click.option(
    "--build-env",
    envvar="FORGE_BUILD_ENV",
    default="",
    help="Names of this agent's environment variables builds get, e.g. PIP_INDEX_URL,NPM_CONFIG_REGISTRY.",
)
@click.option(
    "--build-files",
    envvar="FORGE_BUILD_FILES",
    default="",
    help="Host files bound read-only into builds: /etc/pip.conf,/root/.npmrc:/etc/npmrc.",
)
@click.option(
    "--build-cache-size",
    envvar="FORGE_BUILD_CACHE_SIZE",
    default="4G",
    help="What all Apps' build caches on this node may hold together (least recently used go first).",
)
@click.option(
    "--proxy-from",
    envvar="FORGE_PROXY_FROM",
    default=None,
    help="IPv4 addresses/networks the proxy dials this node's Instances from, e.g. 10.0.0.2 "
    "(default: the API host's address unless it is loopback; with several control-plane hosts list them all).",
)
@click.option(
    "--log-cap",
    envvar="FORGE_LOG_CAP",
    default="64M",
    show_default=True,
    help="Bytes of log kept on this node per Instance log and per build log (rotations included); "
    "output past it, or past 10,000 lines in 30 s, is dropped where it is made, with a marker line.",
)
@click.option(
    "--stop-apps-on-exit",
    is_flag=True,
    help="Stop this node's apps when the agent exits (forge up); by default they keep serving.",
)
def agent(
    api_url: str,
    token: str,
    name: str | None,
    data_dir: str | None,
    address: str,
    metrics_listen: str,
    instance_subnet: str,
    app_host_ports: str,
    build_env: str,
    build_files: str,
    build_cache_size: str,
    proxy_from: str | None,
    log_cap: str,
    stop_apps_on_exit: bool,
) -> None:
    """Run the node agent: build and supervise this machine's Instances."""
    from forge.clock import SystemClock
    from forge.manifest import parse_size
    from forge.nodeagent.agent import run_agent
    from forge.nodeagent.network import (
        parse_build_env,
        parse_build_files,
        parse_ports,
        parse_proxy_sources,
        parse_subnet,
    )
    from forge.nodeagent.teardown import remove_node_network, stop_local_apps, unmount_release_disks

    setup_logging()
    ports = parse_ports(app_host_ports)
    builds_env = parse_build_env(build_env, dict(os.environ))
    builds_files = parse_build_files(build_files)
    try:
        cache_size = parse_size(build_cache_size)
    except ValueError as exc:
        raise Invalid(f"FORGE_BUILD_CACHE_SIZE: {exc}") from None
    proxies = parse_proxy_sources(proxy_from) if proxy_from is not None else None
    log_cap_bytes = parse_log_cap(log_cap)
    if not token.startswith("forge-node."):
        raise Invalid("--token is not a node token (mint one with: forge nodes token create NAME)")
    os.environ.pop("FORGE_NODE_TOKEN", None)  # nothing the agent starts may inherit it
    cfg = load_config(data_dir)
    if instance_subnet:
        parse_subnet(instance_subnet, cfg.pool)
    node = name or socket.gethostname().lower()
    stop = stop_on_signals()
    early: threading.Thread | None = None
    if stop_apps_on_exit:
        # Ask the apps to stop the moment the agent is (while its threads wind down): most exit on
        # SIGTERM at once. The pass after run_agent returns catches anything restarted meanwhile.

        def stop_early() -> None:
            stop.wait()
            stop_local_apps(Path(cfg.data_dir), node)

        early = threading.Thread(target=stop_early, name="forge-stop-apps", daemon=True)
        early.start()
    run_agent(
        api_url=api_url,
        token=token,
        name=node,
        data_dir=str(cfg.data_dir),
        address=address,
        metrics_listen=check_listen(metrics_listen, "--metrics-listen"),
        mode=cfg.mode,
        git_url_template=cfg.git_url_template,
        stop_event=stop,
        clock=SystemClock(),
        instance_subnet=instance_subnet,
        instance_pool=cfg.instance_pool,
        app_host_ports=ports,
        build_env=builds_env,
        build_files=builds_files,
        build_cache_size=cache_size,
        proxy_sources=proxies,
        log_cap_bytes=log_cap_bytes,
        **usage_interval(),
    )
    if stop_apps_on_exit:
        clock = SystemClock()
        t0 = clock.monotonic()
        if early is not None:
            early.join()
        stop_local_apps(Path(cfg.data_dir), node)
        t1 = clock.monotonic()
        remove_node_network(Path(cfg.data_dir))
        t2 = clock.monotonic()
        unmount_release_disks(Path(cfg.data_dir))
        logging.getLogger("forge.agent").info(
            "on exit: apps stopped in %.2fs, network removed in %.2fs, disks unmounted in %.2fs",
            t1 - t0,
            t2 - t1,
            clock.monotonic() - t2,
        )
    exit_now()


def usage_interval() -> dict[str, float]:
    """Tests only: ``FORGE_TEST_USAGE_SECONDS`` makes the agent sample its Instances' usage more
    often than every 10 s (the production interval, which nothing else changes)."""
    raw = os.environ.get("FORGE_TEST_USAGE_SECONDS", "")
    if not raw:
        return {}
    try:
        seconds = float(raw)
    except ValueError:
        raise Invalid(f"FORGE_TEST_USAGE_SECONDS={raw!r} is not a number of seconds") from None
    if not 0.5 <= seconds <= 10:
        raise Invalid(f"FORGE_TEST_USAGE_SECONDS={raw!r} must be between 0.5 and 10")
    return {"usage_seconds": seconds}


def parse_log_cap(value: str) -> int:
    """``--log-cap`` as bytes: a size (64M, 1G), at least 1 MiB."""
    from forge.manifest import parse_size
    from forge.nodeagent.logwriter import MIN_CAP

    try:
        cap = parse_size(value)
    except ValueError as exc:
        raise Invalid(f"--log-cap: {exc}") from None
    if cap < MIN_CAP:
        raise Invalid(f"--log-cap: {value} is below the minimum of 1M")
    return cap


@cli.command()
@DATA_DIR
@click.option("--api-listen", default="127.0.0.1:8080", show_default=True)
@click.option("--http-listen", default="127.0.0.1:8000", show_default=True, help="Where Caddy serves apps.")
@click.option(
    "--caddy-admin",
    default="",
    help="Caddy's Admin API: HOST:PORT, or unix//PATH "
    "(default: a 0600 unix socket DATA_DIR/caddy/admin.sock that no app can reach).",
)
@click.option("--domain", default="localhost", show_default=True, help="Apps are served at APP.DOMAIN.")
@click.option(
    "--tls",
    type=click.Choice(["off", "internal", "on-demand"]),
    default="off",
    show_default=True,
    help="internal: HTTPS with Caddy's internal CA (testable offline); on-demand: ACME with the tls/ask gate.",
)
@click.option(
    "--https-listen",
    default=None,
    help="Where Caddy serves HTTPS with --tls (default: HTTP port + 443, or :443).",
)
@click.option(
    "--metrics-listen", default="127.0.0.1:9108", show_default=True, help="The local agent's metrics."
)
@click.option(
    "--controllers-metrics-listen",
    default="127.0.0.1:9109",
    show_default=True,
    help="The controllers' metrics (reconciles, queue depth, router).",
)
@click.option("--node-name", default=None, help="Name of the local node (default: the hostname).")
@click.option(
    "--store-url",
    envvar="FORGE_STORE_URL",
    default="",
    help="An external store, postgresql://USER@HOST/DB (default: SQLite in the data dir).",
)
@click.option(
    "--no-agent",
    is_flag=True,
    help="Control plane only (API, controllers, Caddy): this machine runs no apps; workers join with forge agent.",
)
def up(
    data_dir: str | None,
    api_listen: str,
    http_listen: str,
    caddy_admin: str,
    domain: str,
    tls: str,
    https_listen: str | None,
    metrics_listen: str,
    controllers_metrics_listen: str,
    node_name: str | None,
    store_url: str,
    no_agent: bool,
) -> None:
    """Everything on one machine: API, controllers, a local agent and Caddy."""
    from forge.up import Supervisor

    setup_logging()
    if store_url:
        from forge.store import open_store

        if not store_url.startswith(("postgresql://", "postgres://", "sqlite://")):
            raise Invalid("--store-url must be postgresql://… or sqlite:///PATH")
        probe = open_store(
            store_url
        )  # a clear error now (unreachable, bad credentials), not in a child's log
        probe.close()
        os.environ["FORGE_STORE_URL"] = store_url  # the API and controllers get it through the environment
    cfg = load_config(
        data_dir,
        api_listen=check_listen(api_listen, "--api-listen"),
        http_listen=check_listen(http_listen, "--http-listen"),
        caddy_admin=check_admin(caddy_admin, "--caddy-admin") if caddy_admin else "",
        domain=domain.lower(),
        tls=tls,
        https_listen=check_listen(https_listen, "--https-listen") if https_listen else None,
    )
    sup = Supervisor(
        cfg,
        metrics_listen=check_listen(metrics_listen, "--metrics-listen"),
        node_name=node_name or socket.gethostname().lower(),
        env=dict(os.environ),
        controllers_metrics_listen=check_listen(controllers_metrics_listen, "--controllers-metrics-listen"),
        local_agent=not no_agent,
    )
    stop = stop_on_signals()
    sup.run(stop)
    exit_now()  # everything is stopped and cleaned up: Ctrl-C should not wait on the teardown
