"""The record store (DESIGN §5): one interface, backends behind ``open_store(url)``.

No SQL lives outside this package.
"""

from forge.store.base import Store, WatchEvent, parse_selector, selector_matches, open_store

__all__ = ["Store", "WatchEvent", "parse_selector", "selector_matches", "open_store"]
