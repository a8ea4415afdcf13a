"""First-hour verbs of the forge CLI against a live ``forge server``: secrets, domains, and how the
CLI finds its install."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli_server import forge, server  # noqa: F401  (the live server fixture)

APP = """apiVersion: forge/v1
kind: App
metadata: {name: vault}
spec: {repo: acme/vault, domains: [shop.example.org]}
"""


@pytest.fixture(scope="module")
def vault(server: str, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    f = tmp_path_factory.mktemp("vault") / "app.yaml"
    f.write_text(APP)
    r = forge(server, "apply", "-f", str(f))
    assert r.returncode == 0, r.stderr
    return server


def test_secrets_are_first_class_verbs(vault: str) -> None:
    """forge secrets set/list/unset work on the same records as forge env set --secret; values never print."""
    r = forge(vault, "secrets", "--help")
    assert r.returncode == 0 and all(v in r.stdout for v in ("set", "unset", "list", "rotate-key")), r.stdout
    r = forge(vault, "secrets", "set", "vault", "DB_PASSWORD=hunter2-very-secret", "API_KEY=k-123")
    assert r.returncode == 0 and "API_KEY, DB_PASSWORD" in r.stdout and "hunter2" not in r.stdout, r
    r = forge(vault, "env", "set", "vault", "LEGACY=old-way-value", "--secret")
    assert r.returncode == 0, r.stderr
    for args in (("secrets", "list", "vault"), ("secrets", "vault")):
        r = forge(vault, *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["SECRET", "API_KEY", "DB_PASSWORD", "LEGACY"], r.stdout
    r = forge(vault, "secrets", "vault", "-o", "json")
    assert json.loads(r.stdout) == {"app": "vault", "secrets": ["API_KEY", "DB_PASSWORD", "LEGACY"]}
    assert not any(v in r.stdout for v in ("hunter2", "k-123", "old-way-value"))
    r = forge(vault, "env", "list", "vault")
    assert "DB_PASSWORD" in r.stdout and "secret" in r.stdout and "hunter2" not in r.stdout
    r = forge(vault, "secrets", "unset", "vault", "API_KEY", "NOPE")
    assert (
        r.returncode == 1 and "no secret NOPE" in r.stderr and "API_KEY, DB_PASSWORD, LEGACY" in r.stderr
    ), r
    r = forge(vault, "secrets", "unset", "vault", "API_KEY")
    assert r.returncode == 0, r.stderr
    assert forge(vault, "secrets", "vault").stdout.split() == ["SECRET", "DB_PASSWORD", "LEGACY"]
    r = forge(vault, "secrets", "set", "ghost", "A=1")
    assert r.returncode == 1 and "ghost" in r.stderr


def test_domains_lists_dns_target_and_says_certificate_state_unknown(vault: str) -> None:
    """forge domains APP: default and custom hosts, where to point DNS; no proxy records here: unknown."""
    r = forge(vault, "domains", "vault", "-o", "json")
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)["items"]
    assert [(d["domain"], d["kind"]) for d in items] == [
        ("vault.localhost", "default"),
        ("shop.example.org", "custom"),
    ]
    assert all(d["certificate"]["state"] == "unknown" for d in items), items
    r = forge(vault, "domains", "vault")
    assert r.returncode == 0 and "POINT DNS AT" in r.stdout and "unknown" in r.stdout, r.stdout
    assert forge(vault, "domains", "list", "vault").stdout == r.stdout
    r = forge(vault, "domains", "nope")
    assert r.returncode == 1 and "nope" in r.stderr
