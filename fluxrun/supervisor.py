"""Keeps ``serve``'s worker processes alive: starts them, restarts any that die, and passes
the stop signals ``serve`` receives on to them (see fluxrun/worker/shutdown.py).

Workers are separate processes (``python -m fluxrun worker``) so the API process never
imports torch, and so a worker that crashes, or is killed, costs only its current task's
attempt: its lease expires and the task runs again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from fluxrun.config import Settings
from fluxrun.errors import EXIT_CONFIG
from fluxrun.stopping import DEBOUNCE_SECONDS, HARD_EXIT_SECONDS

log = logging.getLogger("fluxrun.supervisor")

_FAST_DEATH_S = 30.0  # a worker that dies sooner than this is restarted with back-off
_MAX_BACKOFF_S = 30.0
_GRACE_MARGIN_S = 5.0  # past a worker's own deadline, before the supervisor steps in


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0


class WorkerSupervisor:
    def __init__(self, settings: Settings, count: int, grace_seconds: float | None = None) -> None:
        self._env = {**os.environ, **settings.to_env()}
        self._slots = [_Slot(i) for i in range(count)]
        # Workers hand their task back themselves when their grace runs out; the supervisor's
        # own deadline comes a little later, for a worker that could not.
        self._grace = settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self._stopping = threading.Event()
        self._stop_began: float | None = None
        self._stopped_now = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)
        self._thread.start()

    def _spawn(self, slot: _Slot) -> None:
        command = [sys.executable, "-m", "fluxrun", "worker"]
        slot.process = subprocess.Popen(command, env=self._env)
        slot.started = time.monotonic()
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                for slot in self._slots:
                    self._look_after(slot, now)

    def _look_after(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if process is None or process.poll() is None:
            if process is None and now >= slot.restart_at:
                self._spawn(slot)
            return
        if process.returncode == EXIT_CONFIG:
            log.error("worker %d (pid %d) cannot run with this configuration (its message is above); "
                      "not restarting it: fix the setting and restart", slot.index, process.pid)
            slot.process, slot.restart_at = None, float("inf")
            return
        lived = now - slot.started
        slot.backoff = min(_MAX_BACKOFF_S, max(1.0, slot.backoff * 2)) if lived < _FAST_DEATH_S else 0.0
        slot.restart_at = now + slot.backoff
        log.warning("worker %d (pid %d) exited with %s; restarting in %.0f s",
                    slot.index, process.pid, process.returncode, slot.backoff)
        slot.process = None

    # -- stopping -------------------------------------------------------------------------
    def begin_stop(self) -> None:
        """Restart no worker any more, and ask each to finish its task and exit (SIGTERM).
        Safe to call from a signal handler; only the first call signals."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._stop_began = time.monotonic()
            self._signal_all("finish the task in hand, then exit")

    def stop_now(self) -> None:
        """Ask each worker to hand its task back to the queue now and exit (a second SIGTERM)."""
        self.begin_stop()
        with self._lock:
            if self._stopped_now:
                return
            self._stopped_now = True
            began = self._stop_began or time.monotonic()
        # A worker takes signals within its debounce of the first for the same request.
        delay = max(0.0, began + DEBOUNCE_SECONDS + 0.1 - time.monotonic())
        timer = threading.Timer(delay, self._signal_all, args=("hand the task back and exit now",))
        timer.daemon = True
        timer.start()

    def all_exited(self) -> bool:
        return all(s.process is None or s.process.poll() is not None for s in self._slots)

    def stop(self) -> None:
        """Stop every worker and wait: SIGTERM, a second SIGTERM when the grace is over (the
        task goes back to the queue), SIGKILL for any still there after that."""
        self.begin_stop()
        began = self._stop_began or time.monotonic()
        if not self._wait(began + self._grace + _GRACE_MARGIN_S):
            self.stop_now()
            if not self._wait(time.monotonic() + DEBOUNCE_SECONDS + HARD_EXIT_SECONDS + _GRACE_MARGIN_S):
                for slot in self._slots:
                    if slot.process is not None and slot.process.poll() is None:
                        log.warning("worker pid %d did not stop in time; killing it", slot.process.pid)
                        slot.process.kill()
                        slot.process.wait()

    def _signal_all(self, meaning: str) -> None:
        for slot in self._slots:
            process = slot.process
            if process is not None and process.poll() is None:
                log.info("worker %d (pid %d): SIGTERM (%s)", slot.index, process.pid, meaning)
                process.send_signal(signal.SIGTERM)

    def _wait(self, deadline: float) -> bool:
        """Until every worker has exited (True) or the deadline (False)."""
        while not self.all_exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True
