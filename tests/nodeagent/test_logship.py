"""Log files as one logical stream: line offsets, partial lines, rotation without losing position."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.nodeagent.logship import MAX_LINE, read_pending, rotate_if_needed, rotated
from forge.nodeagent.state import LogCursor


def _ship_all(path: Path, cur: LogCursor) -> list[tuple[int, str]]:
    """Drain like the shipper does: read, acknowledge, repeat until the position stops moving."""
    out: list[tuple[int, str]] = []
    while True:
        lines, pos = read_pending(path, cur)
        out += lines
        if pos == cur.shipped:
            return out
        cur.shipped = pos


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"", []),
        (b"a\nbb\n", [(0, "a"), (2, "bb")]),
        (b"a\nunfinished", [(0, "a")]),
        (b"crlf\r\n\n", [(0, "crlf"), (6, "")]),
        (b"\xff\xfebad utf8\n", [(0, "\ufffd\ufffdbad utf8")]),
    ],
    ids=["empty", "two-lines", "partial-line-waits", "crlf-and-empty", "invalid-utf8"],
)
def test_read_pending_offsets(tmp_path: Path, content: bytes, lines: list[tuple[int, str]]) -> None:
    """Each complete line carries the byte offset of its start; an unfinished line waits."""
    p = tmp_path / "app.log"
    p.write_bytes(content)
    assert _ship_all(p, LogCursor()) == lines


def test_overlong_line_is_split(tmp_path: Path) -> None:
    """A line longer than the cap is shipped in pieces instead of blocking the stream forever."""
    p = tmp_path / "app.log"
    p.write_bytes(b"x" * (MAX_LINE + 10))
    got = _ship_all(p, LogCursor())
    assert got == [(0, "x" * MAX_LINE)]


def test_rotation_keeps_logical_offsets(tmp_path: Path) -> None:
    """After copy-truncate rotation, offsets keep increasing and unshipped lines in .1 still ship."""
    p = tmp_path / "app.log"
    cur = LogCursor()
    saved: list[LogCursor] = []
    p.write_bytes(b"one\ntwo\n")
    assert _ship_all(p, cur) == [(0, "one"), (4, "two")]
    with open(p, "ab") as f:
        f.write(b"three\n")
    assert rotate_if_needed(p, cur, cap_bytes=10, persist=lambda: saved.append(LogCursor(**vars(cur))))
    assert p.stat().st_size == 0 and rotated(p).read_bytes() == b"one\ntwo\nthree\n"
    assert saved and saved[-1].cur_base == 14
    with open(p, "ab") as f:
        f.write(b"four\n")
    assert _ship_all(p, cur) == [(8, "three"), (14, "four")]
    assert not rotate_if_needed(p, cur, cap_bytes=10, persist=lambda: None)


def test_reshipping_from_an_old_cursor_is_identical(tmp_path: Path) -> None:
    """A cursor that was not acknowledged (outage) yields the same offsets again: idempotent on the server."""
    p = tmp_path / "build.log"
    p.write_bytes(b"l1\nl2\nl3\n")
    first = _ship_all(p, LogCursor())
    assert _ship_all(p, LogCursor()) == first == [(0, "l1"), (3, "l2"), (6, "l3")]


def test_lost_rotated_file_skips_to_live_file(tmp_path: Path) -> None:
    """When .1 is gone (rotated twice during an outage) the shipper skips to the live file."""
    p = tmp_path / "app.log"
    p.write_bytes(b"new\n")
    cur = LogCursor(shipped=0, cur_base=100, prev_base=50)
    assert _ship_all(p, cur) == [(100, "new")]
