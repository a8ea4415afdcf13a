"""Log drains on the node: each drain tails the node's log segments of its App's Instances and
delivers them at least once (``forge.drains`` has the URLs; ``manager`` the wiring)."""
