"""The authentication dependency (SPEC.md section 2): signature or apikey-only projects."""

from __future__ import annotations

import time

from fastapi import Depends
from starlette.requests import Request

from fluxrun import auth
from fluxrun.api.state import AppState, app_state
from fluxrun.errors import AuthError, SignInRequiredError
from fluxrun.store.base import Project

INVALID = "Project authorization is not valid."
SIGNATURE_REQUIRED = "Project requires signature authentication. x-signature and x-nonce headers are required."
# Checked against when the key is unknown, so an unknown key costs the same HMAC work.
_DUMMY_KEY = "0" * 32


def authenticate(request: Request, state: AppState = Depends(app_state)) -> Project:
    api_key = request.headers.get("x-api-key", "").strip()
    if not api_key:
        raise SignInRequiredError("x-api-key header is required.")
    project = state.store.project_by_key(api_key)
    if project is None or not project.active:
        auth.verify(_DUMMY_KEY, _DUMMY_KEY, "0", "0")
        raise AuthError(INVALID)
    if project.mode == "apikey":
        return project
    nonce = request.headers.get("x-nonce", "").strip()
    signature = request.headers.get("x-signature", "").strip()
    if not nonce or not signature:
        raise SignInRequiredError(SIGNATURE_REQUIRED)
    if not auth.verify(project.api_key, project.api_secret or "", nonce, signature):
        raise AuthError(INVALID)
    now = time.time()
    window = state.settings.nonce_window_seconds
    problem = auth.nonce_problem(nonce, now, window)
    if problem:
        raise AuthError(problem)
    at = auth.nonce_time(nonce)
    forget_after = at + 2 * window if at is not None else None
    if not state.store.use_nonce(project.id, nonce, now, forget_after):
        raise AuthError(
            "x-nonce was already used with this API key: send a new nonce with every request "
            "(for example the current unix time in milliseconds)."
        )
    return project
