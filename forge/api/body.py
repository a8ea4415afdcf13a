"""Request bodies in, JSON out: size caps, strict JSON, merge-patch (RFC 7386), query parsing."""

from __future__ import annotations

import json
from typing import Any

import falcon

from forge.errors import BadRequest, PayloadTooLarge

MAX_BODY: int = 1024 * 1024
JSON_TYPES = frozenset({"application/json", "application/merge-patch+json"})


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes) -> Any:
    """Strict JSON: NaN/Infinity refused (they could never be written back out as JSON)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from None


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def read_raw(req: falcon.Request, limit: int = MAX_BODY) -> bytes:
    """The body, refusing more than ``limit`` bytes whether or not Content-Length says so."""
    length = req.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over the {limit}-byte limit")
    data = req.bounded_stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
    return data


def read_object(req: falcon.Request, required: bool = True, limit: int = MAX_BODY) -> dict[str, Any]:
    """A JSON object body; an empty body is ``{}`` unless ``required``."""
    ctype = (req.content_type or "application/json").split(";")[0].strip().lower()
    raw = read_raw(req, limit)
    if not raw.strip():
        if required:
            raise BadRequest("request body is required (a JSON object)")
        return {}
    if ctype not in JSON_TYPES:
        raise falcon.HTTPUnsupportedMediaType(
            description=f"content type {ctype!r} is not supported; send application/json"
        )
    data = loads(raw)
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(data).__name__}")
    return data


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def send(resp: falcon.Response, data: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = dumps(data)


def q_bool(req: falcon.Request, name: str) -> bool:
    raw = req.get_param(name)
    if raw is None or raw == "":
        return False
    low = raw.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise BadRequest(
        f"query parameter {name} must be true or false", [{"path": name, "message": "not a boolean"}]
    )


def q_int(req: falcon.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(
            f"query parameter {name} must be an integer", [{"path": name, "message": "not an integer"}]
        ) from None
    if not lo <= value <= hi:
        raise BadRequest(
            f"query parameter {name} must be between {lo} and {hi}",
            [{"path": name, "message": f"out of range {lo}..{hi}"}],
        )
    return value
