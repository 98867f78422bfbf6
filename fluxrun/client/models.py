"""Typed views of the wire's shapes (SPEC.md sections 3, 5 and 8).

The wire sends every number as a string ("202472", "0.000585000000") and "" for a missing
number; these models turn the numbers a program computes with into numbers (sizes, steps,
percentages, min/max) and keep the rest as the server sent it. Unknown fields are kept
(``model_extra``), so a server newer than this client loses nothing.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidatorFunctionWrapHandler, model_validator

#: The statuses after which a task never changes again (SPEC.md section 3).
TERMINAL_STATUSES = frozenset({"task_postprocess_end", "task_cancel"})
#: Every task status, in the order a successful task walks them; the socket's events of
#: these types are status changes (task_end is the socket's own: generation done).
STATUSES = (
    "task_queue", "task_accept", "task_assign", "task_preprocess_start", "task_preprocess_end",
    "task_start", "task_output", "task_end", "task_postprocess_end", "task_cancel",
)


def _blank_to_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _blank_to_zero(value: Any) -> Any:
    return 0 if value is None or (isinstance(value, str) and not value.strip()) else value


def _to_text(value: Any) -> Any:
    return "" if value is None else str(value) if isinstance(value, (int, float)) else value


def _none_to_empty_list(value: Any) -> Any:
    return [] if value is None else value


def _none_to_empty_dict(value: Any) -> Any:
    return {} if value is None else value


def _to_bool(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


OptionalFloat = Annotated[float | None, BeforeValidator(_blank_to_none)]
Count = Annotated[int, BeforeValidator(_blank_to_zero)]
Text = Annotated[str, BeforeValidator(_to_text)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Output(_Wire):
    """One output file of a task: ``url`` is readable with no headers."""

    name: Text = ""
    contenttype: Text = ""
    size: Count = 0
    url: Text = ""
    id: Text = ""
    accesskey: Text = ""


class TaskInfo(_Wire):
    """One task as Task/Detail shows it (SPEC.md section 3); numbers and times stay strings,
    as on the wire, except the outputs' sizes."""

    id: Text
    uuid: Text = ""
    socketaccesstoken: Text = ""
    status: Text = ""
    parameters: Annotated[dict[str, Any], BeforeValidator(_none_to_empty_dict)] = Field(default_factory=dict)
    debugoutput: Text = ""
    debugerror: Text = ""
    pexit: Text = "0"
    elapsedseconds: Text = "0"
    totalcost: Text = "0"
    cps: Text = "0"
    modelslugowner: Text = ""
    modelslugproject: Text = ""
    callbackurl: Text = ""
    createtime: Text = "0"
    starttime: Text = "0"
    endtime: Text = "0"
    outputs: Annotated[list[Output], BeforeValidator(_none_to_empty_list)] = Field(default_factory=list)
    # The task exactly as the server sent it, for printing it back (``fluxrun task --json``)
    # without the numbers this model converts.
    _wire: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_wire(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> TaskInfo:
        info = handler(data)
        if isinstance(data, dict):
            info._wire = json.loads(json.dumps(data))  # a deep copy the caller cannot change
        return info

    @property
    def wire(self) -> dict[str, Any]:
        """The task as the server sent it (every number a string, as SPEC.md section 3)."""
        return self._wire or self.model_dump(mode="json", by_alias=True)

    @property
    def tool(self) -> str:
        """"owner/project" of the tool this task runs."""
        return f"{self.modelslugowner}/{self.modelslugproject}"

    @property
    def finished(self) -> bool:
        """Whether the task has ended (successfully, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def cancelled(self) -> bool:
        return self.status == "task_cancel"

    @property
    def succeeded(self) -> bool:
        """Ended with its images: task_postprocess_end and pexit "0"."""
        return self.status == "task_postprocess_end" and self.pexit.strip() in ("0", "")


class ToolOption(_Wire):
    """One choice of a select input: ``option.value`` or, as in the wire's JSON, ``option["value"]``."""

    label: Text = ""
    value: Any = None

    def __getitem__(self, key: str) -> Any:
        if key not in ("label", "value"):
            raise KeyError(key)
        return getattr(self, key)


class ToolInput(_Wire):
    """One input of a tool (an ITEM of SPEC.md section 8)."""

    id: Text
    type: Text = ""
    label: Text = ""
    description: Text = ""
    default: Any = None
    required: Annotated[bool, BeforeValidator(_to_bool)] = False
    options: list[ToolOption] = Field(default_factory=list)
    min: OptionalFloat = None
    max: OptionalFloat = None
    step: OptionalFloat = None


class ToolGroup(_Wire):
    title: Text = ""
    items: list[ToolInput] = Field(default_factory=list)


class ToolInfo(_Wire):
    """A tool as Tool/List and Tool/Detail show it (SPEC.md section 8)."""

    slugowner: Text
    slugproject: Text
    id: Text = ""
    title: Text = ""
    description: Text = ""
    cps: Text = "0"
    categories: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    parameters: list[ToolGroup] = Field(default_factory=list)

    @property
    def name(self) -> str:
        """"owner/project", as client.run() takes it."""
        return f"{self.slugowner}/{self.slugproject}"

    @property
    def inputs(self) -> list[ToolInput]:
        """Every input of every group, in order."""
        return [item for group in self.parameters for item in group.items]


class Progress(_Wire):
    """A task_output event's progressGenerate message, its strings as numbers."""

    step_current: Count = Field(0, alias="stepCurrent")
    step_total: Count = Field(0, alias="stepTotal")
    percentage: Annotated[float, BeforeValidator(_blank_to_zero)] = 0.0
    speed: OptionalFloat = None
    speed_type: Annotated[str | None, BeforeValidator(_blank_to_none)] = Field(None, alias="speedType")
    elapsed: Annotated[str | None, BeforeValidator(_blank_to_none)] = Field(None, alias="elapsedTime")
    remaining: Annotated[str | None, BeforeValidator(_blank_to_none)] = Field(None, alias="remainingTime")


class Event(BaseModel):
    """Something wait() saw happen to a task.

    ``type`` is the socket's event type (``task_start``, ``task_output``, ``task_error``,
    ``task_preview``...) or ``task_status`` for a status change noticed by polling.
    ``status`` is the task's status the event stands for (None for task_error, task_preview).
    ``progress`` comes with task_output events that carry it; ``preview`` (JPEG bytes) with
    task_preview events, sent only when wait(previews=True) asked for them.
    ``message`` is the event's message as sent (a log line for task_error, the outputs for
    task_postprocess_end); ``raw`` the whole message (or the polled task's wire form).
    """

    type: str
    status: str | None = None
    task_id: str = ""
    progress: Progress | None = None
    preview: bytes | None = None
    message: Any = None
    raw: dict[str, Any] = Field(default_factory=dict)


def decode_json_text(value: Any) -> Any:
    """A message that is JSON inside a string (some servers double-encode) as its value."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
