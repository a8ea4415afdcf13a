"""The whole Forge exception tree.

    ForgeError (500 InternalError)
    ├── NotFound            404  NotFound
    ├── AlreadyExists       409  AlreadyExists
    ├── Conflict            409  Conflict          stale resourceVersion
    │   ├── SubnetTaken     409  SubnetTaken       a Node's instance subnet overlaps another's
    │   └── Fenced          409  Fenced            a write under a leader fence no longer current
    ├── Gone                410  Gone              watch revision compacted
    ├── Invalid             400  Invalid           carries field-path details
    │   └── BadRequest      400  BadRequest        malformed body / query
    ├── PayloadTooLarge     413  PayloadTooLarge
    ├── Unauthorized        401  Unauthorized
    ├── Forbidden           403  Forbidden
    ├── Unavailable         503  Unavailable       a dependency (store, caddy, git) is down
    │   └── TooManyRequests 429  TooManyRequests   busy: every stream slot of an API worker taken
    └── TerminalError       500  TerminalError     a controller must stop retrying this key

Each class carries its HTTP status and a CamelCase reason so one falcon handler renders
them all as ``{"error": reason, "message": ..., "details": [...]}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ForgeError(Exception):
    status: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.reason, "message": self.message, "details": self.details}


class NotFound(ForgeError):
    status = 404
    reason = "NotFound"


class AlreadyExists(ForgeError):
    status = 409
    reason = "AlreadyExists"


class Conflict(ForgeError):
    status = 409
    reason = "Conflict"


class SubnetTaken(Conflict):
    """A Node's instance subnet overlaps another node's (the proxy routes each to one node)."""

    reason = "SubnetTaken"


class Fenced(Conflict):
    """A write carried a leader fence that is no longer current: another process leads now."""

    reason = "Fenced"


class Gone(ForgeError):
    status = 410
    reason = "Gone"


class Invalid(ForgeError):
    """Validation failure; ``details`` is a list of ``{"path": "a.b", "message": ...}``."""

    status = 400
    reason = "Invalid"

    @classmethod
    def from_errors(cls, errors: list[dict[str, Any]], what: str = "request") -> Invalid:
        first = errors[0] if errors else {"path": "", "message": "invalid"}
        where = f"{first['path']}: " if first.get("path") else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return cls(f"invalid {what}: {where}{first['message']}{more}", errors)


class BadRequest(Invalid):
    reason = "BadRequest"


class PayloadTooLarge(ForgeError):
    status = 413
    reason = "PayloadTooLarge"


class Unauthorized(ForgeError):
    status = 401
    reason = "Unauthorized"


class Forbidden(ForgeError):
    status = 403
    reason = "Forbidden"


class Unavailable(ForgeError):
    status = 503
    reason = "Unavailable"


class TooManyRequests(Unavailable):
    """Busy, not down: e.g. every stream slot of an API worker is taken; retry shortly."""

    status = 429
    reason = "TooManyRequests"


class TerminalError(ForgeError):
    status = 500
    reason = "TerminalError"


def pydantic_errors(exc: Any, prefix: str = "") -> list[dict[str, str]]:
    """Turn a pydantic ``ValidationError`` into ``[{path, message}]`` with dotted paths."""
    out = []
    for err in exc.errors(include_url=False):
        parts = [str(p) for p in err.get("loc", ()) if p != "__root__"]
        path = ".".join(([prefix] if prefix else []) + parts)
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown field {parts[-1]!r}" if parts else "unknown field"
        elif err.get("type") == "missing":
            msg = "field required"
        out.append({"path": path, "message": msg})
    return out
