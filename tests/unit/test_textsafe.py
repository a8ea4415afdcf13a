"""App output never drives the operator's terminal: control characters are shown, not obeyed."""

from __future__ import annotations

import pytest

from forge.textsafe import printable


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
