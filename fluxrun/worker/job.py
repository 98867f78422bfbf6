"""The worker's side of one task, handed to the backend as its ``Job``.

Progress goes to the store at each step (fenced by the lease: once the task was killed or
taken over, the write fails and the backend is stopped with TaskStopped); a kill heard on
the event bus stops it at the next ``step`` or ``check``. Events can be missed (a listener
that reconnects), so ``check`` also reads the store itself, at most every ``CHECK_EVERY``
seconds: a backend waiting on a remote API notices a kill within about that long, not only
at the next heartbeat (a third of the lease: 10 s by default). Notes collect the lines the task's
debugoutput gets when generation ends. Previews go out on the event bus only (they are
news, not state), at most one per ``PREVIEW_INTERVAL`` and only when a client asked.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from fluxrun.errors import DatabaseUnavailable, LeaseLost, TaskStopped
from fluxrun.imaging.preview import encode_preview
from fluxrun.store.base import Lease, TaskStore
from fluxrun.store.events import MAX_EVENT_BYTES, TASK_PREVIEW, TaskEvent
from fluxrun.worker.heartbeat import Heartbeat
from fluxrun.worker.progress import ProgressMeter
from fluxrun.worker.signals import TaskSignals

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("fluxrun.worker")

CHECK_EVERY = 0.5  # seconds between two store reads of check()
# After a progress write found the database away, the next steps skip theirs for this long
# (a SQLite file locked by another process makes each try wait for the busy timeout).
PROGRESS_PAUSE_SECONDS = 5.0
PREVIEW_INTERVAL = 0.5  # seconds: at most two previews a second per task
# Room in one event for the base64 JPEG (the rest is the event's own JSON).
_PREVIEW_CHARS = MAX_EVENT_BYTES - 200


class TaskJob:
    def __init__(self, store: TaskStore, lease: Lease, beat: Heartbeat, signals: TaskSignals | None = None) -> None:
        self._store = store
        self._lease = lease
        self._beat = beat
        self._signals = signals
        self._meter = ProgressMeter()
        self._next_preview = 0.0
        self._checked_at = time.monotonic()
        self._progress_paused_until = 0.0
        self.notes: list[str] = []

    def step(self, done: int, total: int) -> None:
        self._stop_if_told()
        if time.monotonic() < self._progress_paused_until:
            return
        try:  # the write is fenced: it fails at once if the task was killed
            self._store.record_progress(self._lease, self._meter.message(done, total), time.time())
        except LeaseLost:
            raise TaskStopped() from None
        except DatabaseUnavailable:  # progress is news, not state: generation goes on, a later step writes
            self._progress_paused_until = time.monotonic() + PROGRESS_PAUSE_SECONDS

    def check(self) -> None:
        self._stop_if_told()
        if time.monotonic() - self._checked_at < CHECK_EVERY:
            return
        self._checked_at = time.monotonic()
        try:
            current = self._store.is_current(self._lease)
        except DatabaseUnavailable:  # the store logged it; the heartbeat has the last word, go on
            return
        except Exception:  # a database blip: the heartbeat has the last word, go on
            log.warning("task %s: could not check whether it was killed", self._lease.task_id, exc_info=True)
            return
        if not current:
            raise TaskStopped()

    def _stop_if_told(self) -> None:
        """TaskStopped when the heartbeat lost the lease or the bus said the task was killed."""
        if self._beat.lost.is_set() or (self._signals is not None and self._signals.killed.is_set()):
            raise TaskStopped()

    def wants_preview(self) -> bool:
        return self._signals is not None and self._signals.previews and time.monotonic() >= self._next_preview

    def preview(self, image: Image) -> None:
        self._next_preview = time.monotonic() + PREVIEW_INTERVAL
        try:
            data = encode_preview(image, _PREVIEW_CHARS)
            if data is not None:
                self._store.events.publish(TaskEvent(self._lease.task_id, TASK_PREVIEW, self._lease.attempt, data))
        except Exception:  # a preview is a nicety: it never fails the task
            log.exception("task %s: preview not sent", self._lease.task_id)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def notes_text(self) -> str | None:
        return "".join(f"{line.rstrip()}\n" for line in self.notes) or None
