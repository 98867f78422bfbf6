"""PostgreSQL: the store for many API processes and workers on many machines.

Claims lock the chosen row with FOR UPDATE SKIP LOCKED (rendered by the shared Core
queries), so concurrent workers never wait on each other's rows. Events travel by
LISTEN/NOTIFY (events_postgres.py).
"""

from __future__ import annotations

import psycopg
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError

from fluxrun.errors import DatabaseUnavailable
from fluxrun.store.events_postgres import PostgresEventBus
from fluxrun.store.sql import SqlTaskStore, driver_error

# The key of the transaction-scoped advisory lock that serialises migrations (any 64-bit
# number; this one is b"fluxrun!" read as an integer). Advisory locks are per database, so
# fluxrun instances in different schemas of one database migrate one after the other.
_MIGRATION_LOCK = int.from_bytes(b"fluxrun!", "big", signed=True)


class PostgresTaskStore(SqlTaskStore):
    def __init__(self, url: str) -> None:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        super().__init__(engine, PostgresEventBus(url, engine))

    def _unavailable(self, exc: DBAPIError) -> DatabaseUnavailable | None:
        # psycopg's OperationalError: the server cannot be reached, closed the connection, is
        # shutting down or starting up, has no connection slot or disk left.
        if isinstance(exc.orig, psycopg.OperationalError):
            return DatabaseUnavailable.unreachable(driver_error(exc))
        return super()._unavailable(exc)

    def _lock_setup(self, conn: Connection) -> None:
        # Without it, two processes migrating at once both see an empty schema and the
        # second fails on "relation already exists".
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
