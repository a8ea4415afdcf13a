"""Process configuration, read once from the environment and passed in as a collaborator."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from forge.errors import Invalid
from forge.subnets import DEFAULT_POOL, parse_pool

DEFAULT_GIT_URL_TEMPLATE = "https://github.com/{full_name}.git"
DEFAULT_GITHUB_API_URL = "https://api.github.com"


def default_data_dir(env: os._Environ[str] | dict[str, str] | None = None, euid: int | None = None) -> Path:
    """``$FORGE_DATA_DIR``; else ``/var/lib/forge`` as root (FHS: apps' uids must traverse to their
    release dirs, and ``/root`` or a home dir is 0700); else ``$XDG_DATA_HOME/forge``
    (``~/.local/share/forge``)."""
    e = os.environ if env is None else env
    if e.get("FORGE_DATA_DIR"):
        return Path(e["FORGE_DATA_DIR"])
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/forge")
    base = e.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "forge"


def decode_secret_key(text: str) -> bytes:
    """``FORGE_SECRET_KEY``: 32 bytes, base64 (standard or URL-safe)."""
    try:
        raw = base64.b64decode(
            text.strip() + "=" * (-len(text.strip()) % 4),
            altchars=b"-_" if "-" in text or "_" in text else None,
            validate=True,
        )
    except (binascii.Error, ValueError):
        raise Invalid("FORGE_SECRET_KEY is not base64 (expected 32 random bytes, base64-encoded)") from None
    if len(raw) != 32:
        raise Invalid(f"FORGE_SECRET_KEY decodes to {len(raw)} bytes; it must be exactly 32")
    return raw


def alert_settings(e: Any) -> dict[str, Any]:
    """``FORGE_ALERT_ERROR_RATE`` (0 < share < 1, or a percentage like ``5%``),
    ``FORGE_ALERT_MIN_REQUESTS`` (>= 1) and ``FORGE_ALERT_WINDOW`` (``300``, ``5m``, 60 s to 1 h)."""
    out: dict[str, Any] = {}
    rate = (e.get("FORGE_ALERT_ERROR_RATE") or "").strip()
    if rate:
        try:
            share = float(rate[:-1]) / 100 if rate.endswith("%") else float(rate)
        except ValueError:
            share = -1.0
        if not 0 < share < 1:
            raise Invalid(
                f"FORGE_ALERT_ERROR_RATE must be a share between 0 and 1 (or 1%..99%), not {rate!r}"
            )
        out["alert_error_rate"] = share
    least = (e.get("FORGE_ALERT_MIN_REQUESTS") or "").strip()
    if least:
        if not least.isdigit() or int(least) < 1:
            raise Invalid(f"FORGE_ALERT_MIN_REQUESTS must be a whole number >= 1, not {least!r}")
        out["alert_min_requests"] = int(least)
    window = (e.get("FORGE_ALERT_WINDOW") or "").strip()
    if window:
        units = {"s": 1, "m": 60, "h": 3600}
        try:
            seconds = float(window[:-1]) * units[window[-1]] if window[-1] in units else float(window)
        except ValueError:
            seconds = -1.0
        if not 60 <= seconds <= 3600:
            raise Invalid(f"FORGE_ALERT_WINDOW must be 60s to 1h (e.g. 300 or 5m), not {window!r}")
        out["alert_window_seconds"] = seconds
    return out


@dataclass(frozen=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    admin_token: str = ""
    webhook_secret: str = ""
    git_url_template: str = DEFAULT_GIT_URL_TEMPLATE
    secret_key: bytes | None = None
    mode: str = "dev"
    store_url: str = ""
    domain: str = "localhost"
    api_listen: str = "127.0.0.1:8080"
    http_listen: str = "127.0.0.1:8000"
    https_listen: str | None = None  # default: :443 for on-demand TLS, HTTP port + 443 for internal
    caddy_admin: str = ""  # HOST:PORT or unix//PATH; "" = a unix socket in the data dir (mode 0600)
    tls: str = "off"  # off | internal | on-demand
    service_address: str = (
        ""  # the install's service IP (FORGE_SERVICE_ADDRESS); "" = derived from the data dir
    )
    instance_pool: str = DEFAULT_POOL  # FORGE_INSTANCE_POOL: where every node's instance subnet lies

    @property
    def pool(self) -> ipaddress.IPv4Network:
        return parse_pool(self.instance_pool)

    # Reporting back to GitHub (forge.github): the REST API's base URL, and either a token or a
    # GitHub App (its id and the path of its PEM private key). None of them set: no reports.
    github_api_url: str = DEFAULT_GITHUB_API_URL
    github_token: str = field(default="", repr=False)
    github_app_id: str = ""
    github_app_private_key: str = ""  # a path, never the key itself
    public_url: str = ""  # the dashboard's base URL for links sent to GitHub ("" = http://API_LISTEN)

    # Error-rate alerts (forge.notify): more than ``alert_error_rate`` of at least
    # ``alert_min_requests`` requests answered 5xx over the last ``alert_window_seconds``.
    alert_error_rate: float = 0.05  # FORGE_ALERT_ERROR_RATE
    alert_min_requests: int = 20  # FORGE_ALERT_MIN_REQUESTS
    alert_window_seconds: float = 300.0  # FORGE_ALERT_WINDOW (seconds, or 5m)

    @property
    def github_enabled(self) -> bool:
        return bool(self.github_token or (self.github_app_id and self.github_app_private_key))

    @property
    def dashboard_url(self) -> str:
        return (self.public_url or f"http://{self.api_listen}").rstrip("/")

    @property
    def effective_caddy_admin(self) -> str:
        return self.caddy_admin or f"unix/{Path(self.data_dir).resolve() / 'caddy' / 'admin.sock'}"

    @property
    def production(self) -> bool:
        return self.mode == "production"

    @property
    def effective_store_url(self) -> str:
        return self.store_url or f"sqlite:///{Path(self.data_dir).resolve() / 'forge.db'}"

    @classmethod
    def from_env(
        cls, data_dir: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any
    ) -> Config:
        e = os.environ if env is None else env
        mode = (e.get("FORGE_MODE") or "dev").strip().lower()
        if mode not in ("dev", "production"):
            raise Invalid(f"FORGE_MODE must be 'dev' or 'production', not {mode!r}")
        key = e.get("FORGE_SECRET_KEY") or ""
        cfg = cls(
            data_dir=Path(data_dir) if data_dir else default_data_dir(e),
            admin_token=(e.get("FORGE_ADMIN_TOKEN") or "").strip(),
            webhook_secret=e.get("FORGE_GITHUB_WEBHOOK_SECRET") or "",
            git_url_template=e.get("FORGE_GIT_URL_TEMPLATE") or DEFAULT_GIT_URL_TEMPLATE,
            secret_key=decode_secret_key(key) if key else None,
            mode=mode,
            store_url=e.get("FORGE_STORE_URL") or "",
            domain=e.get("FORGE_DOMAIN") or "localhost",
            service_address=(e.get("FORGE_SERVICE_ADDRESS") or "").strip(),
            github_api_url=(e.get("FORGE_GITHUB_API_URL") or DEFAULT_GITHUB_API_URL).strip().rstrip("/"),
            github_token=(e.get("FORGE_GITHUB_TOKEN") or "").strip(),
            github_app_id=(e.get("FORGE_GITHUB_APP_ID") or "").strip(),
            github_app_private_key=(e.get("FORGE_GITHUB_APP_PRIVATE_KEY") or "").strip(),
            public_url=(e.get("FORGE_PUBLIC_URL") or "").strip(),
            instance_pool=str(parse_pool(e.get("FORGE_INSTANCE_POOL") or DEFAULT_POOL)),
            **alert_settings(e),
        )
        return replace(cfg, **overrides) if overrides else cfg
