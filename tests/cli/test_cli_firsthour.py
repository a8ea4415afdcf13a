"""First-hour verbs of the forge CLI against a live ``forge server``: secrets, domains, and how the
CLI finds its install."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bare_forge(*args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "forge", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_help_says_how_the_cli_finds_its_install() -> None:
    """forge --help names FORGE_URL, FORGE_ADMIN_TOKEN, FORGE_DATA_DIR and the order they are tried in."""
    out = " ".join(_bare_forge("--help").stdout.split())
    order = [
        "$FORGE_URL",
        "api-url file",
        "http://127.0.0.1:8080",
        "$FORGE_ADMIN_TOKEN",
        "admin-token",
        "$FORGE_DATA_DIR",
        "/var/lib/forge as root",
        "~/.local/share/forge",
    ]
    positions = [out.find(w) for w in order]
    assert -1 not in positions and positions == sorted(positions), (positions, out)
    up = " ".join(_bare_forge("up", "--help").stdout.split())
    assert "$FORGE_DATA_DIR, else /var/lib/forge as root, else ~/.local/share/forge" in up, up


@pytest.mark.parametrize("source", ["env", "data-dir", "default"])
def test_unreachable_install_says_which_url_where_from_and_what_to_set(tmp_path: Path, source: str) -> None:
    """A bare forge apps that cannot connect names the URL, where it came from, and FORGE_URL/FORGE_DATA_DIR."""
    port = _closed_port()
    env = {"FORGE_DATA_DIR": str(tmp_path)}
    if source == "env":
        env["FORGE_URL"], want = f"http://127.0.0.1:{port}", "is from $FORGE_URL"
    elif source == "data-dir":
        (tmp_path / "api-url").write_text(f"http://127.0.0.1:{port}\n")
        want = f"is from {tmp_path / 'api-url'} (written by forge up)"
    else:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 8080)) == 0:
                pytest.skip("something listens on 127.0.0.1:8080 on this machine")
        port, want = 8080, f"is the default: $FORGE_URL is unset and {tmp_path / 'api-url'} does not exist"
    r = _bare_forge("apps", **env)
    assert r.returncode == 1, r
    err = " ".join(r.stderr.split())
    for words in (
        f"cannot reach the Forge API at http://127.0.0.1:{port}",
        want,
        "forge up",
        "FORGE_DATA_DIR=DIR",
        "FORGE_URL=http://HOST:PORT",
        "FORGE_ADMIN_TOKEN",
    ):
        assert words in err, err


def test_up_banner_says_how_other_shells_find_this_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forge up's CLI line: nothing to set for the default data dir; FORGE_DATA_DIR=DIR for another."""
    from forge.config import default_data_dir
    from forge.up import cli_hint

    monkeypatch.delenv("FORGE_DATA_DIR", raising=False)
    assert "the default data dir" in cli_hint(default_data_dir())
    hint = cli_hint(tmp_path)
    assert f"export FORGE_DATA_DIR={tmp_path}" in hint and "FORGE_URL and FORGE_ADMIN_TOKEN" in hint
    monkeypatch.setenv("FORGE_DATA_DIR", str(tmp_path))  # forge up ran with it set: other shells need it too
    assert f"export FORGE_DATA_DIR={tmp_path}" in cli_hint(tmp_path)
