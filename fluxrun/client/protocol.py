"""The wire protocol without I/O: request bodies, headers, and answers -> models or errors.

The sync Client sends what this module builds and hands back what it parses; an async
client would share all of it. Nothing here knows httpx or websockets.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import ValidationError

from fluxrun import __version__
from fluxrun.auth import signature_headers
from fluxrun.client.errors import (
    APIError,
    AuthenticationError,
    ConcurrencyLimited,
    InputError,
    InsufficientBalance,
    NotFound,
    RateLimited,
    TransportError,
)
from fluxrun.client.models import STATUSES, Event, Output, Progress, TaskInfo, ToolInfo, decode_json_text

RUN = "Run/{tool}"
TASK_DETAIL = "Task/Detail"
TASK_LIST = "Task/List"
TASK_CANCEL = "Task/Cancel"
TASK_KILL = "Task/Kill"
TOOL_LIST = "Tool/List"
TOOL_DETAIL = "Tool/Detail"
USER_AGENT = f"fluxrun-client/{__version__}"

# "width: must be a multiple of 16": an input's name, then its rule (fluxrun.errors.ValidationError).
_FIELD_RULE = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_.\[\]-]*): (?P<rule>.+)$", re.S)
_TOOL_NAME = re.compile(r"^[^/\s]+/[^/\s]+$")
# HTTP statuses that mean "not now, come back": the queue is full (429), the server drains (503).
_COME_BACK_LATER = (429, 503)


class Nonces:
    """Strictly increasing unix-millisecond nonces, safe across threads.

    The server refuses a nonce it has seen with the same key, and two requests within one
    millisecond would share ``time.time_ns() // 1e6``: the next nonce is the clock's or one
    more than the last, whichever is larger. One source serves every Client of the process,
    so two clients of the same key never collide either. The values stay unix milliseconds
    (the server checks them against its clock and can forget them after the window).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> str:
        with self._lock:
            self._last = max(time.time_ns() // 1_000_000, self._last + 1)
            return str(self._last)


PROCESS_NONCES = Nonces()


def request_headers(api_key: str, api_secret: str | None, nonce: str | None) -> dict[str, str]:
    """The hosted service's headers: x-api-key, plus x-nonce and x-signature when signing."""
    return {
        **signature_headers(api_key, api_secret, nonce),
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }


def run_path(tool: str) -> str:
    if not isinstance(tool, str) or not _TOOL_NAME.match(tool.strip()):
        raise InputError("tool", f"must be 'owner/project', e.g. desertPixel/Flat-Pixel-Art-FLUX (got {tool!r})",
                         status_code=None)
    return RUN.format(tool=tool.strip())


def run_body(inputs: Mapping[str, Any], callback_url: str | None) -> dict[str, Any]:
    """The inputs as JSON; None means "not given" (the tool's default applies)."""
    body = {name: value for name, value in inputs.items() if value is not None}
    if callback_url:
        body["callbackUrl"] = callback_url
    return body


def tool_body(tool: str) -> dict[str, str]:
    if not isinstance(tool, str) or not _TOOL_NAME.match(tool.strip()):
        raise InputError("tool", f"must be 'owner/project' (got {tool!r})", status_code=None)
    owner, project = tool.strip().split("/")
    return {"slugowner": owner, "slugproject": project}


def task_list_body(start: int, limit: int, tool: str | None) -> dict[str, str]:
    body = {"start": str(start), "limit": str(limit), "sort": "id", "order": "DESC"}
    if tool:
        body["modelName"] = tool
    return body


def tool_list_body(start: int, limit: int, search: str | None) -> dict[str, Any]:
    return {"start": str(start), "limit": str(limit), "search": search or "", "categories": []}


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date; None when absent or unreadable."""
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def parse_answer(status_code: int, headers: Mapping[str, str], content: bytes, what: str) -> dict[str, Any]:
    """The answer's JSON object when ``result`` is true; otherwise the error it stands for.

    ``what`` names the request in messages (``POST http://host/v1/Task/Detail``).
    """
    answer = _json_object(content)
    first = _first_error(answer) if answer is not None else None
    message = first[1] if first else _snippet(content)
    code = first[0] if first else 0
    if status_code == 401:
        raise AuthenticationError(message or "authentication failed", code or 99, status_code)
    if status_code in _COME_BACK_LATER:
        raise RateLimited(message or f"HTTP {status_code}", retry_after(headers), code, status_code)
    if answer is None:
        raise TransportError(f"{what}: HTTP {status_code} with a body that is not a JSON object: {_snippet(content)!r}")
    if answer.get("result") is True and 200 <= status_code < 300:
        return answer
    if first is None:
        raise TransportError(f"{what}: HTTP {status_code} without result:true or an error: {_snippet(content)!r}")
    raise error_for(code, message, status_code)


def error_for(code: int, message: str, status_code: int | None) -> APIError:
    """The tree's error for one ``{code, message}`` of the wire (SPEC.md section 7)."""
    if code in (98, 99):
        return AuthenticationError(message, code, status_code)
    if code == 1:
        return NotFound(message, code, status_code)
    if code == 96:
        return ConcurrencyLimited(message, code, status_code)
    if code == 97:
        return InsufficientBalance(message, code, status_code)
    named = _FIELD_RULE.match(message)
    if code == 0 and named:
        return InputError(named["field"], named["rule"], code, status_code)
    return APIError(message, code, status_code)


def tasks_from(answer: dict[str, Any], what: str) -> list[TaskInfo]:
    items = answer.get("tasklist")
    if not isinstance(items, list):
        raise TransportError(f"{what}: the answer has no tasklist")
    return [_model(TaskInfo, item, what) for item in items]


def one_task(answer: dict[str, Any], what: str) -> TaskInfo:
    tasks = tasks_from(answer, what)
    if not tasks:
        raise NotFound("There is no task yet.", 1, 200)
    return tasks[0]


def tools_from(answer: dict[str, Any], what: str) -> list[ToolInfo]:
    items = answer.get("tool")
    if not isinstance(items, list):
        raise TransportError(f"{what}: the answer has no tool list")
    return [_model(ToolInfo, item, what) for item in items]


def total_from(answer: dict[str, Any]) -> int | None:
    try:
        return int(str(answer.get("total")))
    except ValueError:
        return None


def run_answer(answer: dict[str, Any], what: str) -> tuple[str, str | None]:
    """(taskid, socketaccesstoken) of a Run answer."""
    taskid = answer.get("taskid")
    if taskid in (None, ""):
        raise TransportError(f"{what}: the answer has no taskid")
    token = answer.get("socketaccesstoken")
    return str(taskid), str(token) if token else None


# --- the WebSocket (SPEC.md section 5) ---

def register_message(token: str, previews: bool = False) -> str:
    message: dict[str, Any] = {"type": "task_info", "tasktoken": token}
    if previews:
        message["preview"] = True  # fluxrun's addition: task_preview events (JPEG thumbnails)
    return json.dumps(message, separators=(",", ":"))


class SocketRefused(Exception):
    """The socket answered result:false to the registration (an unknown token)."""


def parse_event(text: str | bytes) -> Event | None:
    """One socket message as an Event; None for what is not one (not JSON, other types).

    Raises SocketRefused for the server's refusal of the registration.
    """
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        return None
    kind = raw["type"]
    if raw.get("result") is False:
        raise SocketRefused(str(raw.get("message") or "the socket refused the registration"))
    if kind == "task_info":
        return None
    message = decode_json_text(raw.get("message"))
    progress = None
    if kind == "task_output" and isinstance(message, dict) and "stepTotal" in message:
        try:
            progress = Progress.model_validate(message)
        except ValidationError:
            progress = None
    preview = None
    if kind == "task_preview" and isinstance(message, str):
        try:
            preview = base64.b64decode(message, validate=True)
        except (binascii.Error, ValueError):
            preview = None
    return Event(
        type=kind,
        status=kind if kind in STATUSES else None,
        task_id=str(raw.get("id") or ""),
        progress=progress,
        preview=preview,
        message=message,
        raw=raw,
    )


def status_event(task: TaskInfo) -> Event:
    """A status change noticed by polling Task/Detail."""
    return Event(type="task_status", status=task.status, task_id=task.id, raw=task.model_dump(by_alias=True))


def outputs_of(event: Event) -> list[Output]:
    """The outputs a task_postprocess_end event carries (name, contenttype, size, url)."""
    if not isinstance(event.message, list):
        return []
    return [Output.model_validate(item) for item in event.message if isinstance(item, dict)]


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        loaded = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _first_error(answer: dict[str, Any]) -> tuple[int, str] | None:
    errors = answer.get("errors")
    if not isinstance(errors, list) or not errors:
        return None
    first = errors[0]
    if isinstance(first, dict):
        try:
            code = int(first.get("code") or 0)
        except (TypeError, ValueError):
            code = 0
        return code, str(first.get("message") or "")
    return 0, str(first)


def _snippet(content: bytes, limit: int = 200) -> str:
    text = content.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model(cls: Any, item: Any, what: str) -> Any:
    try:
        return cls.model_validate(item)
    except ValidationError as exc:
        raise TransportError(f"{what}: an answer of an unexpected shape: {exc}") from None
