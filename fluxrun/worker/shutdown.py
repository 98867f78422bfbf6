"""How a worker process stops.

- The first SIGTERM (or SIGINT): take no new task, finish the ones in hand (the one
  generating and those being finished, worker/finisher.py), exit. While the models are still
  loading there is no task: the process exits at once.
- A second signal, or ``grace_seconds`` after the first with a task still unfinished:
  stop now. The tasks in hand go back to the queue at once (TaskStore.hand_back: another worker
  can take it right away, and the attempt does not count against FLUXRUN_MAX_ATTEMPTS),
  generation stops at its next step, and the process exits.

Signals within ``DEBOUNCE_SECONDS`` of the first count as the same request: a terminal's
Ctrl-C and systemd signal every process of the group, and ``fluxrun serve`` passes the
signal on as well, so a worker often hears one request twice within milliseconds
(fluxrun/stopping.py has the rules ``serve``'s supervisor follows too).

The hand-back runs on a thread of its own: a signal handler runs on the main thread, which
may be inside a database transaction (SQLite would wait on itself). If the main thread has
not left ``HARD_EXIT_SECONDS`` after the hand-back (stuck in one long call with no step to
stop at), the process exits anyway; its task is already back in the queue.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from fluxrun.stopping import DEBOUNCE_SECONDS, EXIT_STOPPED_NOW, HARD_EXIT_SECONDS

log = logging.getLogger("fluxrun.worker")


class Shutdown:
    def __init__(
        self,
        grace_seconds: float,
        on_stopping: Callable[[], None],
        on_stop_now: Callable[[str], None],
    ) -> None:
        """``on_stopping``: the first signal came (mark the worker stopping). ``on_stop_now``:
        hand the task in hand back, with the reason (runs on the hand-back thread)."""
        self.grace_seconds = grace_seconds
        self._on_stopping = on_stopping
        self._on_stop_now = on_stop_now
        self.stop = threading.Event()  # take no new task; exit once the one in hand is done
        self.now = threading.Event()  # hand the task back and exit
        self.loading = True  # no task can be in hand yet: a signal ends the process
        self._first_at: float | None = None
        self._grace: threading.Timer | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._first_at is None:
            self._first_at = now
            self.stop.set()
            self._on_stopping()
            if self.loading:
                log.info("%s while loading models: stopping", name)
                raise SystemExit(0)
            log.info("%s: finishing the current task, then stopping (within %g s; a second signal hands the "
                     "task back to the queue now)", name, self.grace_seconds)
            self._grace = threading.Timer(self.grace_seconds, self._grace_over)
            self._grace.daemon = True
            self._grace.start()
            return
        if now - self._first_at < DEBOUNCE_SECONDS:
            return  # the same request, heard twice
        self.stop_now(f"{name} again")

    def stop_now(self, why: str) -> None:
        if self.now.is_set():
            return
        self.stop.set()
        self.now.set()
        log.warning("stopping now (%s): handing the task in hand back to the queue", why)
        threading.Thread(target=self._hand_back, args=(why,), name="worker-hand-back", daemon=True).start()

    def cancel(self) -> None:
        """The process is leaving by itself: no grace timer needed any more."""
        if self._grace is not None:
            self._grace.cancel()

    def _grace_over(self) -> None:
        self.stop_now(f"still busy {self.grace_seconds:g} s after the stop signal, FLUXRUN_SHUTDOWN_GRACE_SECONDS")

    def _hand_back(self, why: str) -> None:
        try:
            self._on_stop_now(why)
        except Exception:  # the lease then expires and the task runs again, as after a crash
            log.exception("could not hand the task back to the queue")
        time.sleep(HARD_EXIT_SECONDS)
        # Still here: the main thread is stuck in a call that never reaches a step.
        log.error("the worker did not stop within %g s of handing its task back; exiting now", HARD_EXIT_SECONDS)
        logging.shutdown()
        os._exit(EXIT_STOPPED_NOW)
