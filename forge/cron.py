"""Cron schedules (forge.yaml ``cron:``): standard 5-field expressions and ``@hourly``-style
shortcuts, evaluated in UTC unless a ``timezone`` (an IANA name) is given. ``croniter`` does the
calendar arithmetic; this module only decides what Forge accepts and asks it for due times."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

SHORTCUTS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


def check_schedule(value: object) -> str:
    """A valid schedule, or ValueError naming what is wrong with it."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError('must be a cron expression like "0 3 * * *" or @hourly')
    text = " ".join(value.split())
    if text.startswith("@"):
        if text not in SHORTCUTS:
            raise ValueError(
                f'"{value}" is not a schedule shortcut (use one of {", ".join(sorted(SHORTCUTS))})'
            )
        return text
    if len(text.split(" ")) != 5:
        raise ValueError(
            f'"{value}" is not a 5-field cron expression (minute hour day-of-month month day-of-week)'
        )
    if not croniter.is_valid(text):
        raise ValueError(f'"{value}" is not a valid cron expression')
    return text


def check_timezone(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be an IANA time zone name like Europe/Paris")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'"{value}" is not a known time zone (use an IANA name like Europe/Paris)') from None
    return value


def _zone(tz: str | None) -> dt.tzinfo:
    return ZoneInfo(tz) if tz and tz != "UTC" else dt.UTC


def next_after(schedule: str, tz: str | None, t: float) -> float:
    """The first due time strictly after ``t`` (epoch seconds)."""
    start = dt.datetime.fromtimestamp(t, _zone(tz))
    return float(croniter(schedule, start).get_next(float))


def last_due(schedule: str, tz: str | None, now: float) -> float:
    """The latest due time at or before ``now``."""
    start = dt.datetime.fromtimestamp(now + 0.001, _zone(tz))
    return float(croniter(schedule, start).get_prev(float))
