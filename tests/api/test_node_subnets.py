"""Each node's instance subnet is its own: the proxy routes each subnet to exactly one node."""

from __future__ import annotations

from forge.models import Node
from tests.api.conftest import Api


def test_the_api_refuses_a_node_subnet_that_overlaps_another_nodes(api: Api) -> None:
    for name, address in (("n1", "10.0.0.3"), ("n2", "10.0.0.4")):
        api.create("nodes", {"metadata": {"name": name}, "spec": {"address": address}})
    n1 = api.req("GET", "/api/v1/nodes/n1").json
    n1["status"] = {"instanceSubnet": "10.213.1.0/24"}
    assert api.req("PUT", "/api/v1/nodes/n1/status", json=n1).status_code == 200
    n2 = api.req("GET", "/api/v1/nodes/n2").json
    n2["status"] = {"instanceSubnet": "10.213.1.0/25"}
    r = api.req("PUT", "/api/v1/nodes/n2/status", json=n2)
    assert r.status_code == 409 and "overlaps node n1's" in r.json["message"], r.text
    assert r.json["error"] == "SubnetTaken"
    assert not api.store.get(Node, "n2").status.instance_subnet, "nothing half-written"
    r = api.req("PATCH", "/api/v1/nodes/n2/status", json={"status": {"instanceSubnet": "10.213.1.64/26"}})
    assert r.status_code == 409
    r = api.req("PATCH", "/api/v1/nodes/n2/status", json={"status": {"instanceSubnet": "10.213.2.0/24"}})
    assert r.status_code == 200
    # Rewriting its own, unchanged subnet (every re-registration) is fine.
    n1 = api.req("GET", "/api/v1/nodes/n1").json
    assert api.req("PUT", "/api/v1/nodes/n1/status", json=n1).status_code == 200


def test_a_node_token_can_claim_only_a_subnet_inside_the_instance_pool(api: Api) -> None:
    """Public, link-local, loopback, multicast, oversized and out-of-pool subnets: 400 Invalid
    naming status.instanceSubnet and the pool; nothing is written."""
    api.create("nodes", {"metadata": {"name": "w1"}, "spec": {"address": "10.0.0.3"}})
    token = api.req("POST", "/api/v1/nodes/w1/token", json={}).json["token"]
    for bad in ("140.82.112.0/20", "169.254.169.0/24", "127.0.0.0/16", "224.0.0.0/24", "10.0.0.0/8",
                "10.214.1.0/24", "10.213.1.0/30"):
        r = api.req("PATCH", "/api/v1/nodes/w1/status", json={"status": {"instanceSubnet": bad}}, token=token)
        assert r.status_code == 400 and r.json["error"] == "Invalid", (bad, r.text)
        assert r.json["details"][0]["path"] == "status.instanceSubnet" and "10.213.0.0/16" in r.json["message"]
        assert not api.store.get(Node, "w1").status.instance_subnet
    r = api.req("PATCH", "/api/v1/nodes/w1/status", json={"status": {"instanceSubnet": "10.213.9.0/24"}},
                token=token)
    assert r.status_code == 200, r.text


def test_a_node_asks_only_about_its_own_apps_which_still_exist(api: Api) -> None:
    """GET /nodes/NAME/apps?names=: the named Apps that exist; another node's token is refused."""
    for name in ("w1", "w2"):
        api.create("nodes", {"metadata": {"name": name}, "spec": {"address": "10.0.0.3"}})
    api.create("apps", {"metadata": {"name": "alive"}, "spec": {"repo": "acme/alive"}})
    token = api.req("POST", "/api/v1/nodes/w1/token", json={}).json["token"]
    r = api.req("GET", "/api/v1/nodes/w1/apps?names=alive,deleted", token=token)
    assert r.status_code == 200 and r.json == {"apps": ["alive"]}
    assert api.req("GET", "/api/v1/nodes/w2/apps?names=alive", token=token).status_code == 403
    assert api.req("GET", "/api/v1/nodes/w1/apps", token=token).json == {"apps": []}
