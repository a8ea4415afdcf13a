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
