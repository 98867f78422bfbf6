"""POST /v1/Run/{owner}/{project}: validate against the tool's spec, then queue."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends

from fluxrun.api.body import read_body
from fluxrun.api.openapi import described
from fluxrun.api.security import authenticate
from fluxrun.api.state import AppState, app_state
from fluxrun.api.task_limits import check_prompt, check_task
from fluxrun.errors import CallbackRefused, ValidationError
from fluxrun.logs import tag_task
from fluxrun.netguard import Allowlist, check_url
from fluxrun.store.base import Project
from fluxrun.tools.catalog import find_tool

router = APIRouter()

# "scheme://...": text that means to be a URL, as opposed to the seeds' sentence.
_LOOKS_LIKE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")


# The document also lists one Run path per tool, with that tool's inputs (fluxrun.api.openapi).
RUN_BODY = {
    "type": "object",
    "additionalProperties": True,
    "description": "the tool's inputs (Tool/Detail lists them) and an optional callbackUrl",
}


@router.post(
    "/v1/Run/{owner}/{project}",
    **described("Run a tool: validate its inputs and queue a task", RUN_BODY, "RunAnswer", (401, 429, 503)),
)
def run(
    owner: str,
    project: str,
    caller: Project = Depends(authenticate),
    body: dict[str, Any] = Depends(read_body),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    state.lifecycle.refuse_if_draining()
    tool = find_tool(owner, project)
    check_prompt(tool, body, state.settings)
    parameters = tool.validate(body)
    check_task(tool, parameters, state.settings)
    callback_url, note = callback_from(body.get("callbackUrl"), state.settings.callback_allowlist)
    # Over the project's concurrency limit: code 96 (HTTP 200, as the hosted service answers);
    # the queue full: HTTP 429 with Retry-After. Both raised by the store, atomically with the insert.
    task = state.store.create_task(
        caller.id, tool.slug, parameters, tool.cps, callback_url, debugoutput=note,
        concurrency_limit=state.settings.project_concurrency, queue_limit=state.settings.queue_limit,
    )
    tag_task(task.id)
    return {"errors": [], "taskid": str(task.id), "socketaccesstoken": task.token, "result": True}


def callback_from(raw: Any, allow: Allowlist) -> tuple[str, str]:
    """(callback URL to keep, note for debugoutput).

    The seeds' Run lines carry a sentence in ``callbackUrl`` ("You can provide a callback
    URL; ...") and must work when pasted as they are, so text that is not a URL is not an
    error: it is ignored, and the task's debugoutput says so. A URL the callback would be
    refused for without even a DNS lookup (another scheme than http(s), a loopback, private
    or metadata address in any spelling, a localhost name) is refused now, so the client
    learns it at once rather than from a callback that never comes.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "", ""
    text = str(raw).strip()
    if _LOOKS_LIKE_URL.match(text):
        try:
            check_url(text, allow)
        except CallbackRefused as exc:
            raise ValidationError("callbackUrl", str(exc)) from None
        return text, ""
    shown = text if len(text) <= 60 else text[:57] + "..."
    return "", f"callbackUrl ignored: {shown!r} is not an absolute http(s) URL\n"
