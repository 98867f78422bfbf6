"""create_app: the FastAPI application, its error handlers, its lease reaper and the event
hub behind its WebSocket."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from fluxrun import __version__
from fluxrun.api.events_hub import EventHub
from fluxrun.api.lifecycle import Lifecycle, Readiness
from fluxrun.api.metrics import Metrics, RequestMetrics
from fluxrun.api import openapi
from fluxrun.api.ratelimit import RateLimiter, limit_rate
from fluxrun.api.routes import files, health, playground, run, socket, task, tool
from fluxrun.api.state import AppState
from fluxrun.config import Settings
from fluxrun.errors import DatabaseUnavailable, FluxrunError
from fluxrun.logs import request_scope
from fluxrun.storage.base import OutputStorage
from fluxrun.store.base import TaskStore

log = logging.getLogger("fluxrun.api")

FORGET_WORKERS_AFTER_SECONDS = 86400.0  # registry rows of workers not seen for a day are deleted


def create_app(
    settings: Settings,
    store: TaskStore,
    storage: OutputStorage,
    *,
    reaper: bool = True,
    lifecycle: Lifecycle | None = None,
) -> FastAPI:
    """The app; ``lifecycle`` is the drain switch the server flips at SIGTERM (cli.py)."""
    state = AppState(settings=settings, store=store, storage=storage, lifecycle=lifecycle or Lifecycle())
    hub = EventHub(store, storage)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(hub.start, asyncio.get_running_loop())
        job = asyncio.create_task(_reap_forever(state)) if reaper else None
        try:
            yield
        finally:
            if job:
                job.cancel()
            await run_in_threadpool(hub.stop)

    # limit_rate runs before every route's own dependencies (authentication included).
    app = FastAPI(title="fluxrun", version=__version__, lifespan=lifespan, dependencies=[Depends(limit_rate)])
    app.state.fluxrun = state
    app.state.fluxrun_rate_limiter = RateLimiter.from_settings(settings)
    app.state.fluxrun_hub = hub
    app.state.fluxrun_readiness = Readiness(store, storage, state.lifecycle)
    app.state.fluxrun_metrics = metrics = Metrics(store)
    for module in (run, task, tool, files, socket, health, playground):
        app.include_router(module.router)
    openapi.install(app)  # /openapi.json describes the real bodies, auth headers and answers
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(LogScope)  # outermost: the access line of a request is logged inside its scope
    app.add_exception_handler(FluxrunError, _fluxrun_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _reap_forever(state: AppState) -> None:
    """Re-queue tasks whose worker died, even when no worker is alive to notice."""
    while True:
        try:
            now = time.time()
            # After an outage, the workers get a lease's length to renew their leases first.
            expired = await run_in_threadpool(state.store.expire_leases, now, state.settings.max_attempts,
                                              state.settings.lease_seconds)
            for item in expired:
                log.warning("task %s: attempt %s lost its worker; %s", item.task_id, item.attempt,
                            "queued again" if item.requeued else "attempt limit reached, failed",
                            extra={"task_id": item.task_id})
            await run_in_threadpool(state.store.forget_old_nonces, now)
            await run_in_threadpool(state.store.forget_workers, now - FORGET_WORKERS_AFTER_SECONDS)
        except DatabaseUnavailable:  # the store logged it; keep trying
            pass
        except Exception:
            log.exception("lease reaper")
        await asyncio.sleep(state.settings.reaper_seconds)


class LogScope:
    """ASGI middleware: each request gets its own log scope, which a route tags with the task
    it handles (fluxrun.logs.tag_task), so its lines and its access line carry the task id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with request_scope():
            await self.app(scope, receive, send)


async def _fluxrun_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FluxrunError)
    # The error's own headers (Retry-After on a 429) go with it; the body is SPEC.md section 7's.
    return JSONResponse(exc.to_wire(), status_code=exc.http_status, headers=exc.headers or None)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "Not found."
    code = 1 if exc.status_code in (404, 405) else 0
    return JSONResponse(
        {"result": False, "errors": [{"code": code, "message": message}]},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _request_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
    message = f"{field or 'request'}: {first.get('msg', 'is invalid')}"
    return JSONResponse({"result": False, "errors": [{"code": 0, "message": message}]}, status_code=200)


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        {"result": False, "errors": [{"code": 0, "message": "Internal server error; the server log has details."}]},
        status_code=500,
    )
