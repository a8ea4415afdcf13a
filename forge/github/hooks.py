"""What Forge reads from GitHub deliveries beyond a push (pure): the App installation that sent
one. Kept apart from ``forge.webhook`` (the push path) so each can change on its own."""

from __future__ import annotations

from typing import Any


def installation_id(payload: dict[str, Any]) -> int | None:
    """``installation.id`` of a delivery a GitHub App sent; None for a repository webhook."""
    inst = payload.get("installation")
    value = inst.get("id") if isinstance(inst, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
