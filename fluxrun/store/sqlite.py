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

from fluxrun.store.events_local import LocalEventBus
from fluxrun.store.sql import SqlTaskStore

BUSY_TIMEOUT_MS = 30_000


class SqliteTaskStore(SqlTaskStore):
    def __init__(self, url: str) -> None:
        database = make_url(url).database
        if not database or database == ":memory:":
            raise ValueError("FLUXRUN_DATABASE_URL: SQLite needs a database file (workers are other processes)")
        folder = Path(database).resolve().parent
        folder.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        event.listen(engine, "connect", _configure_connection)
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

    def _check_migrated(self, conn: Connection) -> None:
        dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if dangling:
            table, rowid, parent, _ = dangling[0]
            raise RuntimeError(f"migration left {len(dangling)} rows referring to missing rows "
                               f"(first: {table} row {rowid} -> {parent}); nothing was changed")


def _configure_connection(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is DEFERRED).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("fluxrun_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
