"""The claim loop: one task at a time, every task ends terminally.

For each claimed task the worker walks the statuses of SPEC.md section 3 with their
timestamps, keeps the lease alive by heartbeat, reports progress at each denoising step
and stops at the next step when the task was killed (the progress write is fenced: it
fails once the task is no longer this attempt's; the kill event on the bus says it sooner).
An idle worker sleeps until the bus says a task was queued, with a slow poll
(``idle_poll_seconds``) as the fallback for events it could not hear. A request that asks
for the pixel-perfect pass gets it on its images; images made here then pass the safety
classifier (worker/moderation.py) before anything is stored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fluxrun.backends import memory
from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.errors import LeaseLost, TaskFailed, TaskStopped
from fluxrun.imaging.encode import EncodedImage, encode_image
from fluxrun.imaging.pixelart import pixelate
from fluxrun.logs import task_scope
from fluxrun.status import Status
from fluxrun.storage.base import OutputStorage
from fluxrun.store.base import Lease, NewOutput, TaskStore
from fluxrun.tools.catalog import TOOLS, tool_by_slug
from fluxrun.tools.request import PixelArtPass
from fluxrun.tools.spec import ToolSpec
from fluxrun.worker.heartbeat import Heartbeat
from fluxrun.worker.job import TaskJob
from fluxrun.worker.moderation import Moderation
from fluxrun.worker.presence import Presence
from fluxrun.worker.signals import BusWatcher, TaskSignals

if TYPE_CHECKING:
    from PIL.Image import Image

    from fluxrun.backends.base import Job

log = logging.getLogger("fluxrun.worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        storage: OutputStorage,
        backends: BackendCache,
        worker_id: str | None = None,
        on_callback_owed: Callable[[], None] | None = None,
        presence: Presence | None = None,
        tools: tuple[ToolSpec, ...] = TOOLS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.backends = backends
        self.worker_id = worker_id or default_worker_id()
        # The tools this worker serves (FLUXRUN_WORKER_TOOLS): it claims their tasks only, named
        # even when it serves them all, so that a task of a tool it does not know (queued by a
        # newer API during an upgrade) waits for a worker that does.
        self.tools = tools
        self._tool_slugs = [tool.slug for tool in tools]
        self.moderation = Moderation(
            settings.safety_model, backends.options.device, settings.unsafe_labels, settings.safety_default_tolerance
        )
        # Called when a task with a callback URL leaves this worker's hands, and when the bus
        # says a task ended anywhere, so a callback goes out at once, not at the next poll.
        self.on_callback_owed = on_callback_owed
        self.presence = presence
        self._watcher: BusWatcher | None = None
        # The task in hand, for stop_now on another thread; the lock orders a stop against a claim.
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._signals: TaskSignals | None = None
        self._stopped_now: str | None = None  # why, once told to stop now

    def run_forever(self, stop: threading.Event) -> None:
        """Claim and run tasks until ``stop`` is set; the task in hand is finished first."""
        with BusWatcher(self.store.events, stop, on_task_end=self.on_callback_owed) as watcher:
            self._watcher = watcher
            try:
                while not stop.is_set():
                    try:
                        if not self.run_once():
                            watcher.wait_for_work(self.settings.idle_poll_seconds)
                    except Exception:  # the database may be away for a while: wait, then go on
                        log.exception("worker loop")
                        stop.wait(max(1.0, min(5.0, self.settings.idle_poll_seconds)))
            finally:
                self._watcher = None

    def run_once(self) -> bool:
        """Run one task if there is one; False when the queue was empty."""
        now = time.time()
        self.store.expire_leases(now, self.settings.max_attempts)
        lease = self.store.claim(self.worker_id, self.settings.lease_seconds, now, tools=self._tool_slugs)
        if lease is None:
            return False
        self.process(lease)
        return True

    def process(self, lease: Lease) -> None:
        with task_scope(lease.task_id):
            with self._lock:
                self._lease, stopped_now = lease, self._stopped_now
            if self.presence:
                self.presence.busy(lease.task_id)
            try:
                if stopped_now is not None:  # claimed just as the worker was told to stop now
                    self._hand_back(lease, stopped_now)
                else:
                    self._process(lease)
            finally:
                with self._lock:
                    self._lease = self._signals = None
                if self.presence:
                    self.presence.idle()

    def stop_now(self, why: str) -> None:
        """Hand the task in hand back to the queue at once (from any thread); the claim loop
        stops at its next step. A task claimed after this is handed back as it arrives."""
        with self._lock:
            self._stopped_now = why
            lease = self._lease
        if lease is not None:
            with task_scope(lease.task_id):
                self._hand_back(lease, why)

    def _hand_back(self, lease: Lease, why: str) -> None:
        if self.store.hand_back(lease, time.time(), f"worker {self.worker_id} stopped at once ({why})"):
            log.warning("task %s: handed back to the queue (%s)", lease.task_id, why)
            with self._lock:
                signals = self._signals if self._lease is lease else None
            if signals is not None:
                signals.killed.set()  # generation stops at its next step, not at its next write
        else:
            log.info("task %s: nothing to hand back (it ended or was taken over)", lease.task_id)

    def _process(self, lease: Lease) -> None:
        task_id = lease.task_id
        signals = self._watcher.begin(task_id) if self._watcher else None
        with self._lock:
            self._signals = signals
            if self._stopped_now is not None and signals is not None:
                signals.killed.set()  # handed back already, between the claim and here
        with Heartbeat(self.store, lease, self.settings.lease_seconds, self.settings.heartbeat_seconds) as beat:
            try:
                self._run(lease, beat, signals)
            except (TaskStopped, LeaseLost) as exc:
                if self._stopped_now is not None:
                    log.info("task %s: stopped; it was handed back to the queue", task_id)
                elif isinstance(exc, TaskStopped):
                    log.info("task %s: stopped (killed, or taken over by another attempt)", task_id)
                else:
                    log.warning("task %s: lease lost; another attempt owns the task now", task_id)
            except TaskFailed as exc:  # an expected end (no credits, moderated...): no traceback
                log.warning("task %s failed: %s", task_id, exc)
                self._fail(lease, _describe(exc))
            except Exception as exc:  # every failure ends the task, never the worker
                log.exception("task %s failed", task_id)
                self._fail(lease, _describe(exc))
            finally:
                if self._watcher:
                    self._watcher.end()
        if lease.task.callback_url and self.on_callback_owed:
            self.on_callback_owed()

    def _run(self, lease: Lease, beat: Heartbeat, signals: TaskSignals | None) -> None:
        store, now = self.store, time.time
        tool = tool_by_slug(lease.task.tool)
        store.advance(lease, Status.ASSIGN, now(), note=f"attempt {lease.attempt}: worker {self.worker_id}")
        store.advance(lease, Status.PREPROCESS_START, now())
        request = tool.to_request(lease.task.parameters)
        backend = self.backends.get(request.backend)
        self.moderation.ready(backend)
        store.advance(lease, Status.PREPROCESS_END, now(), note=backend.description)
        store.advance(lease, Status.START, now())

        job = TaskJob(store, lease, beat, signals)
        started = time.monotonic()
        images = memory.generate(backend, request, job)
        elapsed = time.monotonic() - started  # what is billed: the model's time, not ours below
        if request.pixel_pass is not None:
            images = pixel_perfect(images, request.pixel_pass, job)
        review = self.moderation.review(backend, request, images)
        if review.note:
            job.note(review.note)
        store.advance(lease, Status.END, now(), note=job.notes_text())
        if review.withheld is not None:
            raise review.withheld  # the task fails with the moderation message; none of its images is stored

        outputs: list[NewOutput] = []
        for index, image in enumerate(images):
            # A backend that received finished files (a remote API) hands them over as they are.
            encoded = image if isinstance(image, EncodedImage) else encode_image(image, request.output_format)
            name = f"{index}.{encoded.extension}"
            size = self.storage.put(lease.task.output_key, name, encoded.data, encoded.content_type)
            outputs.append(NewOutput(name=name, content_type=encoded.content_type, size=size))
        store.finish_success(lease, outputs, elapsed, now())
        log.info("task %s: %d image(s) in %.2f s", lease.task_id, len(outputs), elapsed)

    def _fail(self, lease: Lease, message: str) -> None:
        try:
            self.store.finish_failure(lease, message, time.time(), pexit=1)
        except LeaseLost:
            log.warning("task %s: could not record the failure, the lease is gone", lease.task_id)


def pixel_perfect(images: list[Image | EncodedImage], asked: PixelArtPass, job: Job) -> list[Image | EncodedImage]:
    """The pixel-perfect pass on each image, with a note of the grid it found."""
    done: list[Image | EncodedImage] = []
    for index, image in enumerate(images):
        prefix = f"image {index}: " if len(images) > 1 else ""
        if isinstance(image, EncodedImage):  # a remote API's file: not ours to redraw
            job.note(f"{prefix}pixel-perfect: skipped, the backend returned a finished file")
            done.append(image)
            continue
        result = pixelate(image, asked.palette_size, asked.output)
        job.note(prefix + result.describe())
        done.append(result.image)
    return done


def _describe(exc: BaseException) -> str:
    # fluxrun's own task-ending errors are written for the task's owner; anything else is a
    # bug or a library's error, where the class name is part of the story.
    if isinstance(exc, TaskFailed):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
