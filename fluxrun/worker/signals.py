"""The worker's ear on the event bus.

One thread per worker process listens to the store's events and turns them into what the
claim loop and the running task need to know at once:
- a task was queued (new, or again after a lost lease): wake the idle claim loop, so a
  task starts within milliseconds of its Run instead of at the next poll;
- a task in hand was killed: ``check()`` stops it now, not at its next progress write
  (this matters for backends waiting on something without steps), and the finisher writes
  no more of its files (a worker holds up to three tasks: one generating, the others being
  finished, worker/finisher.py);
- a task ended anywhere (here, in another worker, or killed or cancelled through an API
  process): wake the callback deliverer, whose delivery may now be due;
- a client asked for live previews of a task (the API process says so on the bus, since
  it is not in the database): the task's previews are turned on, even if the request came
  before this worker claimed it.
Without a bus (the database unreachable for LISTEN) the loop falls back to polling.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from fluxrun.status import Status
from fluxrun.store.events import PREVIEW_WANTED, RESYNC, EventBus, Subscription

log = logging.getLogger("fluxrun.worker")

LISTEN_WAIT_SECONDS = 1.0  # how often the listening thread looks at the stop flag
_REMEMBERED_PREVIEWS = 1024
_ENDS = frozenset({Status.CANCEL.value, Status.POSTPROCESS_END.value})


class TaskSignals:
    """What the bus says about one task in hand."""

    def __init__(self, task_id: int, previews: bool) -> None:
        self.task_id = task_id
        self.killed = threading.Event()
        self.previews = previews


class BusWatcher:
    def __init__(self, events: EventBus, stop: threading.Event, on_task_end: Callable[[], None] | None = None) -> None:
        self._events = events
        self._stop = stop
        self._on_task_end = on_task_end
        self._closed = threading.Event()
        self.work = threading.Event()
        self._lock = threading.Lock()
        self._in_hand: dict[int, TaskSignals] = {}
        self._previews: OrderedDict[int, None] = OrderedDict()
        self._thread = threading.Thread(target=self._listen, name="worker-events", daemon=True)

    def __enter__(self) -> BusWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closed.set()
        self._thread.join(timeout=LISTEN_WAIT_SECONDS + 5)

    def wait_for_work(self, timeout: float) -> None:
        """Until a task is queued, the worker is stopped, or ``timeout`` (the fallback poll)."""
        self.work.wait(timeout)
        self.work.clear()

    def begin(self, task_id: int) -> TaskSignals:
        with self._lock:
            signals = self._in_hand[task_id] = TaskSignals(task_id, previews=task_id in self._previews)
            return signals

    def end(self, signals: TaskSignals) -> None:
        """The task of ``signals`` left this worker's hands (a later attempt of it may hold it again)."""
        with self._lock:
            if self._in_hand.get(signals.task_id) is signals:
                del self._in_hand[signals.task_id]

    def _listen(self) -> None:
        subscription: Subscription | None = None
        while not (self._stop.is_set() or self._closed.is_set()):
            if subscription is None:
                try:
                    subscription = self._events.subscribe()
                except Exception as exc:  # no bus for now: the fallback poll still finds work
                    log.warning("worker cannot listen for events (%s); polling until it can", exc)
                    self._closed.wait(5.0)
                    continue
                self.work.set()  # anything queued while we were not listening
            event = subscription.get(timeout=LISTEN_WAIT_SECONDS)
            if event is not None:
                self._handle(event.type, event.task_id)
        self.work.set()  # let the claim loop see the stop
        if subscription is not None:
            subscription.close()

    def _handle(self, kind: str, task_id: int) -> None:
        if kind in (Status.QUEUE.value, RESYNC):
            self.work.set()
        elif kind == PREVIEW_WANTED:
            with self._lock:
                self._previews[task_id] = None
                while len(self._previews) > _REMEMBERED_PREVIEWS:
                    self._previews.popitem(last=False)
                if task_id in self._in_hand:
                    self._in_hand[task_id].previews = True
        elif kind in _ENDS:
            if kind == Status.CANCEL.value:
                with self._lock:
                    if task_id in self._in_hand:
                        self._in_hand[task_id].killed.set()
            if self._on_task_end is not None:
                self._on_task_end()
