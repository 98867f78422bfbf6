"""The playground (fluxrun/web): a page at ``/`` to try every tool, and its login link.

- ``GET /``: the page; ``GET /playground/{name}``: its scripts, style sheet and icon. Plain
  files, no build step, nothing from another site. Only the files of fluxrun/web are served,
  by name; ``/v1``, ``/files``, ``/health``, ``/ready`` and ``/metrics`` are untouched, and an
  unknown path still gets the API's JSON 404.
- ``POST /playground/login`` ``{"code": "..."}``: trades a one-time code of a login link
  (fluxrun/logincode.py) for its project's API key and secret, once, before it expires.
  Codes live in the store, so whichever API process answers can redeem the code another
  process (``fluxrun serve``, ``fluxrun login-link``) issued.

Every answer carries a Content-Security-Policy that allows scripts, styles and connections
to this server only (the WebSocket included) and images from here or from where output
files live (an S3 endpoint, a public URL); no inline script or style.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from starlette.requests import Request

from fluxrun.api.body import read_body
from fluxrun.api.openapi import described
from fluxrun.api.state import AppState, app_state
from fluxrun.config import Settings
from fluxrun.errors import AuthError, ValidationError
from fluxrun.logincode import TTL_SECONDS, code_hash

router = APIRouter()

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
_MEDIA = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_MAX_CODE_CHARS = 200
LOGIN_PROBLEMS = {
    "unknown": "This login link is not valid: copy the whole link, or make a new one with `fluxrun login-link` "
               "on the server.",
    "used": "This login link was used already: each link works once. Make a new one with `fluxrun login-link` "
            "on the server.",
    "expired": f"This login link has expired (links last {TTL_SECONDS // 60} minutes). Make a new one with "
               "`fluxrun login-link` on the server.",
}
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
REVOKED = "The project of this login link has been revoked."


@lru_cache(maxsize=1)
def _assets() -> dict[str, Path]:
    """The files the page may load, by name: whatever fluxrun/web holds, nothing else."""
    return {path.name: path for path in WEB_DIR.iterdir() if path.is_file() and path.suffix in _MEDIA}


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def page(request: Request, state: AppState = Depends(app_state)) -> FileResponse:
    return _file("index.html", request, state.settings)


@router.api_route("/playground/{name}", methods=["GET", "HEAD"], include_in_schema=False)
def asset(name: str, request: Request, state: AppState = Depends(app_state)) -> FileResponse:
    if name == "index.html" or name not in _assets():
        raise HTTPException(status_code=404, detail="Not found.")
    return _file(name, request, state.settings)


LOGIN_BODY = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "the part of the login link after #login="}},
    "required": ["code"],
}


@router.post(
    "/playground/login",
    **described("The playground's login link: trade its one-time code for the project's key and secret",
                LOGIN_BODY, "LoginAnswer", (401,), signed=False),
)
def login(body: dict[str, Any] = Depends(read_body), state: AppState = Depends(app_state)) -> JSONResponse:
    code = str(body.get("code") or "").strip()
    if not code:
        raise ValidationError("code", "is required: the part of the login link after #login=")
    if len(code) > _MAX_CODE_CHARS:
        raise AuthError(LOGIN_PROBLEMS["unknown"])
    redemption = state.store.redeem_login_code(code_hash(code), time.time())
    if redemption.project_id is None:
        raise AuthError(LOGIN_PROBLEMS[redemption.problem or "unknown"])
    project = state.store.get_project(redemption.project_id)
    if project is None or not project.active:
        raise AuthError(REVOKED)
    answer = {"result": True, "errors": [], "api_key": project.api_key, "api_secret": project.api_secret,
              "mode": project.mode, "project": project.name}
    # The secret must not linger in a cache.
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


def _file(name: str, request: Request, settings: Settings) -> FileResponse:
    path = _assets()[name]
    return FileResponse(path, media_type=_MEDIA[path.suffix], headers=security_headers(request, settings))


def security_headers(request: Request, settings: Settings) -> dict[str, str]:
    # The WebSocket at /v1 is on this host: ws or wss (behind a TLS proxy this process may
    # see http). A Host header that is not a plain host[:port] (browsers never send one) gets
    # 'self' alone rather than text spliced into the policy.
    host = request.headers.get("host", "")
    socket = f" ws://{host} wss://{host}" if _HOST.match(host) else ""
    policy = "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src " + " ".join(["'self'", "data:", "blob:", *image_origins(settings)]),
        f"connect-src 'self'{socket}",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        # No build step, so no hashed names: the browser checks for a newer file each time (ETag).
        "Cache-Control": "no-cache",
    }


def image_origins(settings: Settings) -> list[str]:
    """Where output images may come from besides this server: the public URL (behind a
    proxy it may differ from the page's origin) and the S3 store of presigned or public URLs."""
    origins: list[str] = []
    if settings.public_url:
        origins.append(_origin(settings.public_url))
    if settings.s3_bucket:
        if settings.s3_url_mode == "public" and settings.s3_public_base_url:
            origins.append(_origin(settings.s3_public_base_url))
        elif settings.s3_endpoint_url:
            origin = _origin(settings.s3_endpoint_url)
            scheme, _, rest = origin.partition("://")
            origins += [origin, f"{scheme}://*.{rest}"]  # path or virtual-host addressing
        else:
            origins.append("https://*.amazonaws.com")
    return [origin for origin in dict.fromkeys(origins) if origin]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
