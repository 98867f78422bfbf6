"""Keeps ``serve``'s worker processes alive: starts them, restarts any that die.

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

log = logging.getLogger("fluxrun.supervisor")

_FAST_DEATH_S = 30.0  # a worker that dies sooner than this is restarted with back-off
_MAX_BACKOFF_S = 30.0


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0


class WorkerSupervisor:
    def __init__(self, settings: Settings, count: int, grace_seconds: float = 60.0) -> None:
        self._env = {**os.environ, **settings.to_env()}
        self._slots = [_Slot(i) for i in range(count)]
        self._grace = grace_seconds
        self._stopping = threading.Event()
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
            for slot in self._slots:
                process = slot.process
                if process is None or process.poll() is None:
                    if process is None and now >= slot.restart_at:
                        self._spawn(slot)
                    continue
                if process.returncode == EXIT_CONFIG:
                    log.error("worker %d (pid %d) cannot run with this configuration (its message is above); "
                              "not restarting it: fix the setting and restart", slot.index, process.pid)
                    slot.process, slot.restart_at = None, float("inf")
                    continue
                lived = now - slot.started
                slot.backoff = min(_MAX_BACKOFF_S, max(1.0, slot.backoff * 2)) if lived < _FAST_DEATH_S else 0.0
                slot.restart_at = now + slot.backoff
                log.warning("worker %d (pid %d) exited with %s; restarting in %.0f s",
                            slot.index, process.pid, process.returncode, slot.backoff)
                slot.process = None

    def stop(self) -> None:
        """Ask every worker to finish its task and exit; kill those that outlast the grace."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        running = [s.process for s in self._slots if s.process and s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
