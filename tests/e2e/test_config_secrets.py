"""Config changes roll out like code, and secrets stay sealed, against a live ``forge up``: env,
secrets and replicas set with the CLI become new releases of the live commit behind the same
health gate; secret values never rest in plaintext; a key rotation keeps every app serving."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from tests.e2e.harness import Forge, wait_for
from tests.e2e.test_cli_live import body, cli, live_app, ok, serves, table_rows

pytestmark = [pytest.mark.e2e]


def released(forge: Forge, name: str, phases: frozenset[str] = frozenset({"Live"})) -> dict:
    """Wait for Deployment ``name`` (written by a controller) to exist and reach ``phases``."""
    def check() -> dict | None:
        try:
            return forge.get("deployments", name)
        except httpx.HTTPStatusError:
            return None

    wait_for(check, 20, f"{name} to be written")
    return forge.wait_phase(name, set(phases))


def releases_of(forge: Forge, app: str) -> list[str]:
    return sorted(d["metadata"]["name"] for d in forge.list("deployments", f"forge.dev/app={app}"))


def test_env_set_and_unset_roll_out_config_releases(forge: Forge) -> None:
    """env set makes a config release of the live commit that goes Live and the app sees; unset likewise."""
    _, sha = live_app(forge, "cfg-env")
    value = "hello-config-7f3a"
    outputs = [ok(forge, "env", "set", "cfg-env", f"GREETING={value}", "EXTRA=1")]
    assert outputs[0].strip() == "set EXTRA, GREETING on cfg-env"
    dep = released(forge, "cfg-env-2")
    assert dep["spec"]["trigger"]["type"] == "config" and dep["spec"]["commit"] == sha
    assert dep["spec"]["config"]["env"] == {"GREETING": value, "EXTRA": "1"}
    serves(forge, "cfg-env.localhost", f"v1 {value}")

    outputs.append(ok(forge, "env", "list", "cfg-env"))
    assert table_rows(outputs[-1]) == [["NAME", "KIND"], ["EXTRA", "env"], ["GREETING", "env"]]
    outputs.append(ok(forge, "env", "list", "cfg-env", "-o", "json"))
    assert json.loads(outputs[-1]) == {"env": ["EXTRA", "GREETING"], "secrets": []}
    outputs.append(ok(forge, "releases", "cfg-env"))
    assert table_rows(outputs[-1])[1][:4] == ["cfg-env-2", sha[:7], "config", "Live"]
    outputs.append(ok(forge, "status", "cfg-env"))
    assert all(value not in out for out in outputs), "an env value was printed"

    assert ok(forge, "env", "unset", "cfg-env", "GREETING").strip() == "unset GREETING on cfg-env"
    assert released(forge, "cfg-env-3")["spec"]["trigger"]["type"] == "config"
    serves(forge, "cfg-env.localhost", "v1")
    assert json.loads(ok(forge, "env", "list", "cfg-env", "-o", "json")) == {"env": ["EXTRA"], "secrets": []}
    ok(forge, "env", "set", "cfg-env", "EXTRA=1")  # no change: no release
    bad = cli(forge, "env", "set", "cfg-env", "not a pair")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    time.sleep(1.0)  # give a (wrong) config release the time to appear
    assert releases_of(forge, "cfg-env") == ["cfg-env-1", "cfg-env-2", "cfg-env-3"]


def test_secret_reaches_the_app_and_never_rests_in_plaintext(forge: Forge) -> None:
    """env set --secret rolls out to the app's environment; no file in the data dir, no CLI output,
    no Event carries the value."""
    live_app(forge, "cfg-sec")
    value = "s3cret-PLAIN-e2e-91c4"
    outputs = [ok(forge, "env", "set", "cfg-sec", f"GREETING={value}", "--secret")]
    dep = released(forge, "cfg-sec-2")
    assert dep["spec"]["trigger"]["type"] == "config" and dep["spec"]["config"]["env"] == {}
    serves(forge, "cfg-sec.localhost", f"v1 {value}")
    outputs.append(ok(forge, "env", "list", "cfg-sec"))
    assert table_rows(outputs[-1]) == [["NAME", "KIND"], ["GREETING", "secret"]]
    for args in (("get", "secret", "cfg-sec", "-o", "json"), ("get", "secrets", "-o", "yaml"),
                 ("status", "cfg-sec", "-o", "json"), ("events", "-o", "json"), ("logs", "cfg-sec"),
                 ("logs", "cfg-sec", "--build"), ("releases", "cfg-sec", "-o", "json")):
        outputs.append(ok(forge, *args))
    assert all(value not in out for out in outputs), "a secret value was printed"
    secret = json.loads(outputs[2])
    assert secret["status"]["keys"] == ["GREETING"] and "data" not in secret["spec"]

    db = sorted(forge.data.glob("forge.db*"))
    assert {p.name for p in db} >= {"forge.db", "forge.db-wal"}
    leaked = [str(p) for p in forge.data.rglob("*") if p.is_file() and value.encode() in p.read_bytes()]
    assert not leaked, f"plaintext secret found in {leaked}"


def test_rotate_key_keeps_every_app_serving(forge: Forge) -> None:
    """secrets rotate-key: apps answer 200 throughout, nothing redeploys, and a new release still gets the secret."""
    live_app(forge, "cfg-rot")
    live_app(forge, "cfg-plain")
    ok(forge, "env", "set", "cfg-rot", "GREETING=rotated-ok", "--secret")
    released(forge, "cfg-rot-2")
    serves(forge, "cfg-rot.localhost", "v1 rotated-ok")
    before = {a: releases_of(forge, a) for a in ("cfg-rot", "cfg-plain")}
    keyfile = forge.data / "secret-keys.json"
    old_primary = json.loads(keyfile.read_text())["primary"]
    old_ct = _raw_db(forge)

    stop = threading.Event()
    results: list[tuple[str, int, str]] = []

    def loop() -> None:
        for _ in range(2000):  # bounded; stops when told
            if stop.is_set():
                return
            for host, want in (("cfg-rot.localhost", "v1 rotated-ok"), ("cfg-plain.localhost", "v1")):
                code, text = body(forge, host)
                results.append((host, code, text if text != want else "ok"))
            time.sleep(0.02)

    t = threading.Thread(target=loop)
    t.start()
    try:
        wait_for(lambda: len(results) > 10, 60, "the request loop to start")  # a bound on a loaded machine
        out = ok(forge, "secrets", "rotate-key")
        m = re.fullmatch(r"re-encrypted (\d+) secret value\(s\) under a new key", out.strip())
        assert m and int(m.group(1)) >= 1, out
        time.sleep(2.0)  # keep looping past anything the rotation could set off
    finally:
        stop.set()
        t.join(timeout=30)
    bad = [r for r in results if r[1:] != (200, "ok")]
    assert not bad, f"{len(bad)} of {len(results)} requests failed during the rotation: {bad[:5]}"
    assert {a: releases_of(forge, a) for a in before} == before, "the rotation redeployed an app"
    new_primary = json.loads(keyfile.read_text())["primary"]
    assert new_primary != old_primary and list(json.loads(keyfile.read_text())["keys"]) == [new_primary]
    raw = _raw_db(forge)
    assert f"fsec1:{new_primary}:".encode() in raw and old_ct != raw

    r = cli(forge, "deploy", "cfg-rot", "--force", "--wait")  # a process started after the rotation
    assert r.returncode == 0 and r.stdout.strip() == "cfg-rot-3 is Live", r
    serves(forge, "cfg-rot.localhost", "v1 rotated-ok")


def _raw_db(forge: Forge) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(forge.data.glob("forge.db*")))


def test_scale_to_two_serves_from_both_instances(forge: Forge) -> None:
    """scale 2 starts a second Instance of the live release in place (no new release), and Caddy
    spreads requests over both."""
    _, sha = live_app(forge, "cfg-scale")
    assert ok(forge, "scale", "cfg-scale", "2", "--wait").strip() == "cfg-scale scaled to 2"
    assert releases_of(forge, "cfg-scale") == ["cfg-scale-1"]
    status = json.loads(ok(forge, "status", "cfg-scale", "-o", "json"))
    ready = sorted(i["metadata"]["name"] for i in status["instances"]
                   if i["spec"]["deployment"] == "cfg-scale-1" and i["status"].get("ready")
                   and i["spec"]["desired"] == "Running")
    assert ready == ["cfg-scale-1-0", "cfg-scale-1-1"]
    assert len({i["status"]["port"] for i in status["instances"] if i["spec"]["deployment"] == "cfg-scale-1"}) == 2
    for _ in range(30):
        assert body(forge, "cfg-scale.localhost") == (200, "v1")

    def served_by() -> set[str]:
        lines = ok(forge, "logs", "cfg-scale", "--deployment", "cfg-scale-1").splitlines()
        return {ln.split()[1] for ln in lines if ln.endswith("[app] request /")}

    wait_for(lambda: served_by() == {"cfg-scale-1-0", "cfg-scale-1-1"}, 15, "both Instances to have served a request")
    assert ok(forge, "scale", "cfg-scale", "2").strip() == "cfg-scale scaled to 2"  # unchanged: no release
    assert releases_of(forge, "cfg-scale") == ["cfg-scale-1"]
    bad = cli(forge, "scale", "cfg-scale", "-1")
    assert bad.returncode == 2


def test_failed_release_leaves_the_live_one_and_config_follows_the_live_commit(forge: Forge) -> None:
    """A release failing its health gate never serves; a config change after it releases the live commit."""
    rem, sha1 = live_app(forge, "cfg-fail")
    bad = rem.app_release("cfg-fail", "v2", health=500)
    r = cli(forge, "deploy", "cfg-fail", "--commit", bad, "--wait")
    assert r.returncode == 1 and "HealthCheckFailed" in r.stdout
    assert body(forge, "cfg-fail.localhost") == (200, "v1")
    assert forge.get("apps", "cfg-fail")["status"]["liveDeployment"] == "cfg-fail-1"

    ok(forge, "env", "set", "cfg-fail", "GREETING=after-failure")
    dep = released(forge, "cfg-fail-3")
    assert dep["spec"]["commit"] == sha1 and dep["spec"]["trigger"]["type"] == "config"
    serves(forge, "cfg-fail.localhost", "v1 after-failure")


def test_rollback_restores_code_and_config_together(forge: Forge) -> None:
    """Rolling back to a release brings back its commit and its env, and nothing re-applies the newer env."""
    rem, _ = live_app(forge, "cfg-rb")
    ok(forge, "env", "set", "cfg-rb", "GREETING=one")
    released(forge, "cfg-rb-2")
    assert ok(forge, "deploy", "cfg-rb", "--commit", rem.app_release("cfg-rb", "v2"), "--wait").strip() == "cfg-rb-3 is Live"
    ok(forge, "env", "set", "cfg-rb", "GREETING=two")
    released(forge, "cfg-rb-4")
    serves(forge, "cfg-rb.localhost", "v2 two")

    r = cli(forge, "rollback", "cfg-rb", "--to", "cfg-rb-2", "--wait")
    assert r.returncode == 0 and r.stdout.strip() == "cfg-rb-5 is Live", r
    serves(forge, "cfg-rb.localhost", "v1 one")
    time.sleep(1.5)  # a config release undoing the rollback would appear by now
    assert releases_of(forge, "cfg-rb")[-1] == "cfg-rb-5" and body(forge, "cfg-rb.localhost") == (200, "v1 one")
