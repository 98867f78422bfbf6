"""The durable queue: one TaskStore interface, one file per database."""

from __future__ import annotations

from fluxrun.store.base import TaskStore


def open_store(url: str) -> TaskStore:
    """The store for a SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://...``."""
    if url.startswith("sqlite"):
        from fluxrun.store.sqlite import SqliteTaskStore

        return SqliteTaskStore(url)
    if url.startswith("postgresql"):
        from fluxrun.store.postgres import PostgresTaskStore

        return PostgresTaskStore(url)
    raise ValueError(f"FLUXRUN_DATABASE_URL: unsupported database {url.split(':', 1)[0]!r} (use sqlite or postgresql)")
