"""Logging for every fluxrun process: text lines, or one JSON object a line (FLUXRUN_LOG_FORMAT).

Configured once per process by ``configure`` (the command line does it). A JSON line has
``time`` (ISO 8601, UTC), ``level``, ``logger``, ``process``, ``message``, ``task_id``
whenever the line is about a task, ``exc_info`` with a traceback, and ``http`` (client,
method, path, status) on the server's access lines.

The task a line is about comes from a context, not from each log call:
- ``task_scope(task_id)`` around a worker's processing of a task (and a callback's try);
- ``request_scope()`` around each API request (an ASGI middleware), which the route tags with
  ``tag_task(task_id)`` once it knows the task; the server's access line for the request is
  logged later in the same context and carries the id too.
A call may still pass ``extra={"task_id": ...}`` (the API's lease reaper does).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# The record attributes a JSON line keeps besides its extras, under their JSON names.
_JSON_FIELDS = {"levelname": "level", "name": "logger", "process": "process", "message": "message"}
# uvicorn's access lines carry these args: client, method, path with query, HTTP version, status.
_ACCESS_LOGGER = "uvicorn.access"


@dataclass
class _Scope:
    task_id: int | None = None


_scope: ContextVar[_Scope | None] = ContextVar("fluxrun_log_scope", default=None)


@contextmanager
def task_scope(task_id: int) -> Iterator[None]:
    """Lines logged inside (in this thread or task) are about ``task_id``."""
    token = _scope.set(_Scope(task_id))
    try:
        yield
    finally:
        _scope.reset(token)


@contextmanager
def request_scope() -> Iterator[None]:
    """A scope for one API request; ``tag_task`` fills in its task once the route knows it."""
    token = _scope.set(_Scope())
    try:
        yield
    finally:
        _scope.reset(token)


def tag_task(task_id: int) -> None:
    """The request (or task) in hand is about ``task_id``, from now to the end of its scope.

    The scope is an object shared with the copies of the context that a request's thread
    runs in, so the tag reaches lines the server logs after the route returned."""
    scope = _scope.get()
    if scope is not None:
        scope.task_id = task_id


class TaskContextFilter(logging.Filter):
    """Puts the current scope's task id on each record that has none of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_id", None) is None:
            scope = _scope.get()
            if scope is not None and scope.task_id is not None:
                record.task_id = scope.task_id
        return True


class AccessFieldsFilter(logging.Filter):
    """uvicorn's access lines as fields: ``http: {client, method, path, status}``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args
            record.http = {"client": client, "method": method, "path": path, "status": status}
        return True


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        " ".join(f"%({field})s" for field in _JSON_FIELDS),
        rename_fields={k: v for k, v in _JSON_FIELDS.items() if k != v},
        timestamp="time",
        # uvicorn adds a coloured copy of some messages; a JSON line wants only the message.
        reserved_attrs=[*_reserved_attrs(), "color_message"],
        json_ensure_ascii=False,
    )


def _reserved_attrs() -> list[str]:
    from pythonjsonlogger.core import RESERVED_ATTRS

    return list(RESERVED_ATTRS)


def configure(log_format: LogFormat = "text", level: int = logging.INFO) -> None:
    """The root logger writes to stderr in ``log_format``; libraries' loggers propagate to it.

    Idempotent: configuring again replaces the handler (tests, and ``serve`` then ``worker``
    in one process never happen, but a second call must not double every line)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(TaskContextFilter())
    handler.addFilter(AccessFieldsFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "fluxrun", False)]:
        root.removeHandler(old)
    handler.fluxrun = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    _configured["format"] = log_format
    # Python warnings (a library's DeprecationWarning...) become log lines, not raw stderr.
    logging.captureWarnings(True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-start INFO lines say nothing new
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request; callbacks log their own outcome
    # uvicorn logs through these when run with log_config=None: let them reach the root handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def is_json() -> bool:
    """Whether this process logs JSON (some start-up messages are then log lines, not prints)."""
    return _configured["format"] == "json"


_configured: dict[str, LogFormat] = {"format": "text"}
