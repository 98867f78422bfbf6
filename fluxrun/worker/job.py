"""The worker's side of one task, handed to the backend as its ``Job``.

Progress goes to the store at each step (fenced by the lease: once the task was killed or
taken over, the write fails and the backend is stopped with TaskStopped). Notes collect
the lines the task's debugoutput gets when generation ends.
"""

from __future__ import annotations

import time

from fluxrun.errors import LeaseLost, TaskStopped
from fluxrun.store.base import Lease, TaskStore
from fluxrun.worker.heartbeat import Heartbeat
from fluxrun.worker.progress import ProgressMeter


class TaskJob:
    def __init__(self, store: TaskStore, lease: Lease, beat: Heartbeat) -> None:
        self._store = store
        self._lease = lease
        self._beat = beat
        self._meter = ProgressMeter()
        self.notes: list[str] = []

    def step(self, done: int, total: int) -> None:
        self.check()
        try:
            self._store.record_progress(self._lease, self._meter.message(done, total), time.time())
        except LeaseLost:
            raise TaskStopped() from None

    def check(self) -> None:
        if self._beat.lost.is_set():
            raise TaskStopped()

    def note(self, text: str) -> None:
        self.notes.append(text)

    def notes_text(self) -> str | None:
        return "".join(f"{line.rstrip()}\n" for line in self.notes) or None
