"""``/api/v1/notifiers``: the webhook URL goes in sealed and never comes out; lookup by URL
survives a key rotation; ``/test`` queues a Notification for the scope's notifiers."""

from __future__ import annotations

import pytest

from forge.models import Notification, Notifier
from tests.api.conftest import Api, app_body

SECRET = "T0AAAAAAA/B0BBBBBBB/xoxSecretTokenValue123"
URL = f"https://hooks.slack.com/services/{SECRET}"
GENERIC = "http://127.0.0.1:9/hooks/generic-secret-0123456789"


def test_add_list_lookup_remove_never_show_the_url(api: Api) -> None:
    """Responses, lists and the stored record carry the masked hint and the ciphertext only."""
    api.create("apps", app_body("hello"))
    r = api.req("POST", "/api/v1/notifiers", json={"app": "hello", "url": URL})
    assert r.status_code == 201, r.text
    made = r.json
    assert made["app"] == "hello" and made["format"] == "slack" and made["name"].startswith("app.hello.")
    assert made["urlHint"] == "https://hooks.slack.com/…e123"
    again = api.req(
        "POST", "/api/v1/notifiers", json={"app": "hello", "url": URL, "events": ["DeployFailed"]}
    )
    assert again.status_code == 200 and again.json["name"] == made["name"]
    assert again.json["events"] == ["DeployFailed"]
    install = api.create("notifiers", {"url": GENERIC})
    assert install["name"].startswith("install.") and install["format"] == "generic"
    listed = api.req("GET", "/api/v1/notifiers")
    assert [n["name"] for n in listed.json["items"]] == sorted([made["name"], install["name"]])
    stored = api.store.get(Notifier, made["name"])
    assert stored.spec.url.startswith("fsec1:")
    for text in (r.text, again.text, listed.text, stored.model_dump_json()):
        assert SECRET not in text and "generic-secret" not in text
    found = api.req("POST", "/api/v1/notifiers/lookup", json={"app": "hello", "url": URL})
    assert found.status_code == 200 and found.json["name"] == made["name"]
    assert api.req("DELETE", f"/api/v1/notifiers/{made['name']}").status_code == 200
    assert api.req("POST", "/api/v1/notifiers/lookup", json={"app": "hello", "url": URL}).status_code == 404


@pytest.mark.parametrize(
    "body, path",
    [
        ({"url": "ftp://example.com/s3cr3t-path"}, "url"),
        ({"url": "not a url s3cr3t-path"}, "url"),
        ({"url": "https://example.com/x", "events": ["Nope"]}, "events.0"),
        ({"url": "https://example.com/x", "colour": "red"}, "colour"),
    ],
    ids=["scheme", "no-host", "event", "unknown-field"],
)
def test_bad_bodies_name_the_field_not_the_value(api: Api, body: dict, path: str) -> None:
    """400 naming the field; the rejected URL is not echoed back."""
    r = api.req("POST", "/api/v1/notifiers", json=body)
    assert r.status_code == 400, r.text
    assert path in [d["path"] for d in r.json["details"]]
    assert "s3cr3t-path" not in r.text


def test_unknown_app_is_404(api: Api) -> None:
    """A notifier for an App that does not exist is refused."""
    assert api.req("POST", "/api/v1/notifiers", json={"app": "ghost", "url": URL}).status_code == 404


def test_lookup_after_key_rotation(api: Api) -> None:
    """rotate-key re-seals the URL; the same URL still finds (and does not duplicate) its notifier."""
    made = api.create("notifiers", {"url": URL})
    before = api.store.get(Notifier, made["name"]).spec.url
    assert api.req("POST", "/api/v1/secrets/rotate-key").status_code == 200
    assert api.store.get(Notifier, made["name"]).spec.url != before
    found = api.req("POST", "/api/v1/notifiers/lookup", json={"url": URL})
    assert found.status_code == 200 and found.json["name"] == made["name"]
    again = api.req("POST", "/api/v1/notifiers", json={"url": URL})
    assert again.status_code == 200 and len(api.store.list(Notifier)[0]) == 1


def test_test_message_targets_the_scope(api: Api) -> None:
    """/test queues a Test Notification for the App's notifiers and the install's; 404 when none."""
    api.create("apps", app_body("hello"))
    api.create("apps", app_body("other"))
    assert api.req("POST", "/api/v1/notifiers/test", json={"app": "hello"}).status_code == 404
    mine = api.create("notifiers", {"app": "hello", "url": URL})
    api.create("notifiers", {"app": "other", "url": GENERIC})
    everyone = api.create("notifiers", {"url": GENERIC})
    r = api.req("POST", "/api/v1/notifiers/test", json={"app": "hello"})
    assert r.status_code == 201, r.text
    assert r.json["spec"]["event"] == "Test"
    assert r.json["spec"]["targets"] == sorted([mine["name"], everyone["name"]])
    got = api.req("GET", f"/api/v1/notifications/{r.json['metadata']['name']}")
    assert got.status_code == 200
    assert isinstance(api.store.get(Notification, r.json["metadata"]["name"]), Notification)
    install = api.req("POST", "/api/v1/notifiers/test", json={})
    assert install.json["spec"]["targets"] == [everyone["name"]]
    # a notifier that hears only some events is still tested: the test is of its URL
    api.req("POST", "/api/v1/notifiers", json={"app": "hello", "url": URL, "events": ["ErrorRate"]})
    again = api.req("POST", "/api/v1/notifiers/test", json={"app": "hello"})
    assert again.json["spec"]["targets"] == sorted([mine["name"], everyone["name"]])


def test_the_longest_url_accepted_is_stored(api: Api) -> None:
    """A URL at the request's limit still fits the sealed field (no 500 for a long URL)."""
    url = "https://example.com/" + "x" * (4096 - len("https://example.com/"))
    r = api.req("POST", "/api/v1/notifiers", json={"url": url})
    assert r.status_code == 201, r.text
    too_long = api.req("POST", "/api/v1/notifiers", json={"url": url + "x"})
    assert too_long.status_code == 400 and "xxxxxxxx" not in too_long.text
