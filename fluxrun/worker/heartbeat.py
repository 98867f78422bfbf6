"""Keeps a lease alive from a background thread while the main thread generates."""

from __future__ import annotations

import logging
import threading
import time

from fluxrun.errors import DatabaseUnavailable, LeaseLost
from fluxrun.logs import task_scope
from fluxrun.store.base import Lease, TaskStore

log = logging.getLogger("fluxrun.worker")

RETRY_SECONDS = 1.0  # between two tries while the database is away


class Heartbeat:
    def __init__(self, store: TaskStore, lease: Lease, lease_seconds: float, every: float) -> None:
        self._store = store
        self._lease = lease
        self._lease_seconds = lease_seconds
        self._every = every
        self._stop = threading.Event()
        self.lost = threading.Event()  # set when the lease was taken over or the task ended
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{lease.task_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with task_scope(self._lease.task_id):  # a new thread starts with no log scope of its own
            self._beat()

    def _beat(self) -> None:
        wait = self._every
        while not self._stop.wait(wait):
            wait = self._every
            try:
                self._lease = self._store.heartbeat(self._lease, self._lease_seconds, time.time())
            except LeaseLost:
                self.lost.set()
                return
            except DatabaseUnavailable:
                # The store logged the outage. Beat again soon: once the database is back, the
                # lease must be renewed before a reaper's grace (a lease's length) runs out.
                wait = min(self._every, RETRY_SECONDS)
            except Exception:  # a database blip: the lease has slack, try again next beat
                log.exception("task %s: heartbeat failed", self._lease.task_id)
