"""A drain's buffer on the node: a cursor into the logs the node keeps anyway.

Every Instance log already sits on the node's disk in size-capped segments whose bytes keep
their logical offsets forever (``forge.nodeagent.logwriter``). A drain therefore copies
nothing: its buffer is, per Instance and source, the bytes between its cursor and the log's
end — bounded twice, by the writer's cap per log (``DEFAULT_CAP``; a flood is rate-limited and
capped before it reaches the disk, so one app can never fill it) and by the drain's own bound
``buffer_bytes``: a drain that falls further behind (its receiver down for long) skips to the
newest ``buffer_bytes``, counts the lines it skipped as dropped and sends a marker line saying
so. Bytes the writer deleted before the drain sent them are counted too (``droppedBytes``).

The cursors (and the counters) are saved atomically after every acknowledged batch, so an
agent restart resumes where delivery was acknowledged: at most the one batch in flight at the
crash is sent twice (at least once, with a bounded tail of duplicates).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge.atomicfile import write_atomic
from forge.nodeagent.logship import log_path, read_pending
from forge.nodeagent.logwriter import MAX_LINE, log_end, segments
from forge.nodeagent.state import LogCursor

DEFAULT_BUFFER_BYTES = 16 * 2**20  # per Instance log and drain: how far behind a drain may fall
SKIP_READ = 2**20


@dataclass
class DrainState:
    """What a drain persisted on this node: per Instance and source, the offset up to which the
    receiver acknowledged; and the counters it reports."""

    cursors: dict[str, dict[str, int]] = field(default_factory=dict)
    delivered: int = 0
    dropped: int = 0
    dropped_bytes: int = 0

    @classmethod
    def load(cls, path: Path) -> DrainState | None:
        try:
            data: dict[str, Any] = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable (never torn: written by rename): start afresh
        return cls(
            cursors={
                str(i): {str(s): int(o) for s, o in (c or {}).items()}
                for i, c in (data.get("cursors") or {}).items()
            },
            delivered=int(data.get("delivered") or 0),
            dropped=int(data.get("dropped") or 0),
            dropped_bytes=int(data.get("droppedBytes") or 0),
        )

    def save(self, path: Path) -> None:
        body = {
            "cursors": self.cursors,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "droppedBytes": self.dropped_bytes,
        }
        write_atomic(Path(path), json.dumps(body, sort_keys=True).encode())


@dataclass
class Chunk:
    """Lines of one log after a cursor: ``[(offset, text)]``, the cursor after them, and what was
    dropped on the way (lines skipped over the drain's bound, bytes deleted before delivery)."""

    lines: list[tuple[int, str]]
    end: int
    skipped_lines: int = 0
    lost_bytes: int = 0


def log_start(log_dir: Path, source: str) -> int:
    segs = segments(log_dir, source)
    return segs[0][0] if segs else 0


def read_chunk(log_dir: Path, source: str, pos: int, max_bytes: int, buffer_bytes: int) -> Chunk:
    """Up to ``max_bytes`` of complete lines after ``pos``; first, if the log's end is more than
    ``buffer_bytes`` ahead, skip to the line that starts the newest ``buffer_bytes``."""
    skipped = lost = 0
    end = log_end(log_dir, source)
    if end - pos > buffer_bytes:
        target = line_start_at(log_dir, source, end - buffer_bytes)
        skipped, lost = count_lines(log_dir, source, pos, target)
        pos = target
    lines, new_pos, gone = read_pending(
        log_path(log_dir.parent, log_dir.name, source), LogCursor(pos), max_bytes
    )
    return Chunk(lines, new_pos, skipped, lost + gone)


def line_start_at(log_dir: Path, source: str, offset: int) -> int:
    """The offset of the first line that starts at or after ``offset``."""
    for base, path, size in segments(log_dir, source):
        if base <= offset < base + size:
            if offset == base:
                return offset  # a segment starts with a line
            try:
                with open(path, "rb") as f:
                    f.seek(offset - 1 - base)
                    data = f.read(MAX_LINE + 1)
            except FileNotFoundError:
                return offset
            nl = data.find(b"\n")
            return offset if nl < 0 else offset + nl
    return offset


def count_lines(log_dir: Path, source: str, start: int, end: int) -> tuple[int, int]:
    """(lines in ``[start, end)`` still on the node, bytes of that range already deleted)."""
    lines = 0
    present = 0
    for base, path, size in segments(log_dir, source):
        lo, hi = max(start, base), min(end, base + size)
        if lo >= hi:
            continue
        try:
            with open(path, "rb") as f:
                f.seek(lo - base)
                left = hi - lo
                while left > 0:
                    data = f.read(min(SKIP_READ, left))
                    if not data:
                        break
                    lines += data.count(b"\n")
                    present += len(data)
                    left -= len(data)
        except FileNotFoundError:
            continue
    return lines, max(0, end - start - present)
