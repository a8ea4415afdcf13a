"""One writer per status field, enforced: the table in docs/CONTRACTS.md, and a store wrapper
that records which controller wrote which status field path.

``record_writers(store)`` wraps ``store.update_status``: after every successful write made from
inside a controller (found on the call stack: the nearest ``self`` that is a ``Controller``),
it records ``(controller, kind, path)`` for every status field the write changed — top-level
fields by their JSON name, conditions as ``conditions[TYPE]``. Writes from tests themselves
(standing in for agents and the API) name no controller and are not recorded.
``violations(writes, table)`` lists each write by someone who is neither the field's owner nor
in its pinned "also" list. Fields derived on read (``derived_paths``) are nobody's write.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge.controllers.base import Controller
from forge.errors import NotFound
from forge.models import instance_verdict
from forge.store.base import Store

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "CONTRACTS.md"
HEADING = "## Status ownership"


@dataclass(frozen=True)
class Row:
    owner: str
    also: frozenset[str]


Table = dict[tuple[str, str], Row]


def parse_table(text: str | None = None) -> Table:
    """{(kind, path): Row} from the ownership table; ``*`` rows give a kind's default owner."""
    text = CONTRACTS.read_text() if text is None else text
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    table: Table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("kind", "") or set(cells[0]) <= {"-"}:
            continue
        kind, path, owner, also = cells
        assert (kind, path) not in table, f"{kind}.{path} is listed twice in CONTRACTS.md"
        table[(kind, path)] = Row(owner, frozenset(a.strip() for a in also.split(",") if a.strip()))
    assert table, "no ownership table found in docs/CONTRACTS.md"
    return table


def row_for(table: Table, kind: str, path: str) -> Row | None:
    return table.get((kind, path)) or table.get((kind, "*"))


def changed_paths(old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    """Status field paths whose value differs: ``phase``, ``conditions[Ready]`` …"""
    paths = {k for k in set(old) | set(new) if k != "conditions" and old.get(k) != new.get(k)}
    before = {c["type"]: c for c in old.get("conditions") or []}
    after = {c["type"]: c for c in new.get("conditions") or []}
    paths |= {f"conditions[{t}]" for t in set(before) | set(after) if before.get(t) != after.get(t)}
    return paths


# Fields whose value on a read is derived, not stored (docs/CONTRACTS.md): a Node's Ready and
# phase always (from AgentReady and NodeLost); an Instance's agent-reported fields while another
# part's verdict stands (forge.models.apply_instance_verdicts). Their change on a write is the
# consequence of a verdict (checked under the verdict's own row), and what anyone stores in them
# then is never read: they are nobody's write.
VERDICT_PATHS = frozenset({"phase", "reason", "message", "ready", "conditions[Ready]"})


def derived_paths(obj: Any) -> frozenset[str]:
    """The status paths of ``obj`` (a record as read) that are derived rather than stored."""
    if obj.kind == "Node":
        return frozenset({"phase", "conditions[Ready]"})
    if obj.kind == "Instance" and instance_verdict(obj) is not None:
        return VERDICT_PATHS
    return frozenset()


def writer_on_stack() -> str | None:
    frame = sys._getframe(1)
    while frame is not None:
        me = frame.f_locals.get("self")
        if isinstance(me, Controller):
            return me.name or type(me).__name__
        frame = frame.f_back  # type: ignore[assignment]
    return None


@dataclass
class Writes:
    seen: set[tuple[str, str, str]] = field(default_factory=set)  # (controller, kind, path)

    def violations(self, table: Table | None = None) -> list[str]:
        table = parse_table() if table is None else table
        out = []
        for who, kind, path in sorted(self.seen):
            row = row_for(table, kind, path)
            if row is None:
                out.append(f"{who} wrote {kind}.status.{path}, which docs/CONTRACTS.md gives no owner")
            elif who != row.owner and who not in row.also:
                out.append(f"{who} wrote {kind}.status.{path}, owned by {row.owner}")
        return out


def record_writers(store: Store) -> Writes:
    """Wrap ``store.update_status`` (on the instance) to record who writes which field."""
    writes = Writes()
    real = store.update_status

    def update_status(obj: Any, *args: Any, **kwargs: Any) -> Any:
        who = writer_on_stack()
        old: dict[str, Any] = {}
        if who is not None:
            try:
                old = store.get(obj.kind, obj.metadata.name).status.dump()
            except NotFound:
                old = {}
        written = real(obj, *args, **kwargs)
        if who is not None:
            for path in changed_paths(old, obj.status.dump()) - derived_paths(written):
                writes.seen.add((who, obj.kind, path))
        return written

    store.update_status = update_status  # type: ignore[method-assign]
    return writes
