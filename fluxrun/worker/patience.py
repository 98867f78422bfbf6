"""Waiting out a database that is away, for the writes a task cannot do without.

A worker that loses its database keeps what it holds: the task it generates goes on, and the
writes that must land (a status, the task's end) are made again, with back-off, until the
database answers. A write whose COMMIT landed though its answer was lost (the connection
dropped meanwhile) is found done by the store when made again, and nothing is done twice
(fluxrun/store/base.py). The store logs the outage once (fluxrun/store/availability.py);
the waits here say nothing more. The lease is safe meanwhile: nobody can take a task over without the
database, and the reapers give the workers a lease's length to renew once it is back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from fluxrun.errors import DatabaseUnavailable, TaskStopped

T = TypeVar("T")

FIRST_WAIT_SECONDS = 0.2
LONGEST_WAIT_SECONDS = 2.0


def backoff(previous: float | None) -> float:
    """The next wait: from FIRST_WAIT_SECONDS, doubling, at most LONGEST_WAIT_SECONDS."""
    return FIRST_WAIT_SECONDS if previous is None else min(LONGEST_WAIT_SECONDS, previous * 2)


def until_written(write: Callable[[], T], stopped: threading.Event) -> T:
    """``write()``, made again while the database is unavailable; TaskStopped once ``stopped``
    is set (the task was killed or handed back: what was to be written no longer matters)."""
    wait: float | None = None
    while True:
        try:
            return write()
        except DatabaseUnavailable:
            wait = backoff(wait)
            if stopped.wait(wait):
                raise TaskStopped() from None
