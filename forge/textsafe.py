"""App-supplied text, made safe for a terminal: control characters shown, never obeyed.

An app's output (or a build tail in an Event message) may carry ``ESC[2K``, ``\\r``, an OSC
title sequence or a bell; printed as is, it would drive the operator's terminal. Every place
Forge prints such text passes it through ``printable``: tabs stay, every other C0/C1 control
character and DEL becomes a visible ``\\xNN`` (newlines too, so one record is one line).
"""

from __future__ import annotations

import re
from typing import Final

_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
