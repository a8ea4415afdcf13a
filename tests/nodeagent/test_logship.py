"""Log segments as one logical stream: line offsets, partial lines, segments deleted unshipped."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from forge.clock import FakeClock
from forge.nodeagent.logship import MAX_LINE, Shipper, log_path, read_pending
from forge.nodeagent.logwriter import SegmentLog, segment_path
from forge.nodeagent.state import AgentState, InstanceState, LogCursor


def _ship_all(path: Path, cur: LogCursor) -> list[tuple[int, str]]:
    """Drain like the shipper does: read, acknowledge, repeat until the position stops moving."""
    out: list[tuple[int, str]] = []
    while True:
        lines, pos, _lost = read_pending(path, cur)
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
    segment_path(tmp_path, "app", 0).write_bytes(content)
    assert _ship_all(tmp_path / "app.log", LogCursor()) == lines


def test_overlong_line_is_split(tmp_path: Path) -> None:
    """A line longer than the cap is shipped in pieces instead of blocking the stream forever."""
    segment_path(tmp_path, "app", 0).write_bytes(b"x" * (MAX_LINE + 10))
    assert _ship_all(tmp_path / "app.log", LogCursor()) == [(0, "x" * MAX_LINE)]


def test_offsets_run_on_across_segments(tmp_path: Path) -> None:
    """Lines written through a SegmentLog ship in order with offsets that keep increasing over
    segment boundaries, and a second shipping from the same cursor yields the same (idempotent)."""
    seg = SegmentLog(str(tmp_path), "app", cap=1 << 20)
    want, off = [], 0
    for i in range(30_000):  # ~0.5 MB: several 256 KiB segments
        line = b"line %06d\n" % i
        seg.write(line)
        want.append((off, line.decode().rstrip("\n")))
        off += len(line)
    seg.close()
    assert len(list(tmp_path.glob("app.log.*"))) >= 2
    assert (
        _ship_all(tmp_path / "app.log", LogCursor()) == want == _ship_all(tmp_path / "app.log", LogCursor())
    )


def test_segments_deleted_unshipped_are_skipped_counted_and_marked(tmp_path: Path) -> None:
    """A cursor behind the oldest segment left (a long control-plane outage) skips to it; the
    shipper posts a marker at the first lost offset and counts the bytes."""
    state = AgentState(tmp_path / "state.json")
    state.put(InstanceState(name="a-1-0", app="a", deployment="a-1", cgroup="inst-a-1-0", release_dir="/x"))
    sink = _Sink()
    shipper = Shipper(sink, state, tmp_path / "logs", FakeClock(), threading.Event(), cap_bytes=1 << 20)  # type: ignore[arg-type]
    segment_path(tmp_path / "logs" / "a-1-0", "app", 5000).parent.mkdir(parents=True)
    segment_path(tmp_path / "logs" / "a-1-0", "app", 5000).write_bytes(b"kept\n")
    assert shipper.ship_instance("a-1-0")
    assert sink.lines[0][0] == 0 and "5000 bytes of log were deleted on the node" in sink.lines[0][1]
    assert sink.lines[1:] == [(5000, "kept")]
    assert shipper.lost_bytes == {"a-1-0": 5000}
    assert state.get("a-1-0").cursor("app").shipped == 5005  # type: ignore[union-attr]


class _Sink:
    """The control plane's side of POST /instances/NAME/logs: what arrived, in order."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def request(self, method: str, path: str, json: dict | None = None, **_: object) -> dict:
        assert method == "POST" and json is not None
        self.lines += [(e["offset"], e["line"]) for e in json["entries"]]
        return {}


def test_shipper_ships_a_build_log_with_the_times_it_carries(tmp_path: Path) -> None:
    """Stamped build lines are shipped with their own time, without the stamp."""
    state = AgentState(tmp_path / "state.json")
    state.put(InstanceState(name="b-1-0", app="b", deployment="b-1", cgroup="inst-b-1-0", release_dir="/x"))
    sink = _Sink()
    posted: list[dict] = []
    orig = sink.request

    def request(method: str, path: str, json: dict | None = None, **kw: object) -> dict:
        posted.append(json or {})
        return orig(method, path, json, **kw)

    sink.request = request  # type: ignore[method-assign]
    shipper = Shipper(sink, state, tmp_path / "logs", FakeClock(), threading.Event())  # type: ignore[arg-type]
    path = log_path(tmp_path / "logs", "b-1-0", "build")
    path.parent.mkdir(parents=True)
    segment_path(path.parent, "build", 0).write_bytes(b"\x1e2026-01-01T00:00:00.000Z\x1fstep one\n")
    shipper.ship_instance("b-1-0")
    assert sink.lines == [(0, "step one")]
    assert posted[0]["entries"][0]["time"] == "2026-01-01T00:00:00.000Z"
