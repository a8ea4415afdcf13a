"""How a node agent's health-check requests are told apart in an app's own log.

The prober (``forge.nodeagent.prober``) sends ``User-Agent: forge-agent-probe``; an access log
that records user agents (gunicorn's, nginx's, Caddy's) shows it. Many do not (uvicorn's,
Python's ``http.server``, Django's runserver), so a line that names the release's health path as
a request path (``"GET /health HTTP/1.1"``, ``request /health``) counts as one too — except when
that path is ``/``, which real visitors ask for just as often: there only the user agent tells.
Changing the probe's path or method to mark it would break apps that compare the path exactly,
so the mark stays the user agent. The logs API hides these lines when asked (``probes=false``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

PROBE_USER_AGENT: Final[str] = "forge-agent-probe"


@lru_cache(maxsize=256)
def _path_pattern(path: str) -> re.Pattern[str]:
    # The path as a whole request target: after a space, quote or start, before a space, quote,
    # query string or end ("/health" matches "GET /health?x HTTP/1.1", not "/healthz" or "/x/health").
    return re.compile(r"(?:^|[\s\"'])" + re.escape(path) + r"(?:[\s\"'?]|$)")


def is_probe_line(line: str, health_path: str | None) -> bool:
    """Whether an app's log line records one of the agent's health checks."""
    if PROBE_USER_AGENT in line:
        return True
    if not health_path or health_path == "/":
        return False
    return _path_pattern(health_path).search(line) is not None
