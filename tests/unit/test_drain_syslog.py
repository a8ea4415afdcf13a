"""RFC 5424 messages and RFC 6587 octet-counting frames of log drains; drain URLs and masking."""

from __future__ import annotations

import pytest

from forge.drains import drain_id, mask_url, parse_url
from forge.nodeagent.drains.syslog import (
    BOM,
    MAX_APP_NAME,
    MAX_MSGID,
    MAX_PROCID,
    frame,
    header_field,
    message,
    timestamp,
    unframe,
)

TS = 1_800_000_000.25


def test_message_layout() -> None:
    """PRI, version 1, UTC timestamp with microseconds, node, app, Instance, source, nil SD, BOM, MSG."""
    msg = message(TS, "node-1", "hello", "hello-3-0", "web", "GET / 200")
    assert msg == b"<14>1 2027-01-15T08:00:00.250000Z node-1 hello hello-3-0 web - " + BOM + b"GET / 200"


@pytest.mark.parametrize(
    ("value", "limit", "want"),
    [
        ("hello", MAX_APP_NAME, "hello"),
        ("", MAX_APP_NAME, "-"),
        ("a b\tc", MAX_PROCID, "a_b_c"),  # SP would end the field: PRINTUSASCII only (33..126)
        ("héllo", MAX_APP_NAME, "h_llo"),  # non-ASCII is not PRINTUSASCII
        ("x" * 60, MAX_APP_NAME, "x" * 48),  # APP-NAME is at most 48 octets
        ("w" * 40, MAX_MSGID, "w" * 32),  # MSGID at most 32
        ("p" * 200, MAX_PROCID, "p" * 128),  # PROCID at most 128
        ("a\x7fb", MAX_PROCID, "a_b"),
    ],
    ids=["plain", "empty-is-nil", "spaces", "non-ascii", "app-name-cut", "msgid-cut", "procid-cut", "del"],
)
def test_header_fields_are_printusascii_and_bounded(value: str, limit: int, want: str) -> None:
    """Header fields carry only PRINTUSASCII, cut to RFC 5424's limits; empty is the NILVALUE."""
    assert header_field(value, limit) == want


def test_header_fields_cannot_shift_the_message() -> None:
    """A field with spaces cannot make a receiver read the wrong MSGID or MSG."""
    msg = message(TS, "n 1", "my app", "inst 0", "web x", "body")
    head = msg.split(BOM)[0].decode().split(" ")
    assert head[2:7] == ["n_1", "my_app", "inst_0", "web_x", "-"]


def test_msg_is_utf8_after_bom() -> None:
    """MSG is UTF-8 behind the BOM; bytes that were not UTF-8 arrive replaced, never raw."""
    msg = message(TS, "n", "a", "p", "m", "héllo wörld ✓")
    assert msg.split(b" - ", 1)[1] == BOM + "héllo wörld ✓".encode()
    bad = message(TS, "n", "a", "p", "m", b"\xff\xfeok".decode("utf-8", "replace"))
    bad.split(b" - ", 1)[1][3:].decode("utf-8")  # decodes cleanly


def test_timestamp_rounds_into_the_next_second() -> None:
    """A fraction that rounds up to a whole second carries into the seconds."""
    assert timestamp(1_800_000_000.9999999) == "2027-01-15T08:00:01.000000Z"


@pytest.mark.parametrize(
    "texts",
    [["one"], ["a", "b", "c"], ["line with\nnewline", "  spaces  ", ""], ["ünïcödé " * 50], ["9 " * 10]],
    ids=["one", "three", "newline-inside", "multibyte", "digits-and-spaces"],
)
def test_octet_counting_round_trip(texts: list[str]) -> None:
    """LEN SP MSG with LEN in octets (not characters): a receiver splits the stream back exactly,
    newlines inside a message included, whatever the chunking of the stream."""
    msgs = [message(TS, "n", "app", "app-1-0", "web", t) for t in texts]
    stream = b"".join(frame(m) for m in msgs)
    assert unframe(stream) == (msgs, b"")
    for cut in range(1, len(stream), max(1, len(stream) // 17)):  # arbitrary TCP segmentation
        first, rest = unframe(stream[:cut])
        second, tail = unframe(rest + stream[cut:])
        assert first + second == msgs and tail == b""


def test_frame_length_counts_octets() -> None:
    """The length prefix counts UTF-8 octets of the whole message."""
    m = message(TS, "n", "a", "p", "m", "é")
    assert frame(m).startswith(f"{len(m)} ".encode()) and len(m) == len(m.decode("utf-8").encode("utf-8"))


# ----------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("syslog+tcp://logs.example.com:514", None),
        ("syslog+tls://127.0.0.1:6514", None),
        ("https://user:pw@logs.example.com/drain?token=abc", None),
        ("syslog://logs.example.com:514", "scheme"),
        ("http://logs.example.com/", "scheme"),
        ("syslog+tcp://logs.example.com", "needs a port"),
        ("syslog+tls://u:p@logs.example.com:6514", "no user"),
        ("syslog+tcp://logs.example.com:514/path", "no path"),
        ("syslog+tcp://:514", "host"),
        ("https://logs.example.com:99999/", "not a URL"),
        ("https://logs.example.com/a b", "spaces"),
        ("https://logs.example.com/#frag", "fragment"),
        ("", "required"),
    ],
)
def test_parse_url(url: str, error: str | None) -> None:
    """Only the three schemes, syslog with HOST:PORT and nothing else; messages never echo secrets."""
    if error is None:
        parse_url(url)
        return
    with pytest.raises(ValueError, match=error) as exc:
        parse_url(url)
    assert "pw" not in str(exc.value) and "abc" not in str(exc.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("syslog+tls://logs.example.com:6514", "syslog+tls://logs.example.com:6514"),
        ("https://user:s3cret@logs.example.com/in", "https://user:***@logs.example.com/in"),
        ("https://t0ken@logs.example.com/in", "https://***@logs.example.com/in"),
        ("https://logs.example.com/in?token=s3cret&x=1", "https://logs.example.com/in?token=***&x=***"),
    ],
    ids=["nothing-secret", "password", "lone-user-token", "query"],
)
def test_mask_url_hides_credentials(url: str, masked: str) -> None:
    """Passwords, lone user tokens and every query value are masked."""
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url) and "t0ken" not in mask_url(url)


def test_drain_id_is_per_app_and_url() -> None:
    """The same URL on two Apps is two drains; the ID does not contain the URL."""
    a, b = drain_id("a", "https://x:pw@h/"), drain_id("b", "https://x:pw@h/")
    assert a != b and len(a) == 10 and "pw" not in a
