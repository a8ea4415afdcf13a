"""``open_store(url)``: the backend a store URL names (kept apart from ``base``, which the
backends import, so the factory's imports of them make no cycle)."""

from __future__ import annotations

from forge.errors import Invalid
from forge.store.base import Store, is_postgres_url, redact_url


def open_store(url: str) -> Store:
    """``sqlite:///abs/path.db`` (or a bare path) → SqliteStore; ``postgresql://…`` → PostgresStore."""
    if is_postgres_url(url):
        from forge.store.postgres import PostgresStore

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
    return SqliteStore(path)
