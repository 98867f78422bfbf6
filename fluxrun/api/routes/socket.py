"""The WebSocket at ``/v1`` (SPEC.md section 5).

A client registers with ``{"type": "task_info", "tasktoken": "<socketaccesstoken>"}``; the
token alone authorises, as on the hosted service. It first gets the task's current status
(at once the end, with the outputs, when the task already ended), then every event as it
happens: ``{"type": EVENT, "id": taskid, "tasktoken": ..., "message": ..., "result": true}``.
``message`` is null for a plain status change, the progress object for ``task_output``, an
error line for ``task_error`` and the outputs (name, contenttype, size, url) for
``task_postprocess_end``. One connection may watch many tasks; many may watch one.

Beyond the hosted service: ``"preview": true`` in ``task_info`` asks for ``task_preview``
messages while the task denoises, ``message`` = a small JPEG in base64 (at most 2 a second).

A token that names no task gets ``{"type": "task_info", "tasktoken": ..., "message": "...",
"result": false}`` and the connection is closed (code 1008); so is a message that is not a
JSON object. Messages of other types are ignored, as the hosted service does.

Limits: a message over FLUXRUN_WS_MAX_MESSAGE_BYTES gets such an answer and the close code
1009 (message too big); a registration beyond FLUXRUN_WS_MAX_TASKS tasks watched at once
(ended tasks do not count) gets a ``result: false`` answer naming the limit, and the
connection stays open, still watching its tasks. While the database cannot be reached, a
registration gets a refusal like an unknown token's, with the database's message and the close code 1013 (try
again later).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from fluxrun.api.events_hub import Connection, EventHub, parse_request
from fluxrun.api.state import AppState
from fluxrun.errors import DatabaseUnavailable

router = APIRouter()
log = logging.getLogger("fluxrun.api")

REGISTER = "task_info"
UNKNOWN_TOKEN = "There is no task with this tasktoken."
NOT_JSON = 'Messages must be JSON objects, e.g. {"type":"task_info","tasktoken":"<socketaccesstoken>"}.'
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013


@router.websocket("/v1")
async def task_socket(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.fluxrun
    hub: EventHub = websocket.app.state.fluxrun_hub
    await websocket.accept()
    connection = Connection(_http_base_url(state, websocket))
    sender = asyncio.create_task(_send_all(websocket, connection))
    refused = False
    try:
        while not refused:
            received = await websocket.receive()
            if received["type"] == "websocket.disconnect":
                break
            raw = received.get("text") or received.get("bytes")
            too_big = _too_big(raw, state.settings.ws_max_message_bytes)
            if too_big:
                _refuse(connection, None, too_big, MESSAGE_TOO_BIG)
                refused = True
                continue
            request = parse_request(raw)
            if request is None:
                _refuse(connection, None, NOT_JSON)
                refused = True
            elif request.get("type") == REGISTER:
                try:
                    refused = not await _register(state, hub, connection, request)
                except DatabaseUnavailable as exc:
                    _refuse(connection, request.get("tasktoken"), exc.message, TRY_AGAIN_LATER)
                    refused = True
    except WebSocketDisconnect:
        pass
    finally:
        hub.disconnect(connection)
        if refused:
            await sender  # the error message goes out, then the close
        else:
            sender.cancel()


async def _register(state: AppState, hub: EventHub, connection: Connection, request: dict[str, Any]) -> bool:
    """Watch the task the request names; False when the connection must close."""
    token = request.get("tasktoken")
    limit = state.settings.ws_max_tasks
    if limit and not any(watch.task.token == token for watch in connection.watches.values()):
        hub.forget_ended(connection)
        if len(connection.watches) >= limit:  # checked before any database read
            connection.send({"type": REGISTER, "tasktoken": token if isinstance(token, str) else None,
                             "result": False, "message": _too_many_tasks(limit)})
            return True
    task = await run_in_threadpool(state.store.task_by_token, token) if isinstance(token, str) else None
    if task is None:
        _refuse(connection, token, UNKNOWN_TOKEN)
        return False
    previews = request.get("preview") in (True, "true", "1", 1)
    # Subscribe first, then read: an event in between is offered twice, never lost.
    watch = hub.watch(connection, task, previews)
    current = await run_in_threadpool(state.store.get_task, task.project_id, task_id=task.id)
    if current is not None:
        watch.offer_snapshot(current)
        if previews and not current.status.terminal:
            await run_in_threadpool(hub.request_previews, current)
    return True


def _refuse(connection: Connection, token: Any, reason: str, code: int = POLICY_VIOLATION) -> None:
    connection.send({"type": REGISTER, "tasktoken": token if isinstance(token, str) else None,
                     "message": reason, "result": False})
    connection.close(code, reason[:120])


def _too_big(raw: str | bytes | None, limit: int) -> str:
    """Why this message is over the size limit (0: none), or "" when it is not."""
    size = len(raw.encode() if isinstance(raw, str) else raw or b"")
    if not limit or size <= limit:
        return ""
    return f"Messages must be at most {limit} bytes (got {size})."


def _too_many_tasks(limit: int) -> str:
    return (f"This connection already watches {limit} tasks that have not ended, the most one connection may "
            f"watch; it goes on watching them. Register this task once one of them has ended, or on another "
            f"connection.")


async def _send_all(websocket: WebSocket, connection: Connection) -> None:
    try:
        while True:
            item = await connection.queue.get()
            if isinstance(item, tuple) and item[0] is Connection.CLOSE:
                await websocket.close(code=item[1], reason=item[2])
                return
            await websocket.send_text(json.dumps(item, separators=(",", ":")))
    except Exception as exc:  # the client went away; the receiving side cleans up
        log.debug("WebSocket send ended: %s", exc)


def _http_base_url(state: AppState, websocket: WebSocket) -> str:
    """Output URLs are http(s) even though the socket is ws(s), as in Task/Detail."""
    base = state.base_url(websocket)
    if base.startswith("ws"):
        base = "http" + base[2:]
    return base
