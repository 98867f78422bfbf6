"""The claim loop: one task at a time, every task ends terminally.

For each claimed task the worker walks the statuses of SPEC.md section 3 with their
timestamps, keeps the lease alive by heartbeat, reports progress at each denoising step
and stops at the next step when the task was killed (the progress write is fenced: it
fails once the task is no longer this attempt's). A request that asks for the
pixel-perfect pass gets it on its images before they are encoded.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.errors import BackendUnavailable, LeaseLost, TaskStopped
from fluxrun.imaging.encode import EncodedImage, encode_image
from fluxrun.imaging.pixelart import pixelate
from fluxrun.status import Status
from fluxrun.storage.base import OutputStorage
from fluxrun.store.base import Lease, NewOutput, TaskStore
from fluxrun.tools.catalog import tool_by_slug
from fluxrun.tools.request import PixelArtPass
from fluxrun.worker.heartbeat import Heartbeat
from fluxrun.worker.job import TaskJob

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
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.backends = backends
        self.worker_id = worker_id or default_worker_id()

    def run_forever(self, stop: threading.Event) -> None:
        """Claim and run tasks until ``stop`` is set; the task in hand is finished first."""
        while not stop.is_set():
            try:
                if not self.run_once():
                    stop.wait(self.settings.idle_poll_seconds)
            except Exception:  # the database may be away for a while: wait, then go on
                log.exception("worker loop")
                stop.wait(max(1.0, self.settings.idle_poll_seconds))

    def run_once(self) -> bool:
        """Run one task if there is one; False when the queue was empty."""
        now = time.time()
        self.store.expire_leases(now, self.settings.max_attempts)
        lease = self.store.claim(self.worker_id, self.settings.lease_seconds, now)
        if lease is None:
            return False
        self.process(lease)
        return True

    def process(self, lease: Lease) -> None:
        task_id = lease.task_id
        with Heartbeat(self.store, lease, self.settings.lease_seconds, self.settings.heartbeat_seconds) as beat:
            try:
                self._run(lease, beat)
            except TaskStopped:
                log.info("task %s: stopped (killed, or taken over by another attempt)", task_id)
            except LeaseLost:
                log.warning("task %s: lease lost; another attempt owns the task now", task_id)
            except Exception as exc:  # every failure ends the task, never the worker
                log.exception("task %s failed", task_id)
                self._fail(lease, _describe(exc))

    def _run(self, lease: Lease, beat: Heartbeat) -> None:
        store, now = self.store, time.time
        tool = tool_by_slug(lease.task.tool)
        store.advance(lease, Status.ASSIGN, now(), note=f"attempt {lease.attempt}: worker {self.worker_id}")
        store.advance(lease, Status.PREPROCESS_START, now())
        request = tool.to_request(lease.task.parameters)
        backend = self.backends.get(request.backend)
        store.advance(lease, Status.PREPROCESS_END, now(), note=backend.description)
        store.advance(lease, Status.START, now())

        job = TaskJob(store, lease, beat)
        started = time.monotonic()
        images = backend.generate(request, job)
        elapsed = time.monotonic() - started  # what is billed: the model's time, not ours below
        if request.pixel_pass is not None:
            images = pixel_perfect(images, request.pixel_pass, job)
        store.advance(lease, Status.END, now(), note=job.notes_text())

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
    if isinstance(exc, BackendUnavailable):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
