"""Operations manifests: alert rules, Grafana dashboard, systemd units, Ansible, Terraform."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "manifests" / "prometheus"
VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": "/tmp/forge-ansible-tmp", "ANSIBLE_REMOTE_TEMP": "/tmp/forge-ansible-tmp",
           "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (make setup installs prometheus)")


@promtool
def test_alert_rules_pass_promtool_check() -> None:
    """The alert rules pass promtool check rules."""
    r = run(["promtool", "check", "rules", "forge-rules.yml"], PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 4 rules found" in r.stdout


@promtool
def test_alert_rules_unit_tests_pass() -> None:
    """promtool test rules: ForgeNoOnlineAgents pages after 2m, and the other alerts fire as written."""
    r = run(["promtool", "test", "rules", "forge-rules.test.yml"], PROM)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_online_agents_rule_is_as_specified() -> None:
    """ForgeNoOnlineAgents is forge_agents_online == 0 for 2m with severity page."""
    import yaml

    rules = {r["alert"]: r for g in yaml.safe_load((PROM / "forge-rules.yml").read_text())["groups"] for r in g["rules"]}
    assert {"ForgeNoOnlineAgents", "ForgeDeploysFailing", "ForgeAgentHeartbeatStale", "ForgeProxyFailing"} <= set(rules)
    r = rules["ForgeNoOnlineAgents"]
    assert (r["expr"], r["for"], r["labels"]["severity"]) == ("forge_agents_online == 0", "2m", "page")


def test_grafana_dashboard_imports_cleanly() -> None:
    """The dashboard is importable JSON: datasource input, unique panel ids, grid positions, queries."""
    dash = json.loads((ROOT / "manifests" / "grafana" / "forge-overview.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("forge_deployments_total", "forge_agents_online", "forge_instance_memory_bytes",
                   "forge_instance_cpu_seconds_total", "forge_deploy_duration_seconds_bucket"):
        assert metric in exprs
    assert "histogram_quantile(0.5" in exprs and "histogram_quantile(0.95" in exprs
    for p in dash["panels"]:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


@pytest.mark.parametrize("unit", ["forge-server.service", "forge-controllers.service", "forge-agent.service",
                                  "forge-caddy.service", "forge-proxy.service"])
def test_systemd_units_are_hardened(unit: str) -> None:
    """Every unit sets NoNewPrivileges and ProtectSystem; the agent delegates its cgroup subtree."""
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(ROOT / "infra" / "systemd" / unit)
    svc = cp["Service"]
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] in ("strict", "full")
    if unit == "forge-caddy.service":  # Caddy: its own user, one capability, admin on a socket only
        assert svc["User"] == "caddy" and svc["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
        assert svc["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
        return
    assert svc["ExecStart"].startswith("/opt/forge/venv/bin/forge ")
    if unit == "forge-controllers.service":
        assert svc["CapabilityBoundingSet"] == ""  # they decide in records; the proxy programs the host
    if unit == "forge-proxy.service":
        assert svc["CapabilityBoundingSet"] == "CAP_NET_ADMIN"  # the service map and routes, nothing more
    if unit == "forge-agent.service":
        assert svc["Delegate"] == "yes" and svc["KillMode"] == "process"
    else:
        assert svc["User"] == "forge"


def test_ansible_playbook_syntax_check() -> None:
    """ansible-playbook --syntax-check accepts the playbook."""
    r = run([str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory.example.ini", "site.yml"],
            ROOT / "infra" / "ansible")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ansible_lint_passes() -> None:
    """ansible-lint (offline, production profile) finds nothing."""
    r = run([str(VENV_BIN / "ansible-lint"), "--offline", "--profile", "production", "site.yml"], ROOT / "infra" / "ansible")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _terraform() -> dict[str, list]:
    import hcl2

    merged: dict[str, list] = {}
    for f in sorted((ROOT / "infra" / "terraform").glob("*.tf")):
        with f.open() as fh:
            for k, v in hcl2.load(fh).items():
                if not k.startswith("__"):
                    merged.setdefault(k, []).extend(v)
    return merged


def _resources(tf: dict[str, list], type_: str) -> dict[str, dict]:
    return {_unq(name): body for block in tf["resource"] for t, named in block.items() if _unq(t) == type_
            for name, body in named.items()}


def _unq(v: object) -> object:
    """python-hcl2 keeps string literals quoted; compare without the quotes."""
    return v.strip('"') if isinstance(v, str) else v


def test_terraform_parses_and_has_the_layout() -> None:
    """Every .tf parses; VPC, public and private subnets, and a NAT gateway behind a switch."""
    tf = _terraform()
    assert _resources(tf, "aws_vpc") and set(_resources(tf, "aws_subnet")) == {"public", "private", "database_b"}
    db = _resources(tf, "aws_db_instance")["forge"]  # the managed store: off unless asked, Multi-AZ, encrypted
    assert "managed_database" in str(db["count"]) and db["multi_az"] is True and db["storage_encrypted"] is True
    assert db["manage_master_user_password"] is True and "password" not in db
    nat = _resources(tf, "aws_nat_gateway")["main"]
    assert "enable_nat_gateway" in str(nat["count"])
    worker = _resources(tf, "aws_instance")["worker"]
    assert "aws_subnet.private" in str(worker["subnet_id"])


def test_terraform_security_groups_are_exactly_as_designed() -> None:
    """80/443 public, 8080 inside the VPC, 20000-39999 and 9108 from the control-plane group only."""
    rules = _resources(_terraform(), "aws_vpc_security_group_ingress_rule")
    public = {(int(r["from_port"]), int(r["to_port"])) for r in rules.values() if _unq(r.get("cidr_ipv4")) == "0.0.0.0/0"}
    assert public == {(80, 80), (443, 443)}
    api = rules["cp_api"]
    assert (int(api["from_port"]), int(api["to_port"])) == (8080, 8080) and "var.vpc_cidr" in str(api["cidr_ipv4"])
    for name, ports in (("worker_apps", (20000, 39999)), ("worker_metrics", (9108, 9108))):
        r = rules[name]
        assert (int(r["from_port"]), int(r["to_port"])) == ports
        assert "aws_security_group.control_plane.id" in str(r["referenced_security_group_id"]) and "cidr_ipv4" not in r
