"""``forge server``: the API under gunicorn, started from Python (no command-line gunicorn).

Workers are ``gthread`` so a long watch or log stream holds one thread, not a whole worker;
``threads`` per worker bounds how many streams plus requests a worker serves at once. The app
is not preloaded: every worker builds its own app after the fork, and with it its own store
connection (``open_store(config.effective_store_url)``) and its own metrics registry. The
keyring is loaded once in the master first, so the workers never race to create the key file.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from prometheus_client.multiprocess import mark_process_dead

from forge.api.metrics import MULTIPROC_ENV
from forge.config import Config
from forge.errors import Invalid

log = logging.getLogger(__name__)

GRACEFUL_TIMEOUT = 5  # open streams end within 0.5 s of a stop; this bounds ordinary requests


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"--listen {listen!r} must be HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class ForgeApiServer(BaseApplication):
    def __init__(
        self, config: Config, options: dict[str, Any], stream_cap_seconds: float | None = None
    ) -> None:
        self.forge_config = config
        self.stream_cap_seconds = stream_cap_seconds
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        """In the worker, after gunicorn installed its signal handlers: wrap the stop signals so
        that open watch and log streams end at once instead of holding the stop for their timeout."""
        from forge.api.app import create_app

        closing = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                closing.set()
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)
        threads = int(self.options.get("threads") or 1)
        return create_app(
            self.forge_config,
            stream_cap_seconds=self.stream_cap_seconds,
            closing=closing,
            max_streams=max_streams(threads),
        )


def max_streams(threads: int) -> int:
    """Watch/log streams one worker holds at most: a quarter of its threads (at least 2) stay
    for plain requests. 200 nodes each holding a watch need ``--threads`` ≥ 134 per worker of 2."""
    return max(1, threads - max(2, threads // 4))


def gunicorn_options(listen: str, workers: int, threads: int) -> dict[str, Any]:
    host, port = parse_listen(listen)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "bind": [bind],
        "workers": max(1, workers),
        "threads": max(1, threads),
        "worker_class": "gthread",
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "timeout": 60,
        "keepalive": 5,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "forge-server",
        "limit_request_line": 8190,
        "forwarded_allow_ips": "127.0.0.1",
        # gunicorn >= 23 opens a control socket at a fixed per-user path; several servers
        # (tests, forge up beside forge server) would fight over it, and Forge does not use it.
        "control_socket_disable": True,
    }


def serve(
    config: Config,
    listen: str = "127.0.0.1:8080",
    workers: int = 2,
    threads: int = 8,
    stream_cap_seconds: float | None = None,
) -> None:
    """Run the API until SIGINT/SIGTERM (gunicorn's master handles signals and graceful stop)."""
    options = gunicorn_options(listen, workers, threads)
    metrics_dir = prepare_multiprocess_metrics(config)
    options["child_exit"] = lambda _server, worker: mark_process_dead(worker.pid, str(metrics_dir))
    options["worker_exit"] = end_worker_now
    _prepare(config)
    log.info("forge API on http://%s with %d worker(s) x %d thread(s)", listen, workers, threads)
    ForgeApiServer(config, options, stream_cap_seconds).run()


def end_worker_now(_server: Any, _worker: Any) -> None:
    """A worker that stopped cleanly (SystemExit 0: its requests are done) ends at once instead
    of tearing its modules down, which takes 0.5 s and more on a loaded machine while the master
    — and forge up's Ctrl-C — wait. Any other exit keeps its status (gunicorn reads it)."""
    exc = sys.exc_info()[1]
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)


def prepare_multiprocess_metrics(config: Config) -> Path:
    """An empty directory for this server's workers' metric files, in the environment the
    workers inherit, before any of them exists (prometheus_client picks its value class then).

    Not in the data dir: the files are memory-mapped, and a page of one that the filesystem
    cannot back (the data dir's disk full) kills the worker with SIGBUS. ``/dev/shm`` (memory)
    when there is one, else the system's temp dir; removed when the server stops."""
    from prometheus_client import values

    shm = Path("/dev/shm")
    path = Path(
        tempfile.mkdtemp(
            prefix=f"forge-api-metrics-{os.getpid()}-",
            dir=str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None,
        )
    )
    master = os.getpid()

    def remove() -> None:
        # Workers are forked from here and inherit this handler: a worker that exits (a restart,
        # a timeout) must not delete the files the others still write.
        if os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    os.environ[MULTIPROC_ENV] = str(path)
    values.ValueClass = values.get_value_class()
    return path


def _prepare(config: Config) -> None:
    """Create the store schema and the key file once, before any worker exists."""
    from forge.store.factory import open_store

    store = open_store(config.effective_store_url)
    store.close()
    try:
        from forge.secrets import Keyring
    except ModuleNotFoundError as exc:
        if exc.name != "forge.secrets":
            raise
        return
    Keyring.load(config)


def main(argv: list[str] | None = None) -> None:
    """``python -m forge.api.server --listen H:P --data-dir D`` (tests and bench; the CLI has ``forge server``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m forge.api.server")
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--max-stream-seconds",
        type=float,
        default=None,
        help="clamp watch and log streams (tests; clients re-watch anyway)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(
        Config.from_env(data_dir=args.data_dir),
        args.listen,
        args.workers,
        args.threads,
        args.max_stream_seconds,
    )


if __name__ == "__main__":
    main()
