"""App output never drives the operator's terminal: control characters are shown, not obeyed."""

from __future__ import annotations

import pytest

from forge.textsafe import printable, printable_lines, printable_text


@pytest.mark.parametrize(("raw", "want"), [
    ("plain text\twith a tab", "plain text\twith a tab"),
    ("\x1b[2Kerased", "\\x1b[2Kerased"),
    ("spin\rnext", "spin\\x0dnext"),
    ("\x1b]0;owned title\x07", "\\x1b]0;owned title\\x07"),
    ("two\nlines", "two\\x0alines"),
    ("c1 \x9b31m and del \x7f", "c1 \\x9b31m and del \\x7f"),
    ("unicode ünïcødé ✓", "unicode ünïcødé ✓"),
], ids=["plain", "csi", "carriage-return", "osc-title", "newline", "c1-and-del", "unicode"])
def test_printable(raw: str, want: str) -> None:
    """Tabs and printable Unicode pass; every other control character becomes \\xNN."""
    assert printable(raw) == want


@pytest.mark.parametrize("raw,want", [
    ("build failed:\nnpm ERR! x\n", "build failed:\n    npm ERR! x"),
    ("a\r\nb", "a\n    b"),
    ("title \x1b]0;x\x07\nnext", "title \\x1b]0;x\\x07\n    next"),
], ids=["newlines-stay", "crlf", "controls-still-shown"])
def test_printable_text(raw: str, want: str) -> None:
    """A message people read keeps its line breaks (indented), never a literal \\x0a."""
    assert printable_text(raw) == want


def test_printable_lines_keeps_line_breaks_only() -> None:
    """A stored message keeps its line breaks; every other control character is shown."""
    assert printable_lines("a\r\nb\x1b[2Kc\n") == "a\nb\\x1b[2Kc\n"
