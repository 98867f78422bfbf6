"""The first project of a fresh data directory, and the file that hands it to clients."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fluxrun import logincode
from fluxrun.store.base import Project, TaskStore


@dataclass(frozen=True)
class FirstRun:
    project: Project
    path: Path


def ensure_first_project(store: TaskStore, path: Path, base_url: str) -> FirstRun | None:
    """On a database with no project yet: create one (signature mode) and write its
    credentials to ``path`` (mode 0600). None when projects already exist."""
    project = store.create_first_project("default", "signature")
    if project is None:
        return None
    write_credentials(path, project, base_url)
    return FirstRun(project=project, path=path)


def write_credentials(path: Path, project: Project, base_url: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(
        {
            "api_key": project.api_key,
            "api_secret": project.api_secret,
            "webhook_secret": project.webhook_secret,  # verifies this project's callbacks
            "base_url": base_url,
        },
        indent=2,
    )
    # Created with 0600 from the start, so the secret is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class LoginLink:
    """A one-time link that logs the playground in as ``project`` (fluxrun/logincode.py)."""

    url: str
    project: Project
    expires_at: float


def issue_login_link(
    store: TaskStore, credentials_path: Path, base_url: str, now: float, api_key: str | None = None
) -> LoginLink | None:
    """A new one-time login link for the project of ``api_key``, or else the project of the
    credentials file (the one the operator was shown), or else the oldest active project.
    None when there is no active project; ValueError when ``api_key`` names none."""
    project = _login_project(store, credentials_path, api_key)
    if project is None:
        return None
    code = logincode.new_code()
    expires_at = now + logincode.TTL_SECONDS
    store.add_login_code(project.id, logincode.code_hash(code), now, expires_at)
    return LoginLink(logincode.login_url(base_url, code), project, expires_at)


def _login_project(store: TaskStore, credentials_path: Path, api_key: str | None) -> Project | None:
    if api_key is not None:
        chosen = store.project_by_key(api_key)
        if chosen is None or not chosen.active:
            raise ValueError(f"no active project has the API key {api_key!r}")
        return chosen
    try:
        written = json.loads(credentials_path.read_text())["api_key"]
    except (OSError, ValueError, KeyError, TypeError):
        written = None
    if isinstance(written, str) and (chosen := store.project_by_key(written)) is not None and chosen.active:
        return chosen
    return next((p for p in store.list_projects() if p.active), None)
