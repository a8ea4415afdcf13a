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


def printable_lines(text: str) -> str:
    """``printable`` that keeps line breaks (``\\r\\n`` becomes ``\\n``): for a message stored for
    people to read later (an Event quoting a build tail), so it prints as text, not ``\\x0a``."""
    return "\n".join(printable(line) for line in text.replace("\r\n", "\n").split("\n"))


def printable_text(text: str, indent: str = "    ") -> str:
    """``printable`` for a message people read (a reason's message, a build tail): its line
    breaks stay line breaks — each continuation indented under the first line — and every other
    control character is shown as ``\\xNN``. Trailing blank lines are dropped."""
    lines = [printable(line) for line in text.replace("\r\n", "\n").rstrip("\n").split("\n")]
    return ("\n" + indent).join(lines)
