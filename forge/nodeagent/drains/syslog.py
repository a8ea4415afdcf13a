"""RFC 5424 syslog messages and RFC 6587 octet-counting frames, as log drains send them.

``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``: HOSTNAME the node, APP-NAME the
App, PROCID the Instance, MSGID the source (the process type — web, worker … — or ``build``);
no structured data. Header fields are PRINTUSASCII (33–126) of bounded length (RFC 5424 §6):
anything else is replaced with ``_`` and the field cut to its limit, an empty one is the
NILVALUE ``-``. MSG is UTF-8 and starts with the BOM (§6.4), so a receiver knows it is UTF-8.
A frame is ``LEN SP MESSAGE`` (RFC 6587 §3.4.1, also RFC 5425 §4.3 for TLS), LEN the message's
length in octets: a line may hold any byte, newlines included, without breaking the framing.
"""

from __future__ import annotations

import time
from typing import Final

FACILITY_USER: Final[int] = 1
SEVERITY_INFO: Final[int] = 6
SEVERITY_ERR: Final[int] = 3
BOM: Final[bytes] = b"\xef\xbb\xbf"
NIL: Final[str] = "-"
# RFC 5424 §6: the header fields' maximum lengths.
MAX_HOSTNAME: Final[int] = 255
MAX_APP_NAME: Final[int] = 48
MAX_PROCID: Final[int] = 128
MAX_MSGID: Final[int] = 32
MAX_MSG: Final[int] = 16 * 1024  # a line on the node is at most MAX_LINE (16 KiB) already


def header_field(value: str, limit: int) -> str:
    """``value`` as an RFC 5424 header field: PRINTUSASCII only, at most ``limit`` octets."""
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return out or NIL


def timestamp(ts: float) -> str:
    """RFC 5424 §6.2.3 TIMESTAMP in UTC with microseconds: ``2026-12-07T22:18:00.123456Z``."""
    whole = int(ts)
    micros = int(round((ts - whole) * 1_000_000))
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def message(
    ts: float,
    hostname: str,
    app_name: str,
    procid: str,
    msgid: str,
    text: str,
    severity: int = SEVERITY_INFO,
    facility: int = FACILITY_USER,
) -> bytes:
    """One RFC 5424 message (without framing)."""
    pri = facility * 8 + severity
    head = " ".join(
        (
            f"<{pri}>1",
            timestamp(ts),
            header_field(hostname, MAX_HOSTNAME),
            header_field(app_name, MAX_APP_NAME),
            header_field(procid, MAX_PROCID),
            header_field(msgid, MAX_MSGID),
            NIL,  # STRUCTURED-DATA
        )
    )
    body = text.encode("utf-8", "replace")
    if len(body) > MAX_MSG:  # cut on a character boundary: MSG stays valid UTF-8
        body = body[:MAX_MSG].decode("utf-8", "ignore").encode("utf-8")
    return head.encode("ascii") + b" " + BOM + body


def frame(msg: bytes) -> bytes:
    """RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(msg)).encode("ascii") + b" " + msg


def unframe(data: bytes) -> tuple[list[bytes], bytes]:
    """Split octet-counted frames (tests, and a receiver's view): (messages, the unfinished rest)."""
    out: list[bytes] = []
    pos = 0
    while True:
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        digits = data[pos:sp]
        if not digits.isdigit() or digits.startswith(b"0"):
            raise ValueError(f"bad frame length {digits[:12]!r} at octet {pos}")
        n = int(digits)
        if sp + 1 + n > len(data):
            break
        out.append(data[sp + 1 : sp + 1 + n])
        pos = sp + 1 + n
    return out, data[pos:]
