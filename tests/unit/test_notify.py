"""forge.notify's pure parts: masking, URL checks, Retry-After, the message body."""

from __future__ import annotations

import pytest

from forge.models import NotificationSpec
from forge.notify import check_url, default_format, mask_url, message_body, retry_after_seconds

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    "url, hint",
    [
        ("https://hooks.slack.com/services/T00/B00/XXXXsecretXXXXab12", "https://hooks.slack.com/…ab12"),
        ("https://user:pass@example.com:8443/hook?token=s3cr3tvalue99", "https://example.com:8443/…ue99"),
        ("http://10.0.0.1/h", "http://10.0.0.1/…"),  # too short to show any of it
    ],
    ids=["slack", "userinfo-and-query", "short"],
)
def test_mask_url_keeps_the_credential_out(url: str, hint: str) -> None:
    """The hint shows scheme, host, port and at most the last 4 characters of a long path."""
    assert mask_url(url) == hint
    assert "secret" not in hint and "pass" not in hint and "s3cr3t" not in hint


@pytest.mark.parametrize("url", ["ftp://x/y", "https:///nohost", "hooks.slack.com/x", "http://a b/c"])
def test_check_url_refuses_what_cannot_be_posted_to(url: str) -> None:
    """Only http(s) URLs with a host and no spaces; the error does not quote the URL."""
    with pytest.raises(ValueError) as err:
        check_url(url)
    assert url not in str(err.value)


def test_default_format() -> None:
    """Slack's own hosts get Slack's body; anything else the generic one."""
    assert default_format("https://hooks.slack.com/services/x") == "slack"
    assert default_format("https://example.com/hook") == "generic"


@pytest.mark.parametrize(
    "value, seconds",
    [("30", 30.0), (" 7 ", 7.0), ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0), ("soon", None), (None, None)],
    ids=["delta", "spaces", "http-date", "garbage", "absent"],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    """Delta-seconds or an HTTP date, as seconds from now."""
    got = retry_after_seconds(value, NOW)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


def test_install_wide_test_message_names_forge_not_an_empty_app() -> None:
    """A test of the install's notifiers has no App: the subject is Forge, the link the front page."""
    spec = NotificationSpec(event="Test", app="", reason="Test", message="hello", time="t")
    body = message_body("test.install.ab", "uid", spec, "generic", "https://forge.example/")
    assert body["text"].endswith("Forge: test notification (Test)")
    assert body["forge"]["url"] == "https://forge.example/ui/index.html"
    assert "*App:*" not in repr(body["blocks"])
