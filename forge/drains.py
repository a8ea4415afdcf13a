"""Log drains: where an App's log lines are sent besides the control plane (``forge drains``).

A drain is a record of its own (``LogDrain``, name ``APP-ID``), one per (App, URL): desired
state written by the API, delivered by the node agents that run the App's Instances
(``forge.nodeagent.drains``). Three kinds of URL:

- ``syslog+tcp://HOST:PORT`` — RFC 5424 messages, RFC 6587 octet-counting framing;
- ``syslog+tls://HOST:PORT`` — the same over TLS (RFC 5425), the server's certificate verified
  against the system's trust store plus, when the agent's ``FORGE_DRAIN_CA_FILE`` names one,
  the operator's own CA (PEM);
- ``https://…`` — batches POSTed like Heroku's HTTPS drains (``application/logplex-1``).

A URL may carry credentials (``https://user:token@host/…``, ``?token=…``): the whole URL is
sealed at rest like a Secret and only the agents of nodes running the App receive it in
plaintext. Everything shown to people (CLI, API responses, Events, logs, errors) is the masked
form from ``mask_url``. The ID is a digest of (app, URL) so the CLI can name a drain by its
URL without the API ever returning the URL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from forge.models import is_dns_name

SCHEMES: Final[tuple[str, ...]] = ("syslog+tcp", "syslog+tls", "https")
MAX_URL: Final[int] = 2048
MAX_DRAINS_PER_APP: Final[int] = 10
MASK: Final[str] = "***"


@dataclass(frozen=True)
class DrainUrl:
    scheme: str
    host: str
    port: int
    path: str  # https only: path and query, as sent
    username: str
    password: str

    @property
    def is_syslog(self) -> bool:
        return self.scheme.startswith("syslog+")

    @property
    def tls(self) -> bool:
        return self.scheme in ("syslog+tls", "https")


def parse_url(url: str) -> DrainUrl:
    """A drain URL, checked; ValueError with a message fit for people (never echoing secrets)."""
    if not isinstance(url, str) or not url:
        raise ValueError("a drain URL is required")
    if len(url) > MAX_URL:
        raise ValueError(f"a drain URL has at most {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("a drain URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(
            "not a URL (use syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT or https://…)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme or '(none)'!r} is not one of {', '.join(SCHEMES)}")
    host = (parts.hostname or "").lower()
    if not host or not (is_dns_name(host.rstrip(".")) or _is_ip(host)):
        raise ValueError("the URL needs a host name or address")
    if parts.fragment:
        raise ValueError("a drain URL has no #fragment")
    if scheme.startswith("syslog+"):
        if port is None:
            raise ValueError(f"{scheme}:// needs a port (HOST:PORT)")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{scheme}:// takes no path or query")
        if parts.username or parts.password:
            raise ValueError(f"{scheme}:// takes no user or password")
    if port == 0:
        raise ValueError("port 0 is not a port")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return DrainUrl(
        scheme=scheme,
        host=host,
        port=port or 443,
        path=path,
        username=parts.username or "",
        password=parts.password or "",
    )


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def mask_url(url: str) -> str:
    """The URL without its secrets: the password (or a lone user token) and every query value."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{url.split(':', 1)[0][:16]}://{MASK}"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    if parts.username or parts.password:
        user = f"{parts.username}:{MASK}" if parts.password else MASK
        netloc = f"{user}@{netloc}"
    query = urlencode([(k, MASK) for k, _v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def drain_id(app: str, url: str) -> str:
    """A stable short ID of (app, URL): 10 hex digits of SHA-256 (too short to test guesses of a
    secret against, long enough not to collide within one App's few drains)."""
    return hashlib.sha256(f"{app}\n{url}".encode()).hexdigest()[:10]


def drain_name(app: str, url: str) -> str:
    return f"{app}-{drain_id(app, url)}"
