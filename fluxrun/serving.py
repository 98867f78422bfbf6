"""Runs the API under uvicorn with a graceful shutdown (``fluxrun api``, and ``fluxrun serve``).

The first SIGTERM (or SIGINT) starts draining:
- the app refuses new Runs with 503 + Retry-After and ``/ready`` answers 503 (api/lifecycle.py),
  so a load balancer takes this process out and retries Runs on another one;
- everything else is still served: clients keep polling their tasks and downloading files;
- ``on_drain`` runs (``serve``: its supervisor passes the signal on to the workers, which
  finish their tasks);
- after at least FLUXRUN_DRAIN_SECONDS, and once ``drained()`` says so (``serve``: every
  worker has exited), uvicorn stops listening, finishes the requests in flight and exits 0.
A second signal stops now: ``on_stop_now`` runs (``serve``: the workers hand their tasks
back to the queue) and uvicorn shuts down at once, still finishing requests in flight; a
third makes uvicorn drop them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from fluxrun.api.lifecycle import Lifecycle

log = logging.getLogger("fluxrun.api")

REQUESTS_GRACE_SECONDS = 30.0  # once uvicorn stops listening: the longest it waits for requests in flight
_DRAIN_POLL_SECONDS = 0.2


class GracefulServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        drain_seconds: float,
        on_drain: Callable[[], None] | None = None,
        on_stop_now: Callable[[], None] | None = None,
        drained: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_seconds = drain_seconds
        self._on_drain = on_drain
        self._on_stop_now = on_stop_now
        self._drained = drained
        self._stopping_now = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler, the signal is not raised again after the shutdown:
        # the process exits 0 through its finally blocks (serve stops its workers there).
        if self.lifecycle.start_draining():
            log.info(
                "signal %d: draining: new Runs are refused (503) and /ready answers 503; exiting after at least "
                "%g s%s. Send the signal again to stop now.", sig, self.drain_seconds,
                " and once the workers have finished their tasks" if self._drained else "",
            )
            if self._on_drain:
                self._on_drain()
            threading.Thread(target=self._drain, name="api-drain", daemon=True).start()
            return
        if not self._stopping_now:
            self._stopping_now = True
            log.warning("signal %d again: stopping now", sig)
            if self._on_stop_now:
                self._on_stop_now()
            self.should_exit = True
            return
        self.force_exit = True

    def _drain(self) -> None:
        until = time.monotonic() + self.drain_seconds
        while not self.should_exit and (time.monotonic() < until or (self._drained and not self._drained())):
            time.sleep(_DRAIN_POLL_SECONDS)
        if not self.should_exit:
            log.info("drained: closing the listener, finishing the requests in flight")
        self.should_exit = True


def run_api(
    app: FastAPI,
    host: str,
    port: int,
    lifecycle: Lifecycle,
    drain_seconds: float,
    on_drain: Callable[[], None] | None = None,
    on_stop_now: Callable[[], None] | None = None,
    drained: Callable[[], bool] | None = None,
    ws_max_size: int = 16 * 1024 * 1024,
) -> None:
    """``ws_max_size``: the longest WebSocket message the protocol reads (uvicorn's; close 1009)."""
    # log_config=None: uvicorn's loggers go through the process's own handler (fluxrun.logs),
    # so its lines, access lines included, are text or JSON like every other line.
    config = uvicorn.Config(app, host=host, port=port, log_config=None, log_level="info",
                            timeout_graceful_shutdown=int(REQUESTS_GRACE_SECONDS), ws_max_size=ws_max_size)
    GracefulServer(config, lifecycle, drain_seconds, on_drain, on_stop_now, drained).run()
