"""What every API resource is handed: the collaborators of one ``create_app`` call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from forge.api.sealing import Sealer
from forge.clock import Clock
from forge.config import Config
from forge.errors import BadRequest, Invalid, TooManyRequests, pydantic_errors
from forge.github.auth import AppTokens
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
    # Open streams (watches, log follows) each hold a server thread for their whole life: at most
    # this many at once per worker, so plain requests — an agent renewing its lease — always find
    # a thread, whatever a client does with watches. None: no cap (in-process tests).
    max_streams: int | None = None
    # The GitHub App Forge acts as (forge.github.auth.app_tokens), or None: it hands agents
    # installation tokens for private repositories that no RepoCredential covers.
    github_app: AppTokens | None = None
    _streams: int = 0
    _streams_lock: threading.Lock = field(default_factory=threading.Lock)

    def open_stream(self, body: Iterable[bytes]) -> Iterable[bytes]:
        """``body`` holding one stream slot until it ends or the server closes it; 429 when
        every slot is taken (nothing was sent yet, so the status still can be)."""
        with self._streams_lock:
            if self.max_streams is not None and self._streams >= self.max_streams:
                raise TooManyRequests(
                    f"this API worker already serves {self._streams} open watch/log streams "
                    "(its cap, so requests keep a thread); retry in a moment"
                )
            self._streams += 1
        return _Slot(body, self._close_stream)

    def _close_stream(self) -> None:
        with self._streams_lock:
            self._streams -= 1

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


class _Slot:
    """A stream body that gives its slot back exactly once: at its end, or when the WSGI server
    calls ``close()`` (a client that left, a stop) — even if it was never iterated."""

    def __init__(self, body: Iterable[bytes], release: Callable[[], None]) -> None:
        self._it: Iterator[bytes] = iter(body)
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        closer = getattr(self._it, "close", None)
        if callable(closer):
            closer()
        release, self._release = self._release, None
        if release is not None:
            release()
