"""What every log backend shares: the accepted sources, line cap, retention and time parsing.

Agents re-ship after an outage, so appends are idempotent on (instance, source, offset).
``id`` orders lines across instances and is what ``forge logs -f`` resumes from, so a
backend must make ids visible in id order (a follower that read id N never later finds a
line below N). Times are kept twice: integer milliseconds for ordering and pruning, the
agent's text for display.
"""

from __future__ import annotations

from forge.clock import Clock, iso, parse_iso
from forge.errors import Invalid

LOG_SOURCES: frozenset[str] = frozenset(
    {"build", "app", "stdin"}
)  # stdin: an interactive run's input (never shown by /logs)
MAX_LINE = 16 * 1024  # characters kept of one line
KEEP_LINES_PER_APP = 50_000

# (instance, app, deployment, source, offset, time ms, time text, line)
LogRow = tuple[str, str, str, str, int, int, str, str]


def time_ms(value: float | str) -> int:
    """Epoch seconds or an RFC 3339 string → integer milliseconds."""
    if isinstance(value, str):
        try:
            return int(parse_iso(value) * 1000)
        except ValueError:
            raise Invalid(
                f"{value!r} is not an RFC 3339 time", [{"path": "time", "message": "bad time"}]
            ) from None
    return int(value * 1000)


def log_rows(
    clock: Clock, instance: str, app: str, deployment: str, source: str, entries: list[tuple[int, str, str]]
) -> list[LogRow]:
    """Validate a shipped batch and shape it into rows (``Invalid`` on an unknown source)."""
    if source not in LOG_SOURCES:
        raise Invalid(
            f"log source {source!r} must be one of {sorted(LOG_SOURCES)}",
            [{"path": "source", "message": "unknown source"}],
        )
    rows: list[LogRow] = []
    for offset, when, line in entries:
        ms = time_ms(when) if when else int(clock.now() * 1000)
        rows.append(
            (instance, app, deployment, source, int(offset), ms, when or iso(ms / 1000), line[:MAX_LINE])
        )
    return rows


def check_mark(metric: str, uid: str) -> None:
    if not metric or not uid:
        raise Invalid(
            "a mark needs a metric and a uid",
            [{"path": "metric" if not metric else "uid", "message": "must not be empty"}],
        )
