"""The first project of a fresh data directory, and the file that hands it to clients."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

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
