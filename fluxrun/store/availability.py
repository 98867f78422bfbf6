"""What one process has seen of its database: when it went away, when it came back.

The store tells this class about every transaction that failed because the database could
not be reached (or stayed locked), and about every write transaction that began, with how
long it waited to begin (a SQLite writer queues on the lock for up to the busy timeout;
reads do not count as the database being back, as SQLite serves them under another process's
write lock). From that it
- logs one line when the database goes away and one when it is back, however many threads
  and calls keep failing meanwhile;
- says how long the database has been there without a break (``settled_for``), so that the
  lease reaper does not take the tasks of workers that could not renew their leases either:
  after an outage, or a long wait on a lock, a live worker needs a moment to renew.
"""

from __future__ import annotations

import logging
import math
import threading
import time

log = logging.getLogger("fluxrun.store")

# A transaction that waited this long to begin was as good as an outage for everyone else.
LONG_WAIT_SECONDS = 2.0
LONG_WAIT_LOG_EVERY_SECONDS = 10.0


class Availability:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic, while calls fail
        self._back_at = -math.inf  # monotonic: the end of the last outage or long wait
        self._wait_logged_at = -math.inf  # monotonic: threads released by one lock log one line

    def failed(self, cause: str) -> None:
        """A call could not reach the database."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.error("the database is unreachable (%s); API requests get 503, workers keep their tasks and wait "
                  "for it", cause)

    def reached(self, waited: float) -> None:
        """A write transaction began, after ``waited`` seconds (connecting, queueing on a lock)."""
        if self._down_since is None and waited < LONG_WAIT_SECONDS:
            return  # the usual case: no lock taken
        now = time.monotonic()
        with self._lock:
            down_since, self._down_since = self._down_since, None
            self._back_at = now
            say_wait = down_since is None and now - self._wait_logged_at > LONG_WAIT_LOG_EVERY_SECONDS
            if say_wait:
                self._wait_logged_at = now
        if down_since is not None:
            log.warning("the database is reachable again, after %.1f s", now - down_since)
        elif say_wait:
            log.warning("waited %.1f s for the database (a lock held by another process?)", waited)

    def settled_for(self) -> float:
        """Seconds the database has been reachable without a break (inf if it never was not);
        0 while it is away."""
        with self._lock:
            if self._down_since is not None:
                return 0.0
            return time.monotonic() - self._back_at
