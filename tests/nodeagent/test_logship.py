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


class _Sink:
    """The control plane's side of POST /instances/NAME/logs: what arrived, in order."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def request(self, method: str, path: str, json: dict | None = None, **_: object) -> dict:
        assert method == "POST" and json is not None
        self.lines += [(e["offset"], e["line"]) for e in json["entries"]]
        return {}


def test_a_flood_is_rate_limited_counted_marked_and_capped(tmp_path: Path) -> None:
    """30,000 lines at once: 10,000 ship, the rest are counted as dropped, the next window ships
    a marker saying how many (before its own lines), and the file on the node stays under its cap."""
    import threading

    from forge.clock import FakeClock
    from forge.nodeagent.logship import RATE_BURST_LINES, RATE_WINDOW_SECONDS, Shipper, log_path
    from forge.nodeagent.state import AgentState, InstanceState

    clock = FakeClock()
    state = AgentState(tmp_path / "state.json")
    state.put(InstanceState(name="loud-1-0", app="loud", deployment="loud-1", cgroup="inst-loud-1-0", release_dir="/x"))
    sink = _Sink()
    cap = 256 * 1024
    shipper = Shipper(sink, state, tmp_path / "logs", clock, threading.Event(), cap_bytes=cap)  # type: ignore[arg-type]
    path = log_path(tmp_path / "logs", "loud-1-0", "app")
    path.parent.mkdir(parents=True)
    with open(path, "ab") as f:
        for i in range(30_000):
            f.write(b"flood line %06d\n" % i)
    for _ in range(20):
        shipper.ship_instance("loud-1-0")
    assert len(sink.lines) == RATE_BURST_LINES and sink.lines[-1][1] == "flood line 009999"
    assert shipper.dropped_total == {"loud-1-0": 20_000}
    assert path.stat().st_size <= cap, "the node keeps the file under its cap during the flood"
    clock.advance(RATE_WINDOW_SECONDS)
    with open(path, "ab") as f:
        f.write(b"after the flood\n")
    shipper.ship_instance("loud-1-0")
    marker, after = sink.lines[-2], sink.lines[-1]
    assert marker[1] == "[forge] 20000 log lines dropped: more than 10000 lines in 30s (the log rate limit)"
    assert marker[0] == len(b"flood line 000000\n") * RATE_BURST_LINES  # where the first dropped line began
    assert after[1] == "after the flood"
