"""The event bus of many machines (the PostgreSQL store): LISTEN/NOTIFY.

A write transaction NOTIFYs its events itself, so PostgreSQL delivers them when, and only
when, the change commits, to every session listening on the channel, in commit order.
Each subscriber has its own connection (psycopg 3, autocommit) doing LISTEN and a thread
waiting in ``notifies(timeout=...)``: a select() on the socket, no CPU while idle. When
that connection drops, the thread reconnects with back-off and hands out ``RESYNC``.

The channel carries the schema's name: two fluxrun installations in two schemas of one
database (the test suite does this) never hear each other.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fluxrun.store.events import RESYNC, EventBus, Subscription, TaskEvent, reader_thread

log = logging.getLogger("fluxrun.events")

CHANNEL_PREFIX = "fluxrun_events_"
# PostgreSQL cuts identifiers at 63 bytes; pg_notify() refuses longer channel names.
_CHANNEL_BYTES = 63
WAIT_SECONDS = 1.0  # how often a waiting reader checks whether it was closed
_MAX_BACKOFF = 10.0
_NOTIFY = text(f"SELECT pg_notify(left('{CHANNEL_PREFIX}' || current_schema(), {_CHANNEL_BYTES}), :payload)")


def channel_for(schema: str) -> str:
    return (CHANNEL_PREFIX + schema).encode()[:_CHANNEL_BYTES].decode(errors="ignore")


def libpq_url(sqlalchemy_url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (its query, e.g. options=-csearch_path, kept)."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresEventBus(EventBus):
    sent_by_commit = True  # NOTIFY is delivered with the commit itself

    def __init__(self, url: str, engine: Any) -> None:
        self._conninfo = libpq_url(url)
        self._engine = engine

    def before_commit(self, conn: Any, events: list[TaskEvent]) -> None:
        for event in events:
            conn.execute(_NOTIFY, {"payload": event.encode().decode()})

    def publish(self, event: TaskEvent) -> None:
        with self._engine.begin() as conn:
            self.before_commit(conn, [event])

    def subscribe(self) -> Subscription:
        return PostgresSubscription(self._conninfo)


class PostgresSubscription(Subscription):
    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self._conninfo = conninfo
        self._lock = threading.Lock()
        # Connect here, so that events published once subscribe() returned are heard.
        self._conn: psycopg.Connection[Any] | None = self._listen()
        self._away = False  # a reconnection failed since the connection was lost
        self._thread = reader_thread(self._read, "events-listen")

    def _listen(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            row = conn.execute("SELECT current_schema()").fetchone()
            schema = row[0] if row and row[0] else "public"
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_for(schema))))
        except BaseException:
            conn.close()
            raise
        return conn

    def _read(self) -> None:
        backoff = 0.5
        while not self.closed:
            conn = self._conn
            if conn is None or conn.closed:
                conn = self._reconnect(backoff)
                if conn is None:
                    backoff = min(_MAX_BACKOFF, backoff * 2)
                    continue
                backoff = 0.5
            try:
                for notify in conn.notifies(timeout=WAIT_SECONDS):
                    self._handle(notify.payload)
                    if self.closed:
                        break
            except psycopg.Error as exc:
                if self.closed:
                    break
                log.warning("event listener lost its database connection (%s); reconnecting", " ".join(str(exc).split()))
                with self._lock:
                    self._conn = None
                try:
                    conn.close()
                except psycopg.Error:
                    pass
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _reconnect(self, backoff: float) -> psycopg.Connection[Any] | None:
        try:
            conn = self._listen()
        except psycopg.Error as exc:
            # One line per outage (the store says it too); the retries that follow say nothing.
            level = logging.DEBUG if self._away else logging.WARNING
            self._away = True
            log.log(level, "event listener cannot reach the database (%s); retrying with back-off",
                    " ".join(str(exc).split()))
            self._closed.wait(backoff)
            return None
        if self._away:
            self._away = False
            log.info("event listener is listening again")
        with self._lock:
            self._conn = conn
        # Whatever happened while away was not heard: tell the consumer to look again.
        self._deliver(TaskEvent(task_id=0, type=RESYNC))
        return conn

    def _handle(self, payload: str) -> None:
        try:
            self._deliver(TaskEvent.decode(payload))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed event notification (%d bytes)", len(payload))

    def _stop(self) -> None:
        # Nothing to wait for: the reader notices within WAIT_SECONDS and closes its
        # connection itself (a psycopg connection is not closed under a thread waiting on it).
        pass
