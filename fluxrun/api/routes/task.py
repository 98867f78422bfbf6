"""Task/Detail, Task/List, Task/Cancel, Task/Kill: only ever the caller's own tasks."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from starlette.requests import Request

from fluxrun.api.body import read_body
from fluxrun.api.security import authenticate
from fluxrun.api.state import AppState, app_state
from fluxrun.api.wire import task_wire
from fluxrun.errors import FluxrunError, NotFoundError, ValidationError
from fluxrun.store.base import Project, TaskRecord

router = APIRouter()

NO_TASK = "There is no task yet."
MAX_PAGE = 100


@router.post("/v1/Task/Detail")
def detail(
    request: Request,
    caller: Project = Depends(authenticate),
    body: dict[str, Any] = Depends(read_body),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    task = _find(state, caller, body)
    return {"total": "1", "errors": [], "tasklist": [task_wire(task, state.storage, state.base_url(request))], "result": True}


@router.post("/v1/Task/List")
def task_list(
    request: Request,
    caller: Project = Depends(authenticate),
    body: dict[str, Any] = Depends(read_body),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    start = _int_field(body, "start", 0, low=0)
    limit = _int_field(body, "limit", 20, low=1, high=MAX_PAGE)
    order = str(body.get("order") or "DESC").upper()
    if order not in ("ASC", "DESC"):
        raise ValidationError("order", "must be ASC or DESC")
    sort = str(body.get("sort") or "id")
    if sort != "id":
        raise ValidationError("sort", "must be id")
    tool = str(body.get("modelName") or "").strip() or None
    total, tasks = state.store.list_tasks(caller.id, start=start, limit=limit, descending=order == "DESC", tool=tool)
    base = state.base_url(request)
    return {
        "total": str(total),
        "errors": [],
        "tasklist": [task_wire(t, state.storage, base) for t in tasks],
        "result": True,
    }


@router.post("/v1/Task/Cancel")
def cancel(
    request: Request,
    caller: Project = Depends(authenticate),
    body: dict[str, Any] = Depends(read_body),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    task = _find(state, caller, body)
    cancelled = state.store.cancel_queued(caller.id, task.id, time.time())
    if cancelled is None:
        raise FluxrunError("Task is not in a cancellable state.")
    return {"errors": [], "tasklist": [task_wire(cancelled, state.storage, state.base_url(request))], "result": True}


@router.post("/v1/Task/Kill")
def kill(
    request: Request,
    caller: Project = Depends(authenticate),
    body: dict[str, Any] = Depends(read_body),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    task = _find(state, caller, body)
    killed = state.store.kill(caller.id, task.id, time.time())
    if killed is None:
        raise FluxrunError(f"Task is not in a killable state: it has already ended ({task.status.value}).")
    return {"errors": [], "tasklist": [task_wire(killed, state.storage, state.base_url(request))], "result": True}


def _find(state: AppState, caller: Project, body: dict[str, Any]) -> TaskRecord:
    """The task named by taskid, tasktoken or socketaccesstoken (the seeds use all three)."""
    task_id = body.get("taskid")
    token = body.get("tasktoken") or body.get("socketaccesstoken")
    if task_id not in (None, ""):
        text = str(task_id).strip()
        if not text.isdigit():
            raise ValidationError("taskid", "must be a task id (digits)")
        task = state.store.get_task(caller.id, task_id=int(text))
    elif token not in (None, ""):
        task = state.store.get_task(caller.id, token=str(token).strip())
    else:
        raise FluxrunError("taskid or socketaccesstoken is required")
    if task is None:
        raise NotFoundError(NO_TASK)
    return task


def _int_field(body: dict[str, Any], name: str, default: int, low: int, high: int | None = None) -> int:
    raw = body.get(name)
    if raw in (None, ""):
        return default
    text = str(raw).strip()
    if not text.lstrip("-").isdigit():
        raise ValidationError(name, "must be an integer")
    value = int(text)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValidationError(name, f"must be {bound}")
    return value
