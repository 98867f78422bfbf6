"""This worker's row in the worker registry, kept fresh by a small thread.

The row is written at start (state ``loading``, with the tools the worker means to serve),
again once the models are loaded (the tools whose backend loaded), at every change of
state (``idle``, ``busy`` with its task, ``stopping``) and every ``every`` seconds in
between, with the GPU memory torch sees. Each write promises the next: the row is live
until ``GONE_AFTER_BEATS`` heartbeats from now, after which readers count the worker as
gone (killed, crashed, cut off). A clean exit marks it ``stopped``.

A worker may hold more than one task: one generating while the ones before it are being
finished (encoded, uploaded, recorded: worker/finisher.py). It is busy while it holds any; the
task its row names is the newest it holds, the one on the GPU (the others still show their
lease's owner on the task itself).

All writes happen on the thread, so the claim loop never waits on the registry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from fluxrun.errors import DatabaseUnavailable
from fluxrun.store.base import GpuMemory, TaskStore, WorkerRecord, WorkerState

log = logging.getLogger("fluxrun.worker")

GONE_AFTER_BEATS = 3  # a worker not seen for this many heartbeats is gone

GpuReader = Callable[[], tuple[int, int, int] | None]  # (allocated, reserved, total) bytes


class Presence:
    def __init__(
        self,
        store: TaskStore,
        worker_id: str,
        tools: Sequence[str],
        models: str,
        device: str,
        every: float,
        gpu_reader: GpuReader | None = None,
    ) -> None:
        self._store = store
        self.worker_id = worker_id
        self._every = every
        self._gpu_reader = gpu_reader
        self._lock = threading.Lock()
        now = time.time()
        self._record = WorkerRecord(
            id=worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            tools=tuple(tools),
            models=models,
            device=device,
            state="loading",
            task_id=None,
            started_at=now,
            last_seen=now,
            alive_until=now,
        )
        self._register = True  # the next write inserts the whole row
        self._tasks: list[int] = []  # the tasks in hand, oldest first
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-presence", daemon=True)

    # -- what the worker says -------------------------------------------------------------
    def start(self) -> None:
        self._write()  # registered before the models load, so operators see it loading
        self._thread.start()

    def serving(self, tools: Sequence[str]) -> None:
        """The tools this worker serves, once its models are loaded; it is idle now."""
        self._change(tools=tuple(tools), state="idle", register=True)

    def busy(self, task_id: int) -> None:
        """A task is in hand (the newest: the row names it)."""
        with self._lock:
            self._tasks.append(task_id)
            self._change_locked(state="busy", task_id=task_id)
        self._wake.set()

    def done(self, task_id: int) -> None:
        """A task left this worker's hands; idle once none is left."""
        with self._lock:
            if task_id in self._tasks:
                self._tasks.remove(task_id)
            if self._tasks:
                self._change_locked(state="busy", task_id=self._tasks[-1])
            else:
                self._change_locked(state="idle", task_id=None)
        self._wake.set()

    def idle(self) -> None:
        """No task in hand any more."""
        with self._lock:
            self._tasks.clear()
            self._change_locked(state="idle", task_id=None)
        self._wake.set()

    def stopping(self) -> None:
        self._change(state="stopping")

    @property
    def state(self) -> WorkerState:
        return self._record.state

    def stop(self) -> None:
        """The worker exits cleanly: its row says stopped (if it ever had one)."""
        if self._thread.ident is None:  # never started: nothing registered, nothing to mark
            return
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._every + 5)
        try:
            self._store.worker_stopped(self.worker_id, time.time())
        except Exception:  # the database is away: the row goes stale and reads as gone
            log.warning("could not mark worker %s stopped in the registry", self.worker_id, exc_info=True)

    # -- the thread -----------------------------------------------------------------------
    def _change(self, *, state: WorkerState, register: bool = False, **fields: object) -> None:
        with self._lock:
            self._change_locked(state=state, register=register, **fields)
        self._wake.set()

    def _change_locked(self, *, state: WorkerState, register: bool = False, **fields: object) -> None:
        record = self._record
        # Once stopping, a worker only finishes what it holds: it never looks idle or busy again.
        if record.state == "stopping" and state in ("idle", "busy"):
            state = "stopping"
        self._record = replace(record, state=state, **fields)
        self._register = self._register or register

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self._every)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self._write()
            except DatabaseUnavailable:  # the store logged it; the row is written again next beat
                pass
            except Exception:  # a database blip: the row has slack for a couple of beats
                log.warning("worker registry heartbeat failed", exc_info=True)

    def _write(self) -> None:
        now = time.time()
        gpu = self._read_gpu()
        with self._lock:
            record = replace(self._record, last_seen=now, alive_until=now + GONE_AFTER_BEATS * self._every, gpu=gpu)
            register, self._register = self._register, False
        try:
            if register or not self._store.worker_seen(
                record.id, record.state, record.task_id, record.gpu, now, record.alive_until
            ):
                self._store.register_worker(record)  # first write, new tools, or the row was forgotten
        except Exception:
            with self._lock:
                self._register = self._register or register
            raise

    def _read_gpu(self) -> GpuMemory | None:
        if self._gpu_reader is None:
            return None
        try:
            found = self._gpu_reader()
        except Exception:  # a GPU in a bad way still has a worker that is alive
            log.warning("could not read the GPU's memory", exc_info=True)
            return None
        return GpuMemory(*found) if found else None
