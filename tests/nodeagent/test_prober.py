"""Health probes: the readiness state machine and real HTTP probes on loopback."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from forge.manifest import parse_manifest
from forge.nodeagent.prober import READY, UNHEALTHY, WAITING, HealthSpec, ProbeResult, ProbeTracker, probe

OK, BAD = ProbeResult(True, "HTTP 200"), ProbeResult(False, "HTTP 503")


@pytest.mark.parametrize(
    ("retries", "start_period", "results", "expected", "ready"),
    [
        (3, 0, [OK], [READY], True),
        (3, 0, [BAD, BAD, BAD], [WAITING, WAITING, UNHEALTHY], False),
        (3, 0, [BAD, BAD, OK, BAD, BAD], [WAITING, WAITING, READY, WAITING, WAITING], True),
        (1, 0, [OK, BAD], [READY, UNHEALTHY], False),
        (2, 5, [BAD, BAD, BAD], [WAITING, WAITING, WAITING], False),
    ],
    ids=["success-ready", "retries-failures-unhealthy", "success-resets-count", "ready-then-fail", "start-period"],
)
def test_tracker(retries: int, start_period: float, results: list[ProbeResult], expected: list[str],
                 ready: bool) -> None:
    """Success → ready; `retries` failures in a row → unhealthy; failures inside start_period don't count."""
    t = ProbeTracker(retries, start_period)
    got = [t.record(r, seconds_since_start=1.0) for r in results]
    assert got == expected and t.ready is ready


def test_adopted_ready_instance_stays_ready_until_retries_fail() -> None:
    """An adopted tracker starts from the last known readiness and does not flip on one failure."""
    t = ProbeTracker(3, 0, ready=True)
    assert t.record(BAD, 100) == WAITING and t.ready
    assert t.record(BAD, 100) == WAITING and t.ready
    assert t.record(BAD, 100) == UNHEALTHY and not t.ready


@pytest.mark.parametrize(
    ("manifest", "spec"),
    [
        ("run: {command: x}", HealthSpec()),
        ("run: {command: x}\nhealth: {path: /h, interval: 2s, timeout: 1s, retries: 5, start_period: 4s}",
         HealthSpec("/h", 2, 1, 5, 4)),
        ("run: {command: x}\nhealth: {path: /x, interval: 3s}", HealthSpec("/x", 3, 3, 3, 0)),
    ],
    ids=["defaults", "all-set", "timeout-follows-a-short-interval"],
)
def test_health_spec_from_manifest(manifest: str, spec: HealthSpec) -> None:
    """The probe settings are read from the release's validated manifest."""
    assert HealthSpec.from_manifest(parse_manifest(manifest)) == spec


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        code = {"/ok": 200, "/redirect": 302, "/bad": 500}.get(self.path, 404)
        if self.path == "/slow":
            threading.Event().wait(2)
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(
    ("path", "ok", "detail"),
    [("/ok", True, "HTTP 200"), ("/redirect", True, "HTTP 302"), ("/bad", False, "HTTP 500"),
     ("/missing", False, "HTTP 404"), ("/slow", False, "timed out after 0.3s")],
    ids=["2xx", "3xx", "5xx", "4xx", "timeout"],
)
def test_real_probe(server: int, path: str, ok: bool, detail: str) -> None:
    """2xx/3xx succeed; other statuses and timeouts fail with a readable detail."""
    assert probe(server, path, 0.3) == ProbeResult(ok, detail)


def test_probe_refused() -> None:
    """Nothing listening → connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert probe(port, "/", 1.0) == ProbeResult(False, "connection refused")
