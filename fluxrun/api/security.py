"""The authentication dependency (SPEC.md section 2): signature or apikey-only projects.

Every refusal is HTTP 401. What a refusal may reveal, and what it must not (SECURITY.md):
- a wrong key, a revoked key and a wrong signature all get the same answer ("Project
  authorization is not valid."), after the same work: one key lookup, one HMAC, one
  constant-time comparison, so the time taken tells nothing about how much of a signature
  was right;
- the nonce is looked at (window, then the replay store) only once the signature is right,
  so only the holder of the secret learns why a nonce was refused;
- each of x-api-key, x-nonce and x-signature may come once: two values are ambiguous (a
  proxy may read the other one), so the request is refused rather than one picked.
"""

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
KEY_REQUIRED = "x-api-key header is required."
AUTH_HEADERS = ("x-api-key", "x-nonce", "x-signature")
# Checked against when the key is unknown or revoked, so such a key costs the same HMAC work
# as a known one (the lengths of a real key and secret: fluxrun.store.sql).
_DUMMY_KEY = "0" * 32
_DUMMY_SECRET = "0" * 48


def authenticate(request: Request, state: AppState = Depends(app_state)) -> Project:
    api_key, nonce, signature = (_single_header(request, name) for name in AUTH_HEADERS)
    if not api_key:
        raise SignInRequiredError(KEY_REQUIRED)
    project = state.store.project_by_key(api_key)
    if project is None or not project.active:
        auth.verify(_DUMMY_KEY, _DUMMY_SECRET, nonce, signature)
        raise AuthError(INVALID)
    if project.mode == "apikey":
        return project
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


def _single_header(request: Request, name: str) -> str:
    """The header's value, stripped ("" when absent); refused when it came more than once."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise AuthError(
            f"{name} was sent {len(values)} times: send each of {', '.join(AUTH_HEADERS)} at most once."
        )
    return values[0].strip() if values else ""
