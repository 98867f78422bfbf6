"""Records -> the exact JSON shapes of SPEC.md sections 3 and 8.

Every number is a string, every time is unix seconds in a string ("0" until reached),
and every field the hosted service sends is present. Used by the API's routes and by the
worker's callback deliveries (a callback's body is what Task/Detail answers), so it sits
outside both.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from fluxrun.status import Status
from fluxrun.storage.base import OutputStorage
from fluxrun.store.base import OutputRecord, TaskRecord
from fluxrun.tools.catalog import TOOLS
from fluxrun.tools.spec import InputSpec, ToolSpec

_TOOLS_BY_SLUG = {tool.slug: tool for tool in TOOLS}
_TIME_FIELDS = (
    "createtime",
    "canceltime",
    "assigntime",
    "accepttime",
    "preprocessstarttime",
    "preprocessendtime",
    "postprocessstarttime",
    "postprocessendtime",
)


def time_text(value: float | None) -> str:
    return str(int(value)) if value else "0"


def number_text(value: Any) -> str:
    """3 -> "3", 3.0 -> "3", 3.5 -> "3.5"; text stays text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (int, Decimal)):
        return str(value)
    return "" if value is None else str(value)


def money_text(value: Decimal) -> str:
    return f"{value:.12f}"


def task_cost(task: TaskRecord) -> Decimal:
    """cps x elapsed seconds, for a success only: failures and cancellations cost nothing."""
    if task.status is Status.POSTPROCESS_END and task.pexit == 0 and task.elapsed:
        return task.cps * Decimal(f"{task.elapsed:.4f}")
    return Decimal(0)


def output_wire(task: TaskRecord, output: OutputRecord, storage: OutputStorage, base_url: str) -> dict[str, Any]:
    added = time_text(output.created_at)
    return {
        "id": output.id,
        "name": output.name,
        "contenttype": output.content_type,
        "parentid": task.uuid.replace("-", ""),
        "uuid": task.uuid,
        "size": str(output.size),
        "addedtime": added,
        "modifiedtime": added,
        "accesskey": output.accesskey,
        "foldercount": "0",
        "filecount": "0",
        "ispublic": 0,
        "expiretime": None,
        "url": storage.url(output.key or task.output_key, output.name, base_url),
    }


def task_wire(task: TaskRecord, storage: OutputStorage, base_url: str) -> dict[str, Any]:
    tool = _TOOLS_BY_SLUG.get(task.tool)
    owner, _, project = task.tool.partition("/")
    cost = task_cost(task)
    outputs = [output_wire(task, o, storage, base_url) for o in task.outputs]
    wire: dict[str, Any] = {
        "id": str(task.id),
        "uuid": task.uuid,
        "name": "",
        "socketaccesstoken": task.token,
        "parameters": {key: number_text(value) for key, value in task.parameters.items()},
        "debugoutput": task.debugoutput,
        "debugerror": task.debugerror,
        "starttime": time_text(task.starttime),
        "endtime": time_text(task.endtime),
        "elapsedseconds": f"{task.elapsed or 0:.4f}",
        "status": task.status.value,
        "cps": money_text(task.cps),
        "totalcost": money_text(cost) if cost else "0",
        "guestid": None,
        "projectid": str(task.project_id),
        "modelid": tool.id if tool else "0",
        "modelslugowner": owner,
        "modelslugproject": project,
        "description": "",
        "basemodelid": "0",
        "runtype": "model",
        "modelfolderid": "",
        "modelfileid": "",
        "callbackurl": task.callback_url,
        "marketplaceid": None,
        "pexit": str(task.pexit) if task.pexit is not None else "0",
        "categories": json.dumps(list(tool.categories) if tool else [], separators=(",", ":")),
        "outputs": outputs,
        "size": str(sum(o.size for o in task.outputs)),
    }
    for field in _TIME_FIELDS:
        wire[field] = time_text(getattr(task, field))
    return wire


def detail_wire(task: TaskRecord, storage: OutputStorage, base_url: str) -> dict[str, Any]:
    """Task/Detail's answer for one task; also the body of its callback (SPEC.md section 6)."""
    return {"total": "1", "errors": [], "tasklist": [task_wire(task, storage, base_url)], "result": True}


def json_text(content: Any) -> str:
    """JSON as the API's responses render it (Starlette's JSONResponse settings)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def input_wire(spec: InputSpec) -> dict[str, Any]:
    return {
        "id": spec.name,
        "type": spec.type,
        "label": spec.label,
        "description": spec.help,
        "default": spec.default,
        "required": spec.required,
        "options": [{"label": o.label, "value": o.value} for o in spec.options],
        "min": number_text(spec.min),
        "max": number_text(spec.max),
        "step": number_text(spec.step),
    }


def tool_wire(tool: ToolSpec) -> dict[str, Any]:
    return {
        "id": tool.id,
        "title": tool.title,
        "slugowner": tool.slugowner,
        "slugproject": tool.slugproject,
        "cleanslugowner": tool.slugowner.lower(),
        "cleanslugproject": tool.slugproject.lower(),
        "description": tool.description,
        "categories": list(tool.categories),
        "tags": list(tool.tags),
        "image": tool.image,
        "cps": money_text(tool.cps),
        "parameters": [{"title": "Inputs", "items": [input_wire(spec) for spec in tool.inputs]}],
    }


def socket_message(kind: str, task: TaskRecord, message: Any, result: bool = True) -> dict[str, Any]:
    """One WebSocket message (SPEC.md section 5): ``message`` is null for plain status
    changes, as on the hosted service."""
    return {"type": kind, "id": str(task.id), "tasktoken": task.token, "message": message, "result": result}


def outputs_message(task: TaskRecord, storage: OutputStorage, base_url: str) -> list[dict[str, str]]:
    """task_postprocess_end's message: each output's name, contenttype, size and url, the
    same values Task/Detail gives (a failed task has none)."""
    fields = ("name", "contenttype", "size", "url")
    return [{key: output_wire(task, o, storage, base_url)[key] for key in fields} for o in task.outputs]
