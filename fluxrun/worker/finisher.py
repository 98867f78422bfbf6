"""Finishing tasks on a thread of their own, so the GPU goes on to the next task.

Once a task's images are made (and screened: the safety classifier runs on the GPU, in the
claim loop), what is left needs no GPU: encoding the files, uploading them, the final status
write. The claim loop hands that to the ``Finisher`` and claims the next task at once, so the
GPU is not idle while PNG encoding, a slow bucket or the database take their time.

One thread, ``depth`` tasks waiting at most: ``submit`` blocks while the queue is full, so a
slow storage holds the claim loop back (back-pressure) instead of letting finished images pile
up in memory. With ``depth`` 1 a worker holds at most three tasks: one generating, one waiting
here, one being finished. What waits here is CPU images or bytes, never GPU tensors.

The work itself (worker/loop.py) ends its task whatever happens and keeps its lease alive
until then; this class only runs it, in order. Closing runs everything handed over first:
a stopping worker loses nothing it has claimed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("fluxrun.worker")

DEPTH = 1  # tasks waiting to be finished, besides the one being finished


class Finisher:
    def __init__(self, depth: int = DEPTH) -> None:
        if depth < 1:
            raise ValueError(f"depth: must be at least 1, got {depth}")
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="worker-finisher", daemon=True)

    def __enter__(self) -> Finisher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the finishing thread, after what was handed over before; waits while
        ``depth`` tasks are already waiting."""
        if not self._thread.is_alive():
            raise RuntimeError("the finisher is not running")
        self._queue.put(work)

    def close(self) -> None:
        """Finish everything handed over, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                work()
            except Exception:  # the work ends its own task; this is a bug, not a reason to stop finishing
                log.exception("finishing a task failed")
