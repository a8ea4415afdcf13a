"""What every API resource is handed: the collaborators of one ``create_app`` call."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from forge.api.sealing import Sealer
from forge.clock import Clock
from forge.config import Config
from forge.errors import BadRequest, Invalid, pydantic_errors
from forge.models import API_VERSION, Resource
from forge.store.base import Store

CLOSING_CHECK_SECONDS = 0.5


@dataclass
class ApiContext:
    config: Config
    store: Store
    clock: Clock
    sealer: Sealer
    max_watch_seconds: int = 1800
    default_watch_seconds: int = 300
    heartbeat_seconds: float = 4.0
    stream_cap_seconds: float | None = None  # tests/bench: clamp every stream (watch, log follow)
    # Set when the worker is asked to stop: open streams end within CLOSING_CHECK_SECONDS, so a
    # stop is not held up by watches (clients re-watch from their last revision anyway).
    closing: threading.Event = field(default_factory=threading.Event)
    # None when nothing needs the slices: nobody can set ``closing``, or setting it wakes the
    # store's blocked waiters (see ``create_app``). Otherwise 200 idle watch streams would each
    # query the store twice a second just to look at the flag.
    closing_check_seconds: float | None = CLOSING_CHECK_SECONDS

    def wait_slice(self, wanted: float) -> float:
        """How long a stream may block before it looks at ``closing`` again."""
        return wanted if self.closing_check_seconds is None else min(wanted, self.closing_check_seconds)

    def stream_seconds(self, requested: float) -> float:
        return min(requested, self.stream_cap_seconds) if self.stream_cap_seconds else requested


def validate(cls: type[Resource], data: dict[str, Any], prefix: str = "") -> Resource:
    """Model validation with errors that name the field path (``spec.repo``)."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise Invalid.from_errors(pydantic_errors(exc, prefix), cls.KIND) from None


def check_envelope(body: dict[str, Any], cls: type[Resource], url_name: str | None = None) -> None:
    """``kind``/``apiVersion`` in a body must match the URL; so must ``metadata.name`` on PUT."""
    kind = body.get("kind")
    if kind not in (None, "", cls.KIND):
        raise BadRequest(
            f"kind {kind!r} does not match this collection ({cls.KIND})",
            [{"path": "kind", "message": f"must be {cls.KIND!r}"}],
        )
    api = body.get("apiVersion")
    if api not in (None, API_VERSION):
        raise BadRequest(
            f"apiVersion {api!r} is not supported (use {API_VERSION})",
            [{"path": "apiVersion", "message": f"must be {API_VERSION!r}"}],
        )
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise BadRequest("metadata must be an object", [{"path": "metadata", "message": "must be an object"}])
    if url_name is not None and isinstance(meta, dict) and "name" in meta and meta["name"] != url_name:
        raise BadRequest(
            f"metadata.name {meta['name']!r} does not match the URL name {url_name!r}",
            [{"path": "metadata.name", "message": f"must be {url_name!r}"}],
        )


def body_resource_version(body: dict[str, Any]) -> int | None:
    meta = body.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    if rv is None:
        return None
    if isinstance(rv, bool) or not isinstance(rv, int | str) or not str(rv).isdigit():
        raise BadRequest(
            "metadata.resourceVersion must be a non-negative integer",
            [{"path": "metadata.resourceVersion", "message": "not an integer"}],
        )
    return int(rv) or None
