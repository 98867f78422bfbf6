"""SQLite: the default store, one file in the data directory.

Its events go through Unix sockets in ``events/`` next to the database file: every process
using the file is on this machine.

WAL so readers never wait for the writer; a busy timeout so writers queue instead of
failing; and BEGIN IMMEDIATE for every write transaction, because a DEFERRED transaction
that upgrades from read to write ignores the busy timeout and fails with "database is
locked" under contention.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from fluxrun.errors import DatabaseUnavailable
from fluxrun.store.events_local import LocalEventBus
from fluxrun.store.sql import SqlTaskStore, driver_error

BUSY_TIMEOUT_MS = 30_000
# SQLite's result codes (extended ones start with these) that mean "not now", not "wrong":
# another process holds the lock past the busy timeout, or the file cannot be opened,
# read or written (a full or read-only disk, a folder gone).
_LOCKED = ("SQLITE_BUSY", "SQLITE_LOCKED")
_UNREACHABLE = ("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_READONLY", "SQLITE_PROTOCOL")


class SqliteTaskStore(SqlTaskStore):
    def __init__(self, url: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        database = make_url(url).database
        if not database or database == ":memory:":
            raise ValueError("FLUXRUN_DATABASE_URL: SQLite needs a database file (workers are other processes)")
        folder = Path(database).resolve().parent
        folder.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})

        def configure(dbapi_connection: Any, _record: Any) -> None:
            _configure_connection(dbapi_connection, busy_timeout_ms)

        event.listen(engine, "connect", configure)
        event.listen(engine, "begin", _begin)
        super().__init__(engine, LocalEventBus(folder / "events"))

    @contextmanager
    def _migrating(self, conn: Connection) -> Iterator[None]:
        # SQLite alters a table by rebuilding it (Alembic's batch mode: copy, DROP, rename). With
        # foreign keys on, dropping a table that other rows refer to (projects, once a task
        # exists) fails, deferred or not; SQLite's own advice is to turn them off around it, which
        # only works outside a transaction: on the driver's connection, before BEGIN.
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            yield
        finally:
            raw.execute("PRAGMA foreign_keys=ON")

    def _unavailable(self, exc: DBAPIError) -> DatabaseUnavailable | None:
        name = getattr(exc.orig, "sqlite_errorname", "")
        if name.startswith(_LOCKED):
            return DatabaseUnavailable.locked(driver_error(exc))
        if name.startswith(_UNREACHABLE):
            return DatabaseUnavailable.unreachable(driver_error(exc))
        return super()._unavailable(exc)

    def _check_migrated(self, conn: Connection) -> None:
        dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if dangling:
            table, rowid, parent, _ = dangling[0]
            raise RuntimeError(f"migration left {len(dangling)} rows referring to missing rows "
                               f"(first: {table} row {rowid} -> {parent}); nothing was changed")


def _configure_connection(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is DEFERRED).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("fluxrun_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
