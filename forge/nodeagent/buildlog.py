"""Build output, each line stamped with the time it was produced.

The build's stdout and stderr go to a pipe the agent reads (a build runs in the foreground, so
a pipe is fine here; apps write to files so they outlive the agent): every line is appended to
``build.log`` as ``\\x1eTIME\\x1fLINE``. The shipper sends TIME as the line's time, so `forge logs
--build` shows when each step happened, not when its lines were shipped; the markers never reach
a person (``unstamp`` and ``strip_stamps``).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Final

from forge.clock import Clock

STAMP: Final[bytes] = b"\x1e"
SEP: Final[bytes] = b"\x1f"
_STAMPED: Final = re.compile(rb"^\x1e[^\x1f\n]*\x1f", re.M)


def stamp(clock: Clock, line: bytes) -> bytes:
    return STAMP + clock.now_iso().encode() + SEP + line


def append(path: Path, clock: Clock, text: str) -> None:
    """Lines the agent itself writes (``==> $ cmd``), stamped like the build's."""
    with open(path, "ab") as out:
        out.write(b"".join(stamp(clock, ln + b"\n") for ln in text.encode().splitlines()))


def unstamp(text: str) -> tuple[str | None, str]:
    """(time or None, the line without its stamp)."""
    if text.startswith("\x1e"):
        when, sep, rest = text[1:].partition("\x1f")
        if sep:
            return when, rest
    return None, text


def strip_stamps(data: bytes) -> bytes:
    return _STAMPED.sub(b"", data)


class StampingPipe:
    """A pipe whose write end a build process gets as stdout and stderr, and a thread that
    appends each line it reads, stamped, to ``path``."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path, self.clock = path, clock
        self._r, self.fd = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="forge-buildlog", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        with os.fdopen(self._r, "rb", buffering=0) as src, open(self.path, "ab") as out:
            while chunk := src.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if lines:
                    out.write(b"".join(stamp(self.clock, ln + b"\n") for ln in lines))
                    out.flush()
            if pending:
                out.write(stamp(self.clock, pending + b"\n"))

    def close_writer(self) -> None:
        """Our copy of the write end (the child has its own): EOF comes when the child's go."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def join(self, timeout: float) -> None:
        self.close_writer()
        self._thread.join(timeout)
