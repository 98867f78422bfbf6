"""POST /v1/Run/{owner}/{project}: validate against the tool's spec, then queue."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends

from fluxrun.api.body import read_body
from fluxrun.api.security import authenticate
from fluxrun.api.state import AppState, app_state
from fluxrun.store.base import Project
from fluxrun.tools.catalog import find_tool

router = APIRouter()


@router.post("/v1/Run/{owner}/{project}")
def run(
    owner: str,
    project: str,
    caller: Project = Depends(authenticate),
    body: dict[str, Any] = Depends(read_body),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    tool = find_tool(owner, project)
    parameters = tool.validate(body)
    callback_url, note = callback_from(body.get("callbackUrl"))
    task = state.store.create_task(caller.id, tool.slug, parameters, tool.cps, callback_url, debugoutput=note)
    return {"errors": [], "taskid": str(task.id), "socketaccesstoken": task.token, "result": True}


def callback_from(raw: Any) -> tuple[str, str]:
    """(callback URL to keep, note for debugoutput).

    The seeds' Run lines carry a sentence in ``callbackUrl`` ("You can provide a callback
    URL; ...") and must work when pasted as they are, so text that is not an absolute
    http(s) URL is not an error: it is ignored, and the task's debugoutput says so.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "", ""
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme in ("http", "https") and parts.netloc and " " not in text:
        return text, ""
    shown = text if len(text) <= 60 else text[:57] + "..."
    return "", f"callbackUrl ignored: {shown!r} is not an absolute http(s) URL\n"
