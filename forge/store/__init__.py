"""The record store (DESIGN §5): one interface, backends behind ``open_store(url)``.

No SQL lives outside this package.
"""

from forge.store.base import LogLine, Store, WatchEvent, open_store, parse_selector, selector_matches

__all__ = ["LogLine", "Store", "WatchEvent", "parse_selector", "selector_matches", "open_store"]
