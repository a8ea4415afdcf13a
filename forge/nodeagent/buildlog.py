"""Build output, each line stamped with the time it was produced.

The build's stdout and stderr go to a pipe read by a log writer (``forge.nodeagent.logwriter
--stamp``: rate-limited and capped like an app's log), which appends every line to the build
log's segments as ``\\x1eTIME\\x1fLINE``; the agent's own lines (``append``) are stamped the same. The shipper sends TIME as the line's time, so `forge logs
--build` shows when each step happened, not when its lines were shipped; the markers never reach
a person (``unstamp`` and ``strip_stamps``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from forge.clock import Clock
from forge.nodeagent import logwriter

STAMP: Final[bytes] = logwriter.STAMP
SEP: Final[bytes] = logwriter.SEP
_STAMPED: Final = re.compile(rb"^\x1e[^\x1f\n]*\x1f", re.M)


def stamp(clock: Clock, line: bytes) -> bytes:
    return STAMP + clock.now_iso().encode() + SEP + line


def append(path: Path, clock: Clock, text: str, cap: int = logwriter.DEFAULT_CAP) -> None:
    """Lines the agent itself writes (``==> fetching``, git's output) while no writer runs for
    the log named ``path`` (``DIR/build.log``), stamped like the build's and under the same cap."""
    data = b"".join(stamp(clock, ln + b"\n") for ln in text.encode().splitlines())
    logwriter.append(path.parent, path.name.removesuffix(".log"), data, cap)


def unstamp(text: str) -> tuple[str | None, str]:
    """(time or None, the line without its stamp)."""
    if text.startswith("\x1e"):
        when, sep, rest = text[1:].partition("\x1f")
        if sep:
            return when, rest
    return None, text


def strip_stamps(data: bytes) -> bytes:
    return _STAMPED.sub(b"", data)
