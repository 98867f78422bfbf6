"""Task/Detail, Task/List, Task/Cancel, Task/Kill: only ever the caller's own tasks."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends
from starlette.requests import Request

from fluxrun.api.body import read_body
from fluxrun.api.openapi import TASK_REFERENCE, described, whole
from fluxrun.api.security import authenticate
from fluxrun.api.state import AppState, app_state
from fluxrun.api.waiting import add_waiting_lines
from fluxrun.wire import detail_wire, task_wire
from fluxrun.errors import FluxrunError, NotFoundError, ValidationError
from fluxrun.logs import tag_task
from fluxrun.store.base import Project, TaskRecord

router = APIRouter()

NO_TASK = "There is no task yet."
MAX_PAGE = 100
# A task id is a 32-bit integer column (PostgreSQL's INTEGER): a larger id names no task (and the
# query would overflow). An offset may be up to a signed 64-bit value (SQLite's largest integer).
MAX_TASK_ID = 2**31 - 1
MAX_OFFSET = 2**63 - 1
# ASCII digits: str.isdigit() also takes "²", which int() refuses.
_WHOLE = re.compile(r"-?[0-9]+")
LIST_BODY = {
    "type": "object",
    "properties": {
        "start": {**whole(0), "default": 0},
        "limit": {**whole(1, MAX_PAGE), "default": 20},
        "sort": {"type": "string", "enum": ["id"], "default": "id"},
        "order": {"type": "string", "enum": ["DESC", "ASC"], "default": "DESC", "description": "any case"},
        "modelName": {"type": "string", "description": "only this tool's tasks (owner/project)"},
    },
}


@dataclass(frozen=True)
class TaskCall:
    """One authenticated call on the task endpoints: who asks, with what body."""

    request: Request
    caller: Project
    body: dict[str, Any]
    state: AppState

    def wire(self, tasks: list[TaskRecord]) -> list[dict[str, Any]]:
        """The tasks as the wire shows them, queued ones with their waiting line if any."""
        base_url = self.state.base_url(self.request)
        wires = [task_wire(task, self.state.storage, base_url) for task in tasks]
        add_waiting_lines(wires, tasks, self.state.store)
        return wires

    def find(self) -> TaskRecord:
        """The task named by taskid, tasktoken or socketaccesstoken (the seeds use all three)."""
        task_id = self.body.get("taskid")
        token = self.body.get("tasktoken") or self.body.get("socketaccesstoken")
        store = self.state.store
        if task_id not in (None, ""):
            text = str(task_id).strip()
            if not _WHOLE.fullmatch(text) or text.startswith("-"):
                raise ValidationError("taskid", "must be a task id (digits)")
            number = int(text)
            task = store.get_task(self.caller.id, task_id=number) if number <= MAX_TASK_ID else None
        elif token not in (None, ""):
            task = store.get_task(self.caller.id, token=str(token).strip())
        else:
            raise FluxrunError("taskid or socketaccesstoken is required")
        if task is None:
            raise NotFoundError(NO_TASK)
        tag_task(task.id)
        return task


def task_call(
    request: Request,
    caller: Project = Depends(authenticate),
    body: dict[str, Any] = Depends(read_body),
    state: AppState = Depends(app_state),
) -> TaskCall:
    return TaskCall(request, caller, body, state)


@router.post("/v1/Task/Detail", **described("One task of the caller's project", TASK_REFERENCE, "TaskAnswer"))
def detail(call: TaskCall = Depends(task_call)) -> dict[str, Any]:
    task = call.find()
    answer = detail_wire(task, call.state.storage, call.state.base_url(call.request))
    add_waiting_lines(answer["tasklist"], [task], call.state.store)
    return answer


@router.post("/v1/Task/List", **described("The caller's tasks, newest first by default", LIST_BODY, "TaskAnswer"))
def task_list(call: TaskCall = Depends(task_call)) -> dict[str, Any]:
    body = call.body
    start = _int_field(body, "start", 0, low=0, high=MAX_OFFSET)
    limit = _int_field(body, "limit", 20, low=1, high=MAX_PAGE)
    order = str(body.get("order") or "DESC").upper()
    if order not in ("ASC", "DESC"):
        raise ValidationError("order", "must be ASC or DESC")
    if str(body.get("sort") or "id") != "id":
        raise ValidationError("sort", "must be id")
    tool = str(body.get("modelName") or "").strip() or None
    total, tasks = call.state.store.list_tasks(
        call.caller.id, start=start, limit=limit, descending=order == "DESC", tool=tool
    )
    return {"total": str(total), "errors": [], "tasklist": call.wire(tasks), "result": True}


@router.post("/v1/Task/Cancel", **described("Cancel a task still queued", TASK_REFERENCE, "TaskChangeAnswer"))
def cancel(call: TaskCall = Depends(task_call)) -> dict[str, Any]:
    task = call.find()
    cancelled = call.state.store.cancel_queued(call.caller.id, task.id, time.time())
    if cancelled is None:
        raise FluxrunError("Task is not in a cancellable state.")
    return {"errors": [], "tasklist": call.wire([cancelled]), "result": True}


@router.post("/v1/Task/Kill", **described("Stop a queued or running task", TASK_REFERENCE, "TaskChangeAnswer"))
def kill(call: TaskCall = Depends(task_call)) -> dict[str, Any]:
    task = call.find()
    killed = call.state.store.kill(call.caller.id, task.id, time.time())
    if killed is None:
        raise FluxrunError(f"Task is not in a killable state: it has already ended ({task.status.value}).")
    return {"errors": [], "tasklist": call.wire([killed]), "result": True}


def _int_field(body: dict[str, Any], name: str, default: int, low: int, high: int | None = None) -> int:
    raw = body.get(name)
    if raw in (None, ""):
        return default
    text = str(raw).strip()
    if not _WHOLE.fullmatch(text):
        raise ValidationError(name, "must be an integer")
    value = int(text)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValidationError(name, f"must be {bound}")
    return value
