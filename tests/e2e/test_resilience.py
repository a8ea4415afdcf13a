"""Routes survive a Caddy restart, tls/ask answers from the routing truth, and a restarted
``forge up`` brings the live release back without a push."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from forge.errors import ForgeError
from tests.e2e.harness import Forge, Remote, push_payload, wait_for

pytestmark = [pytest.mark.e2e]


def caddy_pid(forge: Forge) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"caddy run --config {forge.data}/proxy/caddy.json"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None



@pytest.fixture(scope="module")
def live_app(forge: Forge) -> str:
    remote = Remote(forge.root, "acme/steady")
    with forge.client as c:
        r = c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "steady"},
                                         "spec": {"repo": "acme/steady", "domains": ["steady.example.com"]}})
        assert r.status_code == 201, r.text
    r = forge.webhook("push", push_payload("acme/steady", "refs/heads/main", remote.app_release("steady", "s1")))
    assert r.status_code == 202, r.text
    forge.wait_phase("steady-1", {"Live"})
    wait_for(lambda: forge.serves("steady.localhost", "s1"), 10, "steady to serve")
    return "steady"


@pytest.mark.parametrize("host,code", [
    ("steady.localhost", 200), ("steady.example.com", 200), ("STEADY.localhost", 200),
    ("nobody.localhost", 404), ("steady.other.org", 404), ("bad_name!.localhost", 404), ("", 404),
    ("a" * 300 + ".localhost", 404),
], ids=["app-host", "custom-domain", "case", "unknown-app", "other-domain", "malformed", "empty", "too-long"])
def test_tls_ask_answers_only_for_live_hosts(forge: Forge, live_app: str, host: str, code: int) -> None:
    """tls/ask answers 200 only for hosts of apps with a live release, 404 for all else."""
    r = httpx.get(f"{forge.api}/api/v1/tls/ask", params={"domain": host}, timeout=5)
    assert r.status_code == code, r.text


def test_tls_ask_refuses_an_app_without_a_live_release(forge: Forge) -> None:
    """An app registered but never live is not a host Caddy may get a certificate for."""
    with forge.client as c:
        c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "dormant"},
                                     "spec": {"repo": "acme/dormant"}})
    assert httpx.get(f"{forge.api}/api/v1/tls/ask", params={"domain": "dormant.localhost"}, timeout=5).status_code == 404


def test_routes_come_back_after_caddy_restarts(forge: Forge, live_app: str) -> None:
    """Caddy killed: forge up restarts it from the proxy's complete config, and its first answer
    after it is up serves the app (the host map is on disk; nothing needs reloading)."""
    old = caddy_pid(forge)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := caddy_pid(forge)) and p != old and p, 20, "caddy to be restarted")
    wait_for(lambda: _admin_up(forge), 10, "caddy admin to answer")
    assert forge.serves("steady.localhost", "s1"), "the restarted caddy's first answer was not the app"
    assert new != old


def test_agent_sigkill_apps_keep_serving_through_their_namespaces(forge: Forge, live_app: str) -> None:
    """SIGKILL of the agent: the app keeps answering through Caddy the whole time, and the
    restarted agent adopts it in the same namespace (same pid, same address, no restart)."""
    inst = next(i for i in forge.list("instances", "forge.dev/app=steady") if i["spec"]["desired"] == "Running")
    out = subprocess.run(["pgrep", "-f", f"forge agent .*--data-dir {forge.data}/node"], capture_output=True,
                         text=True).stdout.split()
    assert out, "no agent process found"
    os.kill(int(out[0]), signal.SIGKILL)
    for _ in range(20):  # through the kill and forge up's restart of the agent
        assert forge.serves("steady.localhost", "s1")
        time.sleep(0.1)
    wait_for(lambda: subprocess.run(["pgrep", "-f", f"forge agent .*--data-dir {forge.data}/node"],
                                    capture_output=True).returncode == 0, 30, "the agent to be restarted")
    wait_for(lambda: "re-adopted steady-1-0" in (forge.data / "logs" / "agent.log").read_text(), 30, "re-adoption")
    after = forge.get("instances", inst["metadata"]["name"])
    assert (after["status"]["pid"], after["status"]["address"], after["status"]["restarts"]) == \
        (inst["status"]["pid"], inst["status"]["address"], inst["status"]["restarts"])
    assert forge.serves("steady.localhost", "s1")


def leftovers(forge: Forge) -> list[str]:
    """This install's network namespaces, links, nftables tables and service address still on the machine."""
    from forge.nodeagent.network import NetNames
    from forge.proxy.nft import install_hash
    from forge.proxy.servicemap import ServiceMap

    names = NetNames(install_hash(forge.data.resolve() / "node"))
    svc = ServiceMap(forge.data.resolve())
    found = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(names.netns_prefix)] \
        if os.path.isdir("/run/netns") else []
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    found += [f"link {ln.split()[0]}" for ln in links.splitlines() if ln.split() and ln.split()[0] == names.bridge]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [f"table {t}" for t in (names.table, svc.table) if t in tables]
    addrs = subprocess.run(["ip", "-br", "addr", "show", "lo"], capture_output=True, text=True).stdout
    found += [f"address {svc.address}" for _ in [0] if f" {svc.address}/32" in addrs]
    return found


def _admin_up(forge: Forge) -> bool:
    admin = forge.admin
    try:
        admin.ping()
    except ForgeError:
        return False
    finally:
        admin.close()
    return True


def test_forge_up_restart_brings_the_live_release_back(forge: Forge, live_app: str) -> None:
    """forge up stopped (apps included) and started again serves the live release with no new push."""
    forge.stop()
    with pytest.raises(httpx.HTTPError):
        forge.through_caddy("steady.localhost")
    assert leftovers(forge) == [], "forge up left parts of its data plane behind"
    forge.start()
    wait_for(lambda: forge.serves("steady.localhost", "s1"), 60, "the live release to serve again")
    assert [d["metadata"]["name"] for d in forge.list("deployments", "forge.dev/app=steady")] == ["steady-1"]
