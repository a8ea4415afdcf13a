"""The pure part of the GitHub webhook: signatures, payload decoding, push → Apps → Deployments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from forge.errors import BadRequest
from forge.models import App, AppSpec, Deployment, DeploymentSpec, ObjectMeta, next_release_number
from forge.release import release_config
from forge.webhook import (
    Push,
    build_deployment,
    decode_payload,
    find_delivery,
    ignore_reason,
    parse_push,
    select_apps,
    verify_signature,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "github"  # copied from shared/fixtures
VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("secret", "body", "header", "ok"), [
    (VECTOR_SECRET, b"Hello, World!", VECTOR_SIG, True),
    (VECTOR_SECRET, b"Hello, World!", VECTOR_SIG.upper().replace("SHA256=", "sha256="), True),
    (VECTOR_SECRET, b"Hello, World!", f"  {VECTOR_SIG} ", True),
    (VECTOR_SECRET, b"Hello, World?", VECTOR_SIG, False),
    ("another secret", b"Hello, World!", VECTOR_SIG, False),
    ("", b"Hello, World!", VECTOR_SIG, False),
    (VECTOR_SECRET, b"Hello, World!", None, False),
    (VECTOR_SECRET, b"Hello, World!", "", False),
    (VECTOR_SECRET, b"Hello, World!", VECTOR_SIG.removeprefix("sha256="), False),
    (VECTOR_SECRET, b"Hello, World!", VECTOR_SIG.replace("sha256=", "sha1="), False),
    (VECTOR_SECRET, b"Hello, World!", VECTOR_SIG[:-2], False),
    (VECTOR_SECRET, b"Hello, World!", VECTOR_SIG + "00", False),
    (VECTOR_SECRET, b"Hello, World!", "sha256=ünïcode", False),
], ids=["github-vector", "uppercase-hex", "surrounding-space", "body-changed", "wrong-secret",
        "empty-secret", "no-header", "empty-header", "no-prefix", "sha1-prefix", "truncated", "extended",
        "non-ascii"])
def test_verify_signature(secret: str, body: bytes, header: str | None, ok: bool) -> None:
    """HMAC-SHA256 over the raw body with GitHub's test vector; empty secret never verifies."""
    assert verify_signature(secret, body, header) is ok


def test_readme_vector_matches() -> None:
    """The fixture README's documented vector is the one used above."""
    readme = (FIXTURES / "README.md").read_text()
    assert VECTOR_SIG in readme and VECTOR_SECRET in readme


@pytest.mark.parametrize(("body", "ctype"), [
    (b'{"zen": "x"}', "application/json"),
    (b'{"zen": "x"}', "application/json; charset=utf-8"),
    (b'{"zen": "x"}', None),
    (urlencode({"payload": '{"zen": "x"}'}).encode(), "application/x-www-form-urlencoded"),
], ids=["json", "json-charset", "no-content-type", "form"])
def test_decode_payload(body: bytes, ctype: str | None) -> None:
    """Both content types GitHub offers decode to the same object."""
    assert decode_payload(body, ctype) == {"zen": "x"}


@pytest.mark.parametrize(("body", "ctype", "message"), [
    (b"{not json", "application/json", "not valid JSON"),
    (b"[1, 2]", "application/json", "must be a JSON object"),
    (b"\xff\xfe", "application/json", "not UTF-8"),
    (b"other=1", "application/x-www-form-urlencoded", "exactly one payload field"),
    (b"payload=1&payload=2", "application/x-www-form-urlencoded", "exactly one payload field"),
    (b"payload=%7Bbad", "application/x-www-form-urlencoded", "not valid JSON"),
    (b"a=1&&&=", "application/x-www-form-urlencoded", "not valid application/x-www-form-urlencoded"),
    (b"<xml/>", "text/xml", "is not supported"),
    (b"[" * 100_000, "application/json", "not valid JSON"),
], ids=["bad-json", "array", "not-utf8", "form-no-payload", "form-two-payloads", "form-bad-json",
        "form-malformed", "xml", "deep-nesting"])
def test_decode_payload_rejects(body: bytes, ctype: str, message: str) -> None:
    """Malformed bodies are a BadRequest with a clear message."""
    with pytest.raises(BadRequest, match=message):
        decode_payload(body, ctype)


def _push(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"ref": "refs/heads/main", "before": "0" * 40, "after": SHA, "deleted": False,
                            "repository": {"full_name": "acme/hello"}}
    base.update(over)
    return base


def test_tag_deletion_fixture() -> None:
    """GitHub's own tag-deletion example parses as a deletion that deploys nothing."""
    push = parse_push(json.loads((FIXTURES / "push-tag-deleted.json").read_text()))
    assert push.deleted and push.branch is None and push.repo == "Codertocat/Hello-World"
    assert ignore_reason(push) == "tag deletion of refs/tags/simple-tag deploys nothing"


@pytest.mark.parametrize(("payload", "path"), [
    (_push(after="abc"), "after"),
    (_push(after=SHA.upper()), "after"),
    (_push(after=SHA + "0"), "after"),
    (_push(after=None), "after"),
    (_push(ref=""), "ref"),
    (_push(ref=5), "ref"),
    (_push(repository={}), "repository.full_name"),
    (_push(repository="acme/hello"), "repository.full_name"),
    ({"ref": "refs/heads/main", "after": SHA}, "repository.full_name"),
], ids=["short-after", "uppercase-after", "long-after", "null-after", "empty-ref", "number-ref",
        "no-full-name", "repository-string", "no-repository"])
def test_parse_push_rejects(payload: dict[str, Any], path: str) -> None:
    """A push with a bad field is a BadRequest naming that field."""
    with pytest.raises(BadRequest) as exc:
        parse_push(payload)
    assert exc.value.details[0]["path"] == path and path in exc.value.message


@pytest.mark.parametrize(("payload", "reason"), [
    (_push(), None),
    (_push(ref="refs/heads/feature/x"), None),
    (_push(ref="refs/tags/v1"), "refs/tags/v1 is not a branch (tag pushes deploy nothing)"),
    (_push(deleted=True, after="0" * 40), "branch deletion of refs/heads/main deploys nothing"),
    (_push(after="0" * 40), "branch deletion of refs/heads/main deploys nothing"),
    (_push(deleted=True, after="garbage"), "branch deletion of refs/heads/main deploys nothing"),
    (_push(ref="refs/pull/1/head"), "refs/pull/1/head is not a branch (tag pushes deploy nothing)"),
], ids=["branch", "slashed-branch", "tag", "deleted", "zero-after", "deleted-flag-wins", "other-ref"])
def test_ignore_reason(payload: dict[str, Any], reason: str | None) -> None:
    """Tags, deletions and non-branch refs never deploy; branch pushes might."""
    assert ignore_reason(parse_push(payload)) == reason


def _app(name: str, repo: str = "acme/hello", branches: tuple[str, ...] = ("main",), auto: bool = True,
         deleting: bool = False) -> App:
    meta = ObjectMeta(name=name, deletion_timestamp="2027-01-01T00:00:00.000Z" if deleting else None)
    return App(metadata=meta, spec=AppSpec(repo=repo, branches=list(branches), auto_deploy=auto,
                                           env={"A": "1"}, replicas=2, domains=["hello.example.com"]))


APPS = [_app("hello"), _app("hello-staging", branches=("staging",)), _app("mirror", repo="Acme/Hello"),
        _app("manual", repo="acme/manual", auto=False), _app("gone", repo="acme/gone", deleting=True)]


@pytest.mark.parametrize(("repo", "branch", "names", "reason"), [
    ("acme/hello", "main", ["hello", "mirror"], None),
    ("ACME/HELLO", "main", ["hello", "mirror"], None),
    ("acme/hello", "staging", ["hello-staging"], None),
    ("acme/hello", "dev", [], "no App tracks branch dev of acme/hello"),
    ("acme/other", "main", [], "no App tracks repository acme/other"),
    ("acme/manual", "main", [], "autoDeploy is off for manual"),
    ("acme/gone", "main", [], "no App tracks repository acme/gone"),
], ids=["two-apps", "case-insensitive", "other-branch", "unknown-branch", "unknown-repo", "auto-off",
        "app-being-deleted"])
def test_select_apps(repo: str, branch: str, names: list[str], reason: str | None) -> None:
    """Registered Apps are the allowlist: repo, branch and autoDeploy all have to match."""
    apps, why = select_apps(APPS, Push(repo=repo, ref=f"refs/heads/{branch}", after=SHA, deleted=False))
    assert [a.metadata.name for a in apps] == names and why == reason


def _dep(name: str, delivery: str | None = None) -> Deployment:
    return Deployment(metadata=ObjectMeta(name=name),
                      spec=DeploymentSpec(app="hello", commit=SHA, trigger={"type": "webhook", "delivery_id": delivery}))


@pytest.mark.parametrize(("names", "expected"), [
    ([], 1), (["hello-1"], 2), (["hello-1", "hello-9", "hello-3"], 10), (["hello-x"], 1)],
    ids=["first", "second", "highest-wins", "unnumbered"])
def test_next_release_number(names: list[str], expected: int) -> None:
    """N is one more than the highest release number of the App."""
    assert next_release_number([_dep(n) for n in names]) == expected


def test_find_delivery() -> None:
    """A redelivery finds the Deployment its first copy created; no id never matches."""
    deps = [_dep("hello-1", "d-1"), _dep("hello-2", None)]
    assert find_delivery(deps, "d-1") is deps[0]
    assert find_delivery(deps, "d-2") is None and find_delivery(deps, None) is None


def test_build_deployment_is_spec_only() -> None:
    """The Deployment carries commit, ref, repo, trigger and the App's whole config (processes and
    node selector too, from the one config builder); status stays empty."""
    app = APPS[2].copy_deep()
    app.spec.processes, app.spec.node_selector = {"worker": 2}, {"disk": "ssd"}
    dep = build_deployment(app, 4, Push("acme/hello", "refs/heads/main", SHA, False), "d-9",
                           release_config(app, None))
    assert dep.metadata.name == "mirror-4" and dep.metadata.labels == {"forge.dev/app": "mirror"}
    spec = dep.dump()["spec"]
    assert spec == {"app": "mirror", "commit": SHA, "ref": "refs/heads/main", "repo": "Acme/Hello",
                    "trigger": {"type": "webhook", "deliveryId": "d-9"},
                    "config": {"env": {"A": "1"}, "replicas": 2, "domains": ["hello.example.com"],
                               "processes": {"worker": 2}, "nodeSelector": {"disk": "ssd"}}}
    assert dep.status.phase == ""
