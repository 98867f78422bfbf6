"""The worker's side of one task, handed to the backend as its ``Job``.

Progress goes to the store at each step (fenced by the lease: once the task was killed or
taken over, the write fails and the backend is stopped with TaskStopped). ``check`` looks
at the store itself, at most every ``CHECK_EVERY`` seconds, so a backend waiting on a
remote API notices a kill within about that long, not only at the next heartbeat (a third
of the lease: 10 s by default). Notes collect the lines the task's debugoutput gets when
generation ends.
"""

from __future__ import annotations

import logging
import time

from fluxrun.errors import LeaseLost, TaskStopped
from fluxrun.store.base import Lease, TaskStore
from fluxrun.worker.heartbeat import Heartbeat
from fluxrun.worker.progress import ProgressMeter

log = logging.getLogger("fluxrun.worker")

CHECK_EVERY = 0.5  # seconds between two store reads of check()


class TaskJob:
    def __init__(self, store: TaskStore, lease: Lease, beat: Heartbeat) -> None:
        self._store = store
        self._lease = lease
        self._beat = beat
        self._meter = ProgressMeter()
        self._checked_at = time.monotonic()
        self.notes: list[str] = []

    def step(self, done: int, total: int) -> None:
        if self._beat.lost.is_set():
            raise TaskStopped()
        try:  # the write is fenced: it fails at once if the task was killed
            self._store.record_progress(self._lease, self._meter.message(done, total), time.time())
        except LeaseLost:
            raise TaskStopped() from None

    def check(self) -> None:
        if self._beat.lost.is_set():
            raise TaskStopped()
        if time.monotonic() - self._checked_at < CHECK_EVERY:
            return
        self._checked_at = time.monotonic()
        try:
            current = self._store.is_current(self._lease)
        except Exception:  # a database blip: the heartbeat has the last word, go on
            log.warning("task %s: could not check whether it was killed", self._lease.task_id, exc_info=True)
            return
        if not current:
            raise TaskStopped()

    def note(self, text: str) -> None:
        self.notes.append(text)

    def notes_text(self) -> str | None:
        return "".join(f"{line.rstrip()}\n" for line in self.notes) or None
