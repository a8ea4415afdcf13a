"""A private git remote for tests (holds no tests): ``git http-backend`` behind a tiny WSGI
wrapper on loopback that demands HTTP Basic auth (user ``x-access-token``, password = the token)
and answers 401 otherwise, like GitHub does for a private repository.

While it serves a request, the git client that made it is alive, so the wrapper also scans every
``/proc/*/cmdline`` for the token and records where it appears (it never should).
"""

from __future__ import annotations

import base64
import hmac
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
USER = "x-access-token"
URL_TEMPLATE = "http://127.0.0.1:{port}/{{full_name}}.git"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        return


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def cmdlines_containing(secret: str) -> list[str]:
    """Every live process whose argv holds ``secret`` (as ``pid: argv``)."""
    hits = []
    needle = secret.encode()
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = path.read_bytes()
        except OSError:
            continue  # the process ended between listing and reading
        if needle in raw:
            argv = raw.replace(b"\0", b" ").decode(errors="replace")
            hits.append(f"{path.parent.name}: {argv}")
    return hits


class PrivateGitServer:
    """Serves the bare repositories under ``root`` (``root/OWNER/NAME.git``) to ``token`` only."""

    def __init__(self, root: Path, token: str, reflect: bool = True) -> None:
        # reflect: a 401 body repeats the password it was sent (git prints it as "remote: ..."),
        # so a test sees whether the caller scrubs git's output.
        self.root, self.token, self.reflect = Path(root), token, reflect
        self.requests: list[tuple[str, int]] = []  # (path, status) of every request
        self.argv_leaks: list[str] = []
        self._lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self._app, server_class=_ThreadingWSGIServer,
                                  handler_class=_QuietHandler)
        self.port = int(self.server.server_address[1])
        self.url_template = URL_TEMPLATE.format(port=self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> PrivateGitServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statuses(self) -> list[int]:
        with self._lock:
            return [s for _, s in self.requests]

    def _password(self, header: str) -> tuple[str, str] | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user, password

    def _record(self, path: str, status: int) -> None:
        leaks = cmdlines_containing(self.token)
        with self._lock:
            self.requests.append((path, status))
            self.argv_leaks.extend(leaks)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        sent = self._password(environ.get("HTTP_AUTHORIZATION", ""))
        if sent is None or sent[0] != USER or not hmac.compare_digest(sent[1].encode(), self.token.encode()):
            self._record(path, 401)
            text = f"unauthorized: {sent[1]}\n" if sent and self.reflect else "unauthorized\n"
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="forge-test"'),
                                                ("Content-Type", "text/plain"), ("Content-Length", str(len(text)))])
            return [text.encode()]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi_env = {
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH": "/usr/bin:/bin",
            "PATH_INFO": path, "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "REQUEST_METHOD": environ["REQUEST_METHOD"], "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": USER, "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": environ.get("HTTP_GIT_PROTOCOL", ""),
            "HTTP_CONTENT_ENCODING": environ.get("HTTP_CONTENT_ENCODING", ""),
        }
        proc = subprocess.run([HTTP_BACKEND], input=body, env=cgi_env, capture_output=True, timeout=60, check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        self._record(path, int(status.split()[0]))
        start_response(status, [*headers, ("Content-Length", str(len(payload)))])
        return [payload]


def bare_copy(src: Path, dest: Path) -> None:
    """A bare clone of the working repo ``src`` at ``dest`` (what http-backend serves)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(dest)], check=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(dest.parent), "GIT_CONFIG_NOSYSTEM": "1"})
