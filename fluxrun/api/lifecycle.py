"""Whether this API process takes new tasks, and whether it is ready for traffic.

``Lifecycle`` is the drain switch: the command line turns it on at the first SIGTERM
(cli.py's server); from then on Runs are refused with 503 and a Retry-After (so a load
balancer sends them to another API process) and ``/ready`` answers 503, while every other
request is still served: clients keep polling and downloading until the process exits.

``Readiness`` answers ``/ready``: the database answers a ping, the output storage can be
written, and the process is not draining. The storage check writes a probe (an S3 PUT), so
its result is kept for ``STORAGE_CHECK_CACHE_SECONDS`` and only one check runs at a time:
a load balancer probing every second does not become a request a second to the bucket.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio

from fluxrun.errors import DatabaseUnavailable, ShuttingDown, StorageUnavailable
from fluxrun.storage.base import OutputStorage
from fluxrun.store.base import TaskStore

STORAGE_CHECK_CACHE_SECONDS = 5.0
CHECK_TIMEOUT_SECONDS = 3.0  # a check that takes longer than this fails (a hung database is down)
RETRY_AFTER_SECONDS = 5
OK = "ok"


class Lifecycle:
    def __init__(self) -> None:
        self._draining = threading.Event()
        self.draining_since: float | None = None

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def start_draining(self) -> bool:
        """Stop taking Runs; True the first time."""
        if self._draining.is_set():
            return False
        self.draining_since = time.time()
        self._draining.set()
        return True

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise ShuttingDown(
                "This server is shutting down and takes no new tasks; retry in a few seconds "
                "(a load balancer sends the retry to another server).",
                RETRY_AFTER_SECONDS,
            )


class Readiness:
    def __init__(self, store: TaskStore, storage: OutputStorage, lifecycle: Lifecycle) -> None:
        self._store = store
        self._storage = storage
        self._lifecycle = lifecycle
        self._storage_result: tuple[float, str] | None = None  # (checked at, OK or the problem)
        self._storage_lock = asyncio.Lock()

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the JSON body): each part's ``ok`` or its one-line problem, and which failed."""
        checks = {
            "process": "draining: shutting down, takes no new tasks" if self._lifecycle.draining else OK,
            "database": await _run_check(self._store.ping, "FLUXRUN_DATABASE_URL: the database"),
            "storage": await self._storage_status(),
        }
        failed = [part for part, status in checks.items() if status != OK]
        return not failed, {"ready": not failed, "failed": failed, "checks": checks}

    async def _storage_status(self) -> str:
        async with self._storage_lock:  # one check at a time; the others wait for its result
            cached = self._storage_result
            if cached is not None and time.monotonic() - cached[0] < STORAGE_CHECK_CACHE_SECONDS:
                return cached[1]
            status = await _run_check(self._storage.check, "the output storage")
            self._storage_result = (time.monotonic(), status)
            return status


async def _run_check(check: Any, what: str) -> str:
    """OK, or one line saying what failed; a check that hangs fails after CHECK_TIMEOUT_SECONDS
    (its thread is abandoned, not waited for)."""
    try:
        with anyio.fail_after(CHECK_TIMEOUT_SECONDS):
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        return f"{what} did not answer within {CHECK_TIMEOUT_SECONDS:g} s"
    except Exception as exc:
        return _one_line(exc, what)
    return OK


def _one_line(exc: Exception, what: str) -> str:
    if isinstance(exc, StorageUnavailable):  # already one line naming the setting and the cause
        return str(exc)
    if isinstance(exc, DatabaseUnavailable):  # its message is the clients'; the operator wants the cause
        return f"{what} cannot be reached ({exc.cause[:300]})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"{what} cannot be reached ({detail[:300]})"
