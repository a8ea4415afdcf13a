"""``GET /api/v1/apps/{name}/domains``: every hostname an App answers on, where its DNS should
point, and the state of its certificate.

The DNS target is derived from the install's configuration (``FORGE_DOMAIN``): a custom domain
is a CNAME to ``APP.DOMAIN``, and ``APP.DOMAIN`` itself needs the wildcard ``*.DOMAIN`` pointed
at the server. The certificate state comes from the proxy's own records: the TLS mode from the
Caddy config this host's proxy applied (``DATA/proxy/caddy.json``) and the certificates from Caddy's
storage (``DATA/caddy/data/caddy/certificates/ISSUER/HOST/HOST.crt``). Where those are not on
this machine (a control plane without the router), the state is plainly ``unknown``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon
from cryptography import x509

from forge.api import auth
from forge.api.body import send
from forge.api.context import ApiContext
from forge.models import App
from forge.proxy.daemon import caddy_config_file
from forge.proxy.routing import app_hosts

LOCAL_SUFFIXES = ("localhost", ".localhost", ".test", ".local", ".internal")


def tls_mode(caddy_config: dict[str, Any]) -> str:
    """``off``, ``internal`` or ``on-demand``, read from a Caddy config ``forge up`` generated."""
    policies = ((caddy_config.get("apps") or {}).get("tls") or {}).get("automation", {}).get("policies") or []
    if not policies:
        return "off"
    issuers = [i.get("module") for p in policies for i in (p.get("issuers") or [])]
    return "internal" if "internal" in issuers else "on-demand"


def is_local_domain(domain: str) -> bool:
    d = domain.lower().rstrip(".")
    return d == "localhost" or d.endswith(LOCAL_SUFFIXES)


def dns_target(app: str, host: str, domain: str) -> str:
    """What to point ``host``'s DNS record at for it to reach this install."""
    base = domain.lower().rstrip(".")
    default = f"{app}.{base}"
    if host == default:
        if is_local_domain(base):
            return f"nothing to set: {host} resolves to this machine (FORGE_DOMAIN={base})"
        return f"a wildcard A/AAAA record *.{base} → this server's public address"
    if is_local_domain(base):
        return (
            "an A/AAAA record → this server's public address "
            f"(FORGE_DOMAIN={base} is not a public name to CNAME to)"
        )
    return f"CNAME → {default}"


def certificate_state(host: str, mode: str | None, storage: Path, now: float) -> dict[str, Any]:
    """The certificate Caddy holds for ``host``: ``{state, issuer?, notAfter?, message}``."""
    if mode is None:
        return {"state": "unknown", "message": "the proxy's records are not on this machine"}
    if mode == "off":
        return {"state": "none", "message": "TLS is off (plain HTTP); forge up --tls on-demand serves HTTPS"}
    found = sorted(storage.glob(f"*/{host}/{host}.crt")) if storage.is_dir() else []
    if not found:
        how = (
            "Caddy gets one from the ACME CA on the first HTTPS request, once DNS points here"
            if mode == "on-demand"
            else "Caddy's internal CA issues one on the first HTTPS request"
        )
        return {"state": "pending", "message": f"not issued yet: {how}"}
    try:
        cert = x509.load_pem_x509_certificate(found[-1].read_bytes())
    except (OSError, ValueError) as exc:
        return {"state": "unknown", "message": f"cannot read {found[-1].name}: {exc}"[:200]}
    not_after = cert.not_valid_after_utc
    issuer = found[-1].parent.parent.name
    expired = not_after.timestamp() <= now
    return {
        "state": "expired" if expired else "issued",
        "issuer": issuer,
        "notAfter": not_after.isoformat().replace("+00:00", "Z"),
        "message": f"{'expired' if expired else 'valid until'} {not_after:%Y-%m-%d %H:%M} UTC ({issuer})",
    }


def read_caddy_config(data_dir: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(caddy_config_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def app_domains(app: App, domain: str, data_dir: Path, now: float) -> dict[str, Any]:
    conf = read_caddy_config(data_dir)
    mode = tls_mode(conf) if conf is not None else None
    storage = data_dir / "caddy" / "data" / "caddy" / "certificates"
    items = []
    for host in app_hosts(app, domain):
        items.append(
            {
                "domain": host,
                "kind": "default" if host == app_hosts(app, domain)[0] else "custom",
                "dnsTarget": dns_target(app.metadata.name, host, domain),
                "certificate": certificate_state(host, mode, storage, now),
            }
        )
    return {"app": app.metadata.name, "tls": mode or "unknown", "items": items}


class AppDomainsResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        app = self.ctx.store.get(App, name)
        assert isinstance(app, App)
        cfg = self.ctx.config
        send(resp, app_domains(app, cfg.domain, Path(cfg.data_dir), self.ctx.clock.now()))
