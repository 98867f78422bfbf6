"""The API process's side of the event bus: one listener thread, fanned out to WebSockets.

The hub subscribes once to the store's events. A thread waits on that subscription and
hands each event of a watched task to the asyncio loop (``call_soon_threadsafe``), where
every WebSocket watching that task gets it, in order, through its own outgoing queue. For
the end of a task the thread first reads the task (outputs and their URLs are not in the
event), so the terminal message carries the same outputs Task/Detail shows.

A client that registers late must not wait for an event that already passed, and must
not miss one in between: the socket subscribes to the task first, then reads its current
status and offers it like an event. ``Watch.offer`` orders everything by a rank that only
grows over a task's life (its attempt, then the status order; a re-queue ranks after the
attempt it ends; the end ranks last), so a snapshot and an event that say the same thing
are sent once, and nothing older is sent after something newer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from fluxrun.wire import outputs_message, socket_message
from fluxrun.status import ORDER, Status
from fluxrun.storage.base import OutputStorage
from fluxrun.store.base import TaskRecord, TaskStore
from fluxrun.store.events import PREVIEW_WANTED, RESYNC, TASK_ERROR, TASK_PREVIEW, Subscription, TaskEvent

log = logging.getLogger("fluxrun.api")

_STATUSES = {status.value: status for status in Status}
_END_RANK = (1 << 30, 0)
# A client that does not read its socket gets no more previews once this many messages wait.
PREVIEW_BACKLOG = 8
RETRY_SECONDS = 1.0  # how soon the hub tries again after it could not listen or read


def rank(status: Status, attempt: int) -> tuple[int, int]:
    """Where a status of a given attempt falls in the life of a task; only ever grows."""
    if status.terminal:
        return _END_RANK
    if status is Status.QUEUE:
        return (attempt, len(ORDER)) if attempt else (0, 0)  # queued again after that attempt
    return (attempt, ORDER.index(status))


class Connection:
    """One WebSocket's outgoing side: messages in the order they were offered."""

    CLOSE = object()

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.watches: dict[int, Watch] = {}

    def send(self, message: dict[str, Any]) -> None:
        self.queue.put_nowait(message)

    def close(self, code: int, reason: str) -> None:
        self.queue.put_nowait((self.CLOSE, code, reason))


@dataclass
class Watch:
    """One connection's interest in one task, and what it has been sent of it."""

    connection: Connection
    task: TaskRecord  # as registered: its id and token
    previews: bool
    storage: OutputStorage
    last_rank: tuple[int, int] = (-1, -1)
    last_step: int = -1
    ended: bool = False

    def offer(self, kind: str, attempt: int, message: Any, task: TaskRecord | None = None) -> None:
        """Send this event unless the client has it already or has something newer."""
        if self.ended:
            return
        if kind == TASK_ERROR:
            self._send(kind, message)
            return
        if kind == TASK_PREVIEW:
            if self.previews and self.connection.queue.qsize() < PREVIEW_BACKLOG:
                self._send(kind, message)
            return
        status = _STATUSES.get(kind)
        if status is None:
            return
        new_rank = rank(status, attempt)
        if status is Status.OUTPUT:
            step = _step(message)
            if new_rank < self.last_rank or (new_rank == self.last_rank and step <= self.last_step):
                return
            self.last_step = step
        elif new_rank <= self.last_rank:
            return
        self.last_rank = new_rank
        if status is Status.POSTPROCESS_END:
            message = outputs_message(task, self.storage, self.connection.base_url) if task else []
        elif status is not Status.OUTPUT:
            message = None
        self.ended = status.terminal
        self._send(kind, message)

    def offer_snapshot(self, task: TaskRecord) -> None:
        """The task as read now, offered as the event that brought it there."""
        if task.status is Status.POSTPROCESS_END and task.pexit not in (None, 0) and task.debugerror:
            if not self.ended:
                self._send(TASK_ERROR, task.debugerror)  # the reason, before the end, as live
        self.offer(task.status.value, task.attempt, task.progress, task)

    def _send(self, kind: str, message: Any) -> None:
        self.connection.send(socket_message(kind, self.task, message))


def _step(progress: Any) -> int:
    try:
        return int(progress["stepCurrent"])
    except (TypeError, KeyError, ValueError):
        return 0


@dataclass
class _Interest:
    """What the listener thread needs to know about a watched task."""

    project_id: int
    watchers: int = 0
    preview_watchers: int = 0


class EventHub:
    def __init__(self, store: TaskStore, storage: OutputStorage) -> None:
        self.store = store
        self.storage = storage
        self._watches: dict[int, list[Watch]] = {}  # the loop's thread only
        self._interest: dict[int, _Interest] = {}  # shared with the listener thread
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ready = threading.Event()
        self._subscription: Subscription | None = None
        self._resync_wanted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- life ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, wait: float = 10.0) -> None:
        """Start listening; returns once the subscription is live (or ``wait`` passed)."""
        self._loop = loop
        self._thread = threading.Thread(target=self._listen, name="events-hub", daemon=True)
        self._thread.start()
        self._ready.wait(wait)

    def stop(self) -> None:
        self._closed.set()
        with self._lock:
            subscription = self._subscription
        if subscription is not None:
            subscription.close()  # wakes the thread
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the loop's side -----------------------------------------------------------------
    def watch(self, connection: Connection, task: TaskRecord, previews: bool) -> Watch:
        """Start forwarding ``task``'s events to ``connection``; then read the task and
        ``offer_snapshot`` it, in that order, so that nothing falls in between."""
        watch = connection.watches.get(task.id)
        if watch is None:
            watch = Watch(connection, task, previews, self.storage)
            connection.watches[task.id] = watch
            self._watches.setdefault(task.id, []).append(watch)
            with self._lock:
                interest = self._interest.setdefault(task.id, _Interest(task.project_id))
                interest.watchers += 1
                interest.preview_watchers += int(previews)
        elif previews and not watch.previews:
            watch.previews = True
            with self._lock:
                self._interest[task.id].preview_watchers += 1
        return watch

    def disconnect(self, connection: Connection) -> None:
        for task_id, watch in connection.watches.items():
            self._unwatch(task_id, watch)
        connection.watches.clear()

    def forget_ended(self, connection: Connection) -> None:
        """Stop tracking the connection's tasks that ended: nothing more is sent for them, and
        they no longer count against the tasks one connection may watch."""
        for task_id, watch in list(connection.watches.items()):
            if watch.ended:
                self._unwatch(task_id, watch)
                del connection.watches[task_id]

    def _unwatch(self, task_id: int, watch: Watch) -> None:
        watches = self._watches.get(task_id, [])
        if watch in watches:
            watches.remove(watch)
        if not watches:
            self._watches.pop(task_id, None)
        with self._lock:
            interest = self._interest.get(task_id)
            if interest is not None:
                interest.watchers -= 1
                interest.preview_watchers -= int(watch.previews)
                if interest.watchers <= 0:
                    del self._interest[task_id]

    def request_previews(self, task: TaskRecord) -> None:
        """Tell the workers (whichever holds or will hold the task) a client wants previews."""
        self.store.events.publish(TaskEvent(task.id, PREVIEW_WANTED, task.attempt))

    def _dispatch(self, event: TaskEvent, task: TaskRecord | None) -> None:
        for watch in list(self._watches.get(event.task_id, ())):
            if task is not None and event.type == RESYNC:
                watch.offer_snapshot(task)
            else:
                watch.offer(event.type, event.attempt, event.message, task)

    # -- the listener thread -------------------------------------------------------------
    def _listen(self) -> None:
        subscription: Subscription | None = None
        while not self._closed.is_set():
            if subscription is None:
                subscription = self._subscribe()
                if subscription is None:
                    self._ready.set()  # no bus yet: the API still answers; retry shortly
                    self._closed.wait(RETRY_SECONDS)
                    continue
                self._ready.set()
                self._resync_wanted = True  # tasks watched before now may have moved
            if self._resync_wanted:
                self._resync()
            event = subscription.get(timeout=RETRY_SECONDS if self._resync_wanted else None)
            if event is None:
                continue
            if event.type == RESYNC:
                self._resync_wanted = True
                continue
            try:
                self._handle(event)
            except Exception:  # the database is away: read every watched task again later
                log.exception("event hub: %s of task %s", event.type, event.task_id)
                self._resync_wanted = True
        if subscription is not None:
            subscription.close()

    def _subscribe(self) -> Subscription | None:
        try:
            subscription = self.store.events.subscribe()
        except Exception as exc:
            log.warning("WebSocket events unavailable for now (%s); retrying", exc)
            return None
        with self._lock:
            self._subscription = subscription
        if self._closed.is_set():
            subscription.close()
        return subscription

    def _handle(self, event: TaskEvent) -> None:
        if event.type == PREVIEW_WANTED:
            return
        with self._lock:
            interest = self._interest.get(event.task_id)
            project_id = interest.project_id if interest else None
            previews = bool(interest and interest.preview_watchers > 0)
        if project_id is None:
            return
        task = None
        if event.type == Status.POSTPROCESS_END.value:
            task = self.store.get_task(project_id, task_id=event.task_id)
        elif previews and event.type in (Status.ACCEPT.value, Status.START.value):
            # The worker that claimed it may not have heard the request made before.
            self.store.events.publish(TaskEvent(event.task_id, PREVIEW_WANTED, event.attempt))
        self._call(event, task)

    def _resync(self) -> None:
        with self._lock:
            watched = [(task_id, interest.project_id) for task_id, interest in self._interest.items()]
        try:
            for task_id, project_id in watched:
                task = self.store.get_task(project_id, task_id=task_id)
                if task is not None:
                    self._call(TaskEvent(task_id, RESYNC), task)
        except Exception as exc:
            log.warning("event hub cannot read the watched tasks (%s); retrying", exc)
            return
        self._resync_wanted = False

    def _call(self, event: TaskEvent, task: TaskRecord | None) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, event, task)


def parse_request(raw: str | bytes | None) -> dict[str, Any] | None:
    """A client's message as a JSON object; None when it is not one."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
