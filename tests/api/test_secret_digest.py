"""Secret.status.dataDigest: a keyed digest of the plaintext values that moves with the values,
not with their ciphertexts, so a key rotation rolls nothing out."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests.api.conftest import Api

VALUE = "digest-PLAIN-value-42"


def _create(api: Api, name: str = "hello", data: dict[str, str] | None = None) -> dict[str, Any]:
    return api.create("secrets", {"metadata": {"name": name},
                                  "spec": {"app": name, "data": data if data is not None else {"A": VALUE, "B": "b"}}})


def _digest(api: Api, name: str = "hello") -> str | None:
    return api.store.get("Secret", name).status.data_digest


def test_create_writes_digest_in_the_same_write(api: Api) -> None:
    """A created Secret carries its digest from the start; it hides the values and is keyed."""
    body = _create(api)
    digest = body["status"]["dataDigest"]
    assert digest and digest.startswith("hs256:") and body["metadata"]["resourceVersion"] == \
        api.store.get("Secret", "hello").metadata.resource_version
    assert VALUE not in digest
    plain = json.dumps(sorted({"A": VALUE, "B": "b"}.items()), separators=(",", ":")).encode()
    assert digest.removeprefix("hs256:") not in hashlib.sha256(plain).hexdigest()  # not an unkeyed hash
    assert _create(api, "other")["status"]["dataDigest"] == digest  # same values, same key → same digest


@pytest.mark.parametrize(("method", "body", "moves"), [
    ("PATCH", {"spec": {"data": {"A": "changed"}}}, True),
    ("PATCH", {"spec": {"data": {"A": VALUE}}}, False),
    ("PATCH", {"spec": {"data": {"B": None}}}, True),
    ("PATCH", {"spec": {"data": {"C": "new"}}}, True),
    ("PATCH", {"metadata": {"labels": {"x": "y"}}}, False),
    ("PUT", {"spec": {"app": "hello", "data": {"A": VALUE, "B": "b"}}}, False),
    ("PUT", {"spec": {"app": "hello", "data": {"A": VALUE}}}, True),
    ("PUT", {"spec": {"app": "hello"}}, False),
], ids=["patch-change", "patch-same", "patch-unset", "patch-add", "patch-labels", "put-same", "put-drop", "put-no-data"])
def test_digest_follows_values(api: Api, method: str, body: dict[str, Any], moves: bool) -> None:
    """Every write path keeps the digest equal for equal values and moves it when values change."""
    before = _create(api)["status"]["dataDigest"]
    if method == "PUT":
        body = {**body, "metadata": {"name": "hello",
                                     "resourceVersion": api.store.get("Secret", "hello").metadata.resource_version}}
    r = api.req(method, "/api/v1/secrets/hello", json=body)
    assert r.status_code == 200, r.text
    after = _digest(api)
    assert after and (after != before) is moves
    assert r.json["status"].get("dataDigest") == after and VALUE not in r.text


def test_rotation_rewrites_ciphertexts_but_not_the_digest(api: Api) -> None:
    """rotate-key bumps the Secret's generation and ciphertexts; dataDigest stays as it was."""
    _create(api)
    before = api.store.get("Secret", "hello")
    r = api.req("POST", "/api/v1/secrets/rotate-key")
    assert r.status_code == 200, r.text
    after = api.store.get("Secret", "hello")
    assert after.metadata.generation > before.metadata.generation
    assert after.spec.data["A"] != before.spec.data["A"]
    assert after.status.data_digest == before.status.data_digest
    # a later write of a changed value still moves it, under the new key
    r = api.req("PATCH", "/api/v1/secrets/hello", json={"spec": {"data": {"A": "changed"}}})
    assert r.status_code == 200 and _digest(api) not in (None, before.status.data_digest)
