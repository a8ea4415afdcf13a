"""One-time dashboard sign-in links: ``forge up`` prints ``http://API/ui#signin=CODE`` (the way
Jupyter prints its URL), the dashboard trades the code once for the admin token it then keeps
in sessionStorage.

The code lives in the link's fragment, which browsers never send in a request, so it is in no
access log. The data dir holds only its SHA-256 and an expiry (``ui-signin.json``, 0600); the
first exchange deletes the file (``os.unlink``: of two racing exchanges exactly one wins), so a
link in terminal scrollback is worthless once used or after ``TTL_SECONDS``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Final

from forge.clock import Clock
from forge.errors import Unauthorized

FILE: Final[str] = "ui-signin.json"
TTL_SECONDS: Final[float] = 900.0


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def mint(data_dir: Path, clock: Clock) -> str:
    """A fresh one-time code (replacing any unused one)."""
    code = secrets.token_urlsafe(24)
    path = Path(data_dir) / FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"sha256": _digest(code), "expires": clock.now() + TTL_SECONDS}, f)
    os.replace(tmp, path)
    return code


def redeem(data_dir: Path, code: str, clock: Clock) -> None:
    """Accept ``code`` once; Unauthorized when it is wrong, used or expired (the same message)."""
    path = Path(data_dir) / FILE
    refused = Unauthorized(
        "this sign-in link is not valid (used, expired or mistyped); "
        "sign in with the admin token, or restart forge up for a new link"
    )
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        raise refused from None
    if (
        not isinstance(rec, dict)
        or not code
        or not hmac.compare_digest(str(rec.get("sha256", "")), _digest(code))
    ):
        raise refused
    try:
        os.unlink(path)  # the first exchange wins; a racing second finds no file
    except FileNotFoundError:
        raise refused from None
    if float(rec.get("expires", 0)) < clock.now():
        raise refused
