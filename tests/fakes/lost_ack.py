"""A commit that reaches the database and whose acknowledgement never comes back.

The connection drops while COMMIT is under way: the server has committed, the client only
sees its connection gone. ``LostAcks`` arms the next commit made on the calling thread; that
commit happens (or, to compare, does not), then the driver's connection is closed and the
commit's answer is asked for on it, so the driver raises its own error for a connection
that is gone (sqlite3: "Cannot operate on a closed database."; psycopg: "the connection is
closed"). SQLAlchemy takes that for a disconnect and the store turns it into
DatabaseUnavailable, as with any dropped connection. Other threads (a worker's heartbeat)
commit as usual.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from fluxrun.store.sql import SqlTaskStore


class LostAcks:
    def __init__(self, store: SqlTaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
        dialect = store.engine.dialect
        self._commit: Callable[[Any], None] = dialect.do_commit
        self._armed = threading.local()
        self.lost = 0  # commits that landed unacknowledged
        monkeypatch.setattr(dialect, "do_commit", self._do_commit)

    def next_commit(self, lands: bool = True) -> None:
        """The next commit on this thread lands, and its acknowledgement is lost; or, not
        ``lands``, the connection drops before the commit reaches the database."""
        self._armed.on = lands

    def _do_commit(self, connection: Any) -> None:
        armed = getattr(self._armed, "on", None)
        self._armed.on = None
        if armed is None:
            self._commit(connection)
            return
        if armed:
            self._commit(connection)
            self.lost += 1
        connection.driver_connection.close()  # the connection drops (a transaction left open is rolled back)...
        self._commit(connection)  # ...and the driver says so where the answer was awaited
