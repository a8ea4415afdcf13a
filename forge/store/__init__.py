"""The record store (DESIGN §5): one interface, backends behind ``open_store(url)``.

No SQL lives outside this package.
"""

from forge.store.base import (
    LogLine,
    LogStore,
    MarkStore,
    RecordStore,
    Store,
    WatchEvent,
    parse_selector,
    redact_url,
    selector_matches,
)
from forge.store.factory import open_store

__all__ = [
    "LogLine",
    "LogStore",
    "MarkStore",
    "RecordStore",
    "Store",
    "WatchEvent",
    "open_store",
    "parse_selector",
    "redact_url",
    "selector_matches",
]
