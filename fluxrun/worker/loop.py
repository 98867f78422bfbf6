"""The claim loop: every task ends terminally, and the GPU goes on to the next task at once.

For each claimed task the worker walks the statuses of SPEC.md section 3 with their
timestamps, keeps the lease alive by heartbeat, reports progress at each denoising step
and stops at the next step when the task was killed (the progress write is fenced: it
fails once the task is no longer this attempt's; the kill event on the bus says it sooner).
An idle worker sleeps until the bus says a task was queued, with a slow poll
(``idle_poll_seconds``) as the fallback for events it could not hear. A request that asks
for the pixel-perfect pass gets it on its images; images made here then pass the safety
classifier (worker/moderation.py) before anything is stored.

Overlap (FLUXRUN_OVERLAP_POSTPROCESS, on by default): once a task's images are made and
screened (``task_end``), ``run_forever`` hands the rest (encoding, uploading, the final
status write) to the finisher (worker/finisher.py) and claims the next task, so the GPU
does not wait on zlib, a bucket or the database. The task stays this worker's until its final
write: its lease is kept alive, a kill or a stop-now reaches it in the finisher as while it
generated (no more of its files are written), and every write stays fenced by its attempt.
The pixel-perfect pass and the classifier stay in the claim loop: the classifier runs on the
GPU (one thread driving the GPU keeps its memory and its timing predictable) and must judge
the images as they will be stored, so the pass that redraws them comes before it; both write
their lines to debugoutput with ``task_end``. ``run_once`` (and the setting off) runs one task
start to end.

A database that goes away (the store raises DatabaseUnavailable) ends no task: generation goes
on without recording progress, the status writes and the task's end wait for it
(worker/patience.py), the heartbeat retries every second, and the claim loop backs off.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from fluxrun.backends import memory
from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.errors import DatabaseUnavailable, LeaseLost, TaskFailed, TaskStopped
from fluxrun.imaging.encode import EncodedImage, encode_image
from fluxrun.imaging.pixelart import pixelate
from fluxrun.logs import task_scope
from fluxrun.status import Status
from fluxrun.storage.base import OutputStorage, attempt_key
from fluxrun.store.base import Lease, NewOutput, TaskStore
from fluxrun.tools.catalog import TOOLS, tool_by_slug
from fluxrun.tools.request import PixelArtPass
from fluxrun.tools.spec import ToolSpec
from fluxrun.worker.finisher import Finisher
from fluxrun.worker.heartbeat import Heartbeat
from fluxrun.worker.job import TaskJob
from fluxrun.worker.moderation import Moderation
from fluxrun.worker.patience import backoff, until_written
from fluxrun.worker.presence import Presence
from fluxrun.worker.signals import BusWatcher, TaskSignals

if TYPE_CHECKING:
    from PIL.Image import Image

    from fluxrun.backends.base import Job

log = logging.getLogger("fluxrun.worker")

T = TypeVar("T")


def default_worker_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass(eq=False)
class HeldTask:
    """A task in this worker's hands, from its claim to its last write."""

    lease: Lease
    signals: TaskSignals  # a kill (or a stop-now) sets its ``killed``
    beat: Heartbeat | None = None
    resources: ExitStack = field(default_factory=ExitStack)  # closed when the task leaves our hands


@dataclass(frozen=True)
class Generated:
    """What the GPU made of a task: CPU images (or a remote API's files), ready to be stored."""

    images: list[Image | EncodedImage]
    output_format: str
    elapsed: float  # the model's time, which is billed


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
        # The tasks in hand (generating, or being finished), for stop_now on another thread;
        # the lock orders a stop against a claim.
        self._lock = threading.Lock()
        self._held: list[HeldTask] = []
        self._stopped_now: str | None = None  # why, once told to stop now

    def run_forever(self, stop: threading.Event) -> None:
        """Claim and run tasks until ``stop`` is set; the tasks in hand are finished first."""
        with BusWatcher(self.store.events, stop, on_task_end=self.on_callback_owed) as watcher:
            self._watcher = watcher
            try:
                # Leaving the finisher finishes what it was handed, with the bus still heard.
                with Finisher() if self.settings.overlap_postprocess else nullcontext(None) as finisher:
                    away: float | None = None  # the wait before the next claim while the database is away
                    while not stop.is_set():
                        try:
                            if not self._run_next(finisher):
                                watcher.wait_for_work(self.settings.idle_poll_seconds)
                            away = None
                        except DatabaseUnavailable:  # the store said so, once: wait for it, then go on
                            away = backoff(away)
                            stop.wait(away)
                        except Exception:
                            log.exception("worker loop")
                            stop.wait(max(1.0, min(5.0, self.settings.idle_poll_seconds)))
            finally:
                self._watcher = None

    def run_once(self) -> bool:
        """Run one task start to end if there is one; False when the queue was empty."""
        return self._run_next(None)

    def _run_next(self, finisher: Finisher | None) -> bool:
        now = time.time()
        # After an outage, a lease's length for the workers to renew theirs before any is taken.
        self.store.expire_leases(now, self.settings.max_attempts, settle_seconds=self.settings.lease_seconds)
        lease = self.store.claim(self.worker_id, self.settings.lease_seconds, now, tools=self._tool_slugs)
        if lease is None:
            return False
        self.process(lease, finisher)
        return True

    def process(self, lease: Lease, finisher: Finisher | None = None) -> None:
        """Run the task of ``lease``: generate it here, then finish it here too or, given a
        ``finisher``, there (this then returns once the task is handed over)."""
        with task_scope(lease.task_id):
            held, stopped_now = self._hold(lease)
            handed_over = False
            try:
                if stopped_now is not None:  # claimed just as the worker was told to stop now
                    self._hand_back(held, stopped_now)
                else:
                    handed_over = self._process(held, finisher)
            finally:
                if not handed_over:
                    self._release(held)

    def stop_now(self, why: str) -> None:
        """Hand every task in hand back to the queue at once (from any thread): the one
        generating and those being finished. The claim loop stops at its next step; a task
        claimed after this is handed back as it arrives."""
        with self._lock:
            self._stopped_now = why
            held = list(self._held)
        for task in held:
            with task_scope(task.lease.task_id):
                self._hand_back(task, why)

    def _hold(self, lease: Lease) -> tuple[HeldTask, str | None]:
        watcher = self._watcher
        signals = watcher.begin(lease.task_id) if watcher else TaskSignals(lease.task_id, previews=False)
        held = HeldTask(lease, signals)
        if watcher:
            held.resources.callback(watcher.end, signals)
        with self._lock:
            self._held.append(held)
            stopped_now = self._stopped_now
        if self.presence:
            self.presence.busy(lease.task_id)
        return held, stopped_now

    def _release(self, held: HeldTask) -> None:
        """The task left this worker's hands: it ended, or this attempt no longer owns it."""
        held.resources.close()  # its heartbeat stops, the bus forgets it
        with self._lock:
            self._held.remove(held)
        if held.lease.task.callback_url and self.on_callback_owed:
            self.on_callback_owed()
        if self.presence:
            self.presence.done(held.lease.task_id)

    def _hand_back(self, held: HeldTask, why: str) -> None:
        lease = held.lease
        try:
            handed_back = self.store.hand_back(lease, time.time(), f"worker {self.worker_id} stopped at once ({why})")
        except DatabaseUnavailable:
            # Stop anyway (no write waits for the database any more): as after a crash, the task
            # goes back to the queue when its lease expires.
            log.warning("task %s: could not hand it back to the queue (the database is away); it runs again "
                        "once its lease expires", lease.task_id)
            held.signals.killed.set()
            return
        if handed_back:
            log.warning("task %s: handed back to the queue (%s)", lease.task_id, why)
            held.signals.killed.set()  # generation stops at its next step, finishing before its next file
        else:
            log.info("task %s: nothing to hand back (it ended or was taken over)", lease.task_id)

    def _process(self, held: HeldTask, finisher: Finisher | None) -> bool:
        """Generate, then finish here or hand the finishing to ``finisher``; True once handed over."""
        lease = held.lease
        held.beat = held.resources.enter_context(
            Heartbeat(self.store, lease, self.settings.lease_seconds, self.settings.heartbeat_seconds)
        )
        generated = self._settle(held, self._generate)
        if generated is None:  # it ended (failed, withheld) or is no longer ours
            return False
        if finisher is None:
            self._settle(held, lambda task: self._store_outputs(task, generated))
            return False
        finisher.submit(lambda: self._finish(held, generated))
        return True

    def _finish(self, held: HeldTask, generated: Generated) -> None:
        """On the finisher's thread: store the task's files, end it, let it go."""
        with task_scope(held.lease.task_id):  # a thread starts with no log scope of its own
            try:
                self._settle(held, lambda task: self._store_outputs(task, generated))
            finally:
                self._release(held)

    def _settle(self, held: HeldTask, step: Callable[[HeldTask], T]) -> T | None:
        """``step`` of the task; if it raises, the task ends here: failed with the error's
        message, or (stopped, lease lost) with nothing more written by this attempt."""
        task_id = held.lease.task_id
        try:
            return step(held)
        except (TaskStopped, LeaseLost) as exc:
            if self._stopped_now is not None:
                log.info("task %s: stopped; it was handed back to the queue", task_id)
            elif isinstance(exc, TaskStopped):
                log.info("task %s: stopped (killed, or taken over by another attempt)", task_id)
            else:
                log.warning("task %s: lease lost; another attempt owns the task now", task_id)
        except DatabaseUnavailable:  # a write that could not wait: the lease runs out, the task runs again
            log.warning("task %s: the database went away during a write; the task goes back to the queue when "
                        "its lease expires", task_id)
        except TaskFailed as exc:  # an expected end (no credits, moderated, storage down...): no traceback
            log.warning("task %s failed: %s", task_id, exc)
            self._fail(held, _describe(exc))
        except Exception as exc:  # every failure ends the task, never the worker
            log.exception("task %s failed", task_id)
            self._fail(held, _describe(exc))
        return None

    def _generate(self, held: HeldTask) -> Generated:
        """Every status up to task_end: the GPU's part of the task, and the screening of its images."""
        lease, advance = held.lease, self._advance
        tool = tool_by_slug(lease.task.tool)
        advance(held, Status.ASSIGN, note=f"attempt {lease.attempt}: worker {self.worker_id}")
        advance(held, Status.PREPROCESS_START)
        request = tool.to_request(lease.task.parameters)
        backend = self.backends.get(request.backend)
        self.moderation.ready(backend)
        advance(held, Status.PREPROCESS_END, note=backend.description)
        advance(held, Status.START)

        assert held.beat is not None
        job = TaskJob(self.store, lease, held.beat, held.signals)
        started = time.monotonic()
        images = memory.generate(backend, request, job)
        elapsed = time.monotonic() - started  # what is billed: the model's time, not ours below
        if request.pixel_pass is not None:
            images = pixel_perfect(images, request.pixel_pass, job)
        review = self.moderation.review(backend, request, images)
        if review.note:
            job.note(review.note)
        advance(held, Status.END, note=job.notes_text())
        if review.withheld is not None:
            raise review.withheld  # the task fails with the moderation message; none of its images is stored
        return Generated(images, request.output_format, elapsed)

    def _store_outputs(self, held: HeldTask, generated: Generated) -> None:
        """Encode and store the task's files, then its final status (fenced by the attempt)."""
        lease = held.lease
        # A key of this attempt's own: were this attempt taken over while an upload is in flight,
        # that upload could not overwrite a file of the attempt that took over.
        key = attempt_key(lease.task.output_key, lease.attempt)
        outputs: list[NewOutput] = []
        for index, image in enumerate(generated.images):
            # A backend that received finished files (a remote API) hands them over as they are.
            encoded = image if isinstance(image, EncodedImage) else encode_image(image, generated.output_format)
            name = f"{index}.{encoded.extension}"
            self._still_ours(held)  # an attempt that lost the task writes none of its files
            size = self.storage.put(key, name, encoded.data, encoded.content_type)
            outputs.append(NewOutput(name=name, content_type=encoded.content_type, size=size, key=key))
        ended = time.time()
        until_written(lambda: self.store.finish_success(lease, outputs, generated.elapsed, ended), held.signals.killed)
        log.info("task %s: %d image(s) in %.2f s", lease.task_id, len(outputs), generated.elapsed)

    def _still_ours(self, held: HeldTask) -> None:
        """TaskStopped when the task was killed, handed back or taken over."""
        if held.signals.killed.is_set() or (held.beat is not None and held.beat.lost.is_set()):
            raise TaskStopped()
        try:  # the bus may have missed a kill, and a heartbeat is seconds apart: ask the store
            current = self.store.is_current(held.lease)
        except DatabaseUnavailable:  # the final write is fenced anyway, and waits for the database
            return
        except Exception:  # the final write is fenced anyway, go on
            log.warning("task %s: could not check whether it is still ours", held.lease.task_id, exc_info=True)
            return
        if not current:
            raise TaskStopped()

    def _advance(self, held: HeldTask, status: Status, note: str | None = None) -> None:
        """The task reached ``status`` (now): written, however long the database takes to answer."""
        reached = time.time()
        until_written(lambda: self.store.advance(held.lease, status, reached, note=note), held.signals.killed)

    def _fail(self, held: HeldTask, message: str) -> None:
        lease, failed_at = held.lease, time.time()
        try:
            until_written(lambda: self.store.finish_failure(lease, message, failed_at, pexit=1), held.signals.killed)
        except LeaseLost:
            log.warning("task %s: could not record the failure, the lease is gone", lease.task_id)
        except TaskStopped:
            log.info("task %s: stopped before its failure could be recorded", lease.task_id)


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
