"""Which hostnames Forge serves: one truth for the router controller and ``/api/v1/tls/ask``.

An App is reachable at ``APP.DOMAIN`` and at each of its custom domains, but only once it has
a live release; Caddy's on-demand TLS asks before issuing a certificate, so an unknown or
not-yet-live hostname must never get one.
"""

from __future__ import annotations

from collections.abc import Iterable

from forge.models import App, Instance, Node, is_dns_name


def app_hosts(app: App, domain: str) -> list[str]:
    """Every hostname the App answers on: ``NAME.DOMAIN`` first, then its custom domains."""
    return [f"{app.metadata.name}.{domain.lower().rstrip('.')}"] + list(app.spec.domains)


def is_servable_host(host: str, apps: Iterable[App], domain: str) -> bool:
    """True when ``host`` names an App with a live release; malformed names are never servable."""
    name = host.strip().lower().rstrip(".")
    if not is_dns_name(name) or "." not in name:
        return False
    return any(app.status.live_deployment and name in app_hosts(app, domain) for app in apps)


def instance_dial(inst: Instance, nodes: dict[str, Node]) -> str | None:
    """``ADDRESS:PORT`` of a Running, ready Instance meant to run, on a known node; else None."""
    st = inst.status
    if inst.spec.desired != "Running" or st.phase != "Running" or not st.ready or not st.port:
        return None
    node = nodes.get(inst.spec.node or "")
    if node is None:
        return None
    addr = node.spec.address
    return f"[{addr}]:{st.port}" if ":" in addr else f"{addr}:{st.port}"


def desired_routes(
    apps: Iterable[App], instances: Iterable[Instance], nodes: Iterable[Node], domain: str
) -> dict[str, list[str]]:
    """host → sorted dials of the ready Instances of each App's live release.

    Hosts whose App has no live release, or no ready Instance, are absent (Caddy's catch-all
    answers 404 for them). A custom domain claimed by two Apps goes to the first by name, and
    never shadows another App's ``NAME.DOMAIN``.
    """
    by_node = {n.metadata.name: n for n in nodes}
    by_dep: dict[str, list[str]] = {}
    for inst in instances:
        dial = instance_dial(inst, by_node)
        if dial is not None:
            by_dep.setdefault(inst.spec.deployment, []).append(dial)
    ordered = sorted(apps, key=lambda a: a.metadata.name)
    own = {app_hosts(a, domain)[0] for a in ordered}
    routes: dict[str, list[str]] = {}
    for app in ordered:
        live = app.status.live_deployment
        dials = sorted(set(by_dep.get(live, []))) if live else []
        if not dials:
            continue
        primary, *custom = app_hosts(app, domain)
        routes[primary] = dials
        for host in custom:
            host = host.lower()
            if host not in own and host not in routes:
                routes[host] = dials
    return routes
