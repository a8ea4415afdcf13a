"""``limit`` and ``continue`` on a collection list: one page at a time, as Kubernetes pages.

Order: Events newest first (``spec.lastTime`` descending, then name), since a person reads
history from the top; every other kind by name, the store's own order. The ``continue`` token is
opaque to clients: the sort key of the last item sent, base64url JSON. Each page is read fresh
(no snapshot is held between pages), so a record that changes between two pages can move: an
Event that recurs jumps to the front, where a client that watches from the first page's
``resourceVersion`` sees it arrive. ``metadata.remainingItemCount`` says how many are left.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from forge.errors import BadRequest
from forge.models import Event, Resource

MAX_LIMIT: Final[int] = 1000

SortKey = tuple[str, str]


def newest_first(kind: str) -> bool:
    return kind == Event.KIND


def sort_key(obj: Resource) -> SortKey:
    """What a page is ordered by (descending for Events, ascending otherwise)."""
    if isinstance(obj, Event):
        return (obj.spec.last_time or obj.metadata.created_at or "", obj.metadata.name)
    return ("", obj.metadata.name)


def encode_token(key: SortKey) -> str:
    raw = json.dumps(list(key), separators=(",", ":"), ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> SortKey:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        data = None
    if not (isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data)):
        raise BadRequest(
            "continue is not a token this API gave out (pass metadata.continue of the previous page)",
            [{"path": "continue", "message": "not a continue token"}],
        )
    return (data[0], data[1])


def page(
    kind: str, items: list[Resource], limit: int | None, token: str | None
) -> tuple[list[Resource], dict[str, Any]]:
    """The page of ``items`` after ``token`` (all when no limit) and the list metadata it adds."""
    desc = newest_first(kind)
    rows = sorted(items, key=sort_key, reverse=desc)
    if token:
        after = decode_token(token)
        rows = [o for o in rows if (sort_key(o) < after if desc else sort_key(o) > after)]
    if limit is None or len(rows) <= limit:
        return rows, {}
    head = rows[:limit]
    return head, {"continue": encode_token(sort_key(head[-1])), "remainingItemCount": len(rows) - limit}
