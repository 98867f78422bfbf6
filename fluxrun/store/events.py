"""Task events across processes: the store publishes every change, API processes and workers
listen.

Every write method of the store publishes what it changed (a status with the attempt it
belongs to, a progress object, a failure's error line) as a small JSON event, so no caller
has to remember to. Events are published only once the change is committed: a listener
that reads the task after an event always sees the change. Each dialect has its bus:

- PostgreSQL (``events_postgres.py``): ``pg_notify`` inside the write transaction (the
  database delivers it on commit) and a LISTEN connection per subscriber;
- SQLite (``events_local.py``): one machine, so Unix datagram sockets in a folder next to
  the database file, one per subscriber, sent to after the commit.

Events are wake-ups and live news, not a log: a subscriber that was away misses what
happened meanwhile and reads the store again (the worker keeps a slow poll; the WebSocket
hub re-reads the tasks it watches when its subscription reconnects, see ``RESYNC``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("fluxrun.events")

# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; the local bus keeps the same
# limit so that an event that works on one database works on the other.
MAX_EVENT_BYTES = 7900
# A failure's error line in an event (Task/Detail's debugerror has all of it).
MAX_ERROR_CHARS = 2000

# Event types besides the statuses (fluxrun.status.Status values).
TASK_ERROR = "task_error"  # a log line for the client; not an end (the end follows)
TASK_PREVIEW = "task_preview"  # a low-resolution JPEG of the work so far (base64)
PREVIEW_WANTED = "preview_wanted"  # an API process has a client that asked for previews
# Never published: a subscription hands it out after it reconnected, since it may have
# missed events while it was away.
RESYNC = "bus_resync"


class EventTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class TaskEvent:
    """One change of one task. ``attempt`` is the task's attempt number when it happened
    (0 while never claimed), which orders the events of a task that was queued again."""

    task_id: int
    type: str
    attempt: int = 0
    message: Any = None

    def encode(self) -> bytes:
        data = json.dumps(
            {"task": self.task_id, "type": self.type, "attempt": self.attempt, "message": self.message},
            separators=(",", ":"),
        ).encode()
        if len(data) > MAX_EVENT_BYTES:
            raise EventTooLarge(f"{self.type} event of task {self.task_id} is {len(data)} bytes (limit {MAX_EVENT_BYTES})")
        return data

    @classmethod
    def decode(cls, data: bytes | str) -> TaskEvent:
        item = json.loads(data)
        return cls(task_id=int(item["task"]), type=str(item["type"]), attempt=int(item.get("attempt") or 0),
                   message=item.get("message"))


class Subscription(ABC):
    """What one listener receives: every event published after it subscribed, in order.

    A background thread takes events off the wire as they come (so a publisher never waits
    on a slow consumer) and keeps them until ``get``; waiting costs no CPU.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[TaskEvent | None] = queue.Queue()
        self._closed = threading.Event()

    def get(self, timeout: float | None = None) -> TaskEvent | None:
        """The next event; None after ``timeout`` seconds without one, or once closed."""
        if self._closed.is_set():
            return None
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(None)  # wakes a consumer blocked in get()
            self._stop()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _deliver(self, event: TaskEvent) -> None:
        if not self._closed.is_set():
            self._queue.put(event)

    @abstractmethod
    def _stop(self) -> None:
        """Stop the reader thread and release its socket or connection."""


class EventBus(ABC):
    """Publishes task events to every subscriber, in this process and in others."""

    #: Whether a write's events travel inside its transaction (PostgreSQL's NOTIFY), so that a
    #: COMMIT that landed sent them even when its acknowledgement was lost. Otherwise (the local
    #: bus sends after the commit returned) such a write's events were never sent, and the
    #: store sends them when the write, made again, finds it had landed.
    sent_by_commit = False

    def before_commit(self, conn: Any, events: list[TaskEvent]) -> None:
        """Called inside a write transaction, just before it commits (PostgreSQL: NOTIFY)."""

    def after_commit(self, events: list[TaskEvent]) -> None:
        """Called once a write transaction committed (SQLite: send the datagrams)."""

    @abstractmethod
    def publish(self, event: TaskEvent) -> None:
        """Send an event that is no change to the database (a preview, a request)."""

    @abstractmethod
    def subscribe(self) -> Subscription:
        """A new listener; close it when done."""

    def close(self) -> None:
        """Release what publishing holds (subscriptions are closed by their owners)."""


def reader_thread(target: Any, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
