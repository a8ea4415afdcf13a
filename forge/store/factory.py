"""``open_store(url)``: the backend a store URL names (kept apart from ``base``, which the
backends import, so the factory's imports of them make no cycle)."""

from __future__ import annotations

from forge.errors import Invalid
from forge.store.base import Store, is_postgres_url, redact_url


def open_store(url: str, wait_seconds: float | None = None) -> Store:
    """``sqlite:///abs/path.db`` (or a bare path) → SqliteStore; ``postgresql://…`` → PostgresStore.

    ``wait_seconds`` bounds how long one call waits for a store that cannot take it (SQLite
    locked by another process, PostgreSQL refusing connections) before ``Unavailable``: the
    API passes a few seconds so a request is answered 503 instead of hanging; the default
    (None) is each backend's own, longer patience, fit for controllers and tools."""
    if is_postgres_url(url):
        from forge.store.postgres import PostgresStore

        if wait_seconds is not None:
            return PostgresStore(url, retry_seconds=wait_seconds)
        return PostgresStore(url)
    if "://" in url and not url.startswith("sqlite://"):
        raise Invalid(
            f"store URL {redact_url(url)!r}: use sqlite:///PATH or postgresql://…",
            [{"path": "FORGE_STORE_URL", "message": "unknown scheme"}],
        )
    from forge.store.sqlite import SqliteStore

    path = url[len("sqlite://") :] if url.startswith("sqlite://") else url
    if path.startswith("/") and url.startswith("sqlite:///"):
        path = path[1:] if path.startswith("//") else path
    if wait_seconds is not None:
        return SqliteStore(path, busy_timeout=wait_seconds)
    return SqliteStore(path)
