"""HTTP health probes and the pure state machine that turns probe results into readiness.

``probe()`` does one ``GET http://127.0.0.1:PORT{path}`` (2xx/3xx = success). ``ProbeTracker``
decides from a sequence of results: a success makes the Instance ready; ``retries`` failures in
a row (not counting those inside ``start_period``) make it unready and ask for a restart.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from forge.models import Manifest

from forge.probes import PROBE_USER_AGENT

Verdict = Literal["Ready", "Waiting", "Unhealthy"]

READY: Final[Verdict] = "Ready"
WAITING: Final[Verdict] = "Waiting"
UNHEALTHY: Final[Verdict] = "Unhealthy"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 503", "connection refused", "timed out after 3s"


@dataclass(frozen=True)
class HealthSpec:
    path: str = "/"
    interval_seconds: float = 10.0
    timeout_seconds: float = 3.0
    retries: int = 3
    start_period_seconds: float = 0.0

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> HealthSpec:
        h = manifest.health
        return cls(
            path=h.path if h.path.startswith("/") else "/" + h.path,
            interval_seconds=max(0.2, h.interval_seconds),
            timeout_seconds=max(0.1, h.timeout_seconds),
            retries=max(1, h.retries),
            start_period_seconds=max(0.0, h.start_period_seconds),
        )


def probe(port: int, path: str, timeout: float, host: str = "127.0.0.1") -> ProbeResult:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": PROBE_USER_AGENT, "Connection": "close"})
        resp = conn.getresponse()
        resp.read(65536)
        return ProbeResult(200 <= resp.status < 400, f"HTTP {resp.status}")
    except TimeoutError:
        return ProbeResult(False, f"timed out after {timeout:g}s")
    except ConnectionRefusedError:
        return ProbeResult(False, "connection refused")
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, f"{exc.__class__.__name__}: {exc}"[:200])
    finally:
        conn.close()


@dataclass
class ProbeTracker:
    """Readiness from consecutive probe results; the caller restarts on ``Unhealthy``."""

    retries: int
    start_period_seconds: float = 0.0
    ready: bool = False
    failures: int = 0
    last: str = ""

    def record(self, result: ProbeResult, seconds_since_start: float) -> Verdict:
        self.last = result.detail
        if result.ok:
            self.failures = 0
            self.ready = True
            return READY
        if seconds_since_start < self.start_period_seconds and not self.ready:
            return WAITING
        self.failures += 1
        if self.failures >= self.retries:
            self.ready = False
            return UNHEALTHY
        return WAITING

    def reset(self) -> None:
        self.ready = False
        self.failures = 0
        self.last = ""
