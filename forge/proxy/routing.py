"""Which hostnames Forge serves: one truth for the router controller and ``/api/v1/tls/ask``.

An App is reachable at ``APP.DOMAIN`` and at each of its custom domains, but only once it has
a live release; Caddy's on-demand TLS asks before issuing a certificate, so an unknown or
not-yet-live hostname must never get one.
"""

from __future__ import annotations

from collections.abc import Iterable

from forge.models import WEB, App, Instance, Node, is_dns_name


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
    """``ADDRESS:PORT`` of a Running, ready Instance meant to run, on a known node; else None.

    The address is the Instance's own (its network namespace) when the agent reported one,
    else its node's address (a node on the shared host network)."""
    st = inst.status
    if (
        inst.spec.desired != "Running"
        or inst.spec.unrouted_time
        or st.phase != "Running"
        or not st.ready
        or not st.port
    ):
        return None
    node = nodes.get(inst.spec.node or "")
    if node is None:
        return None
    addr = st.address or node.spec.address
    return f"[{addr}]:{st.port}" if ":" in addr else f"{addr}:{st.port}"


def live_dials(
    apps: Iterable[App], instances: Iterable[Instance], nodes: Iterable[Node]
) -> dict[str, list[str]]:
    """App name → sorted dials of the ready Instances of its live release (apps with none absent)."""
    by_node = {n.metadata.name: n for n in nodes}
    by_dep: dict[str, set[str]] = {}
    for inst in instances:
        if inst.spec.process != WEB or inst.spec.oneshot is not None:
            continue  # workers, release commands, cron and one-off runs take no traffic
        dial = instance_dial(inst, by_node)
        if dial is not None:
            by_dep.setdefault(inst.spec.deployment, set()).add(dial)
    out: dict[str, list[str]] = {}
    for app in apps:
        live = app.status.live_deployment
        if live and by_dep.get(live):
            out[app.metadata.name] = sorted(by_dep[live])
    return out


def host_table(apps: Iterable[App], domain: str, targets: dict[str, list[str]]) -> dict[str, list[str]]:
    """host → ``targets[app]`` for every App that has targets.

    A custom domain claimed by two Apps goes to the first by name, and never shadows another
    App's ``NAME.DOMAIN``."""
    ordered = sorted(apps, key=lambda a: a.metadata.name)
    own = {app_hosts(a, domain)[0] for a in ordered}
    routes: dict[str, list[str]] = {}
    for app in ordered:
        dials = targets.get(app.metadata.name)
        if not dials:
            continue
        primary, *custom = app_hosts(app, domain)
        routes[primary] = dials
        for host in custom:
            host = host.lower()
            if host not in own and host not in routes:
                routes[host] = dials
    return routes


def desired_routes(
    apps: Iterable[App], instances: Iterable[Instance], nodes: Iterable[Node], domain: str
) -> dict[str, list[str]]:
    """host → sorted dials of the ready Instances of each App's live release (Caddy-only mode).

    Hosts whose App has no live release, or no ready Instance, are absent (Caddy's catch-all
    answers 404 for them)."""
    apps = list(apps)
    return host_table(apps, domain, live_dials(apps, instances, nodes))


def service_routes(apps: Iterable[App], domain: str, service_ip: str) -> dict[str, list[str]]:
    """host → [``service_ip``:the App's service port] for every App with a live release and a port.

    What a proxy host's host map holds in kernel mode: it changes only when the set of served
    hosts does (an App goes live for the first time, is deleted, gains or loses a domain) —
    never on a deploy, rollback, scale or restart, which only move the kernel's backends behind
    the address. The port is the App's (``App.status.serviceAddress``, the router's decision);
    the IP is this host's own service address, so every proxy host serves the same port map on
    its own IP."""
    apps = list(apps)
    targets = {
        a.metadata.name: [f"{service_ip}:{port}"]
        for a in apps
        if a.status.live_deployment and (port := service_port(a)) is not None
    }
    return host_table(apps, domain, targets)


def service_backends(
    apps: Iterable[App], instances: Iterable[Instance], nodes: Iterable[Node]
) -> dict[int, list[str]]:
    """service port → dials of the App's live, ready Instances (the kernel map's content)."""
    apps = list(apps)
    dials = live_dials(apps, instances, nodes)
    out: dict[int, list[str]] = {}
    for app in apps:
        port = service_port(app)
        if port is not None and app.metadata.name in dials:
            out[port] = [d for d in dials[app.metadata.name] if not d.startswith("[")]  # the map is IPv4
    return out


def service_port(app: App) -> int | None:
    """The App's service port (``status.serviceAddress`` is ``IP:PORT``); None until allocated."""
    addr = app.status.service_address or ""
    _, _, port = addr.rpartition(":")
    return int(port) if port.isdigit() else None
