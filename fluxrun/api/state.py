"""What every route needs, built once by create_app and kept on ``app.state.fluxrun``."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection, Request

from fluxrun.api.lifecycle import Lifecycle
from fluxrun.config import Settings
from fluxrun.storage.base import OutputStorage
from fluxrun.store.base import TaskStore


@dataclass(frozen=True)
class AppState:
    settings: Settings
    store: TaskStore
    storage: OutputStorage
    lifecycle: Lifecycle = field(default_factory=Lifecycle)  # draining once shutdown begins

    def base_url(self, request: HTTPConnection) -> str:
        """Base of output URLs: the configured public URL, else what the client used."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")


def app_state(request: Request) -> AppState:
    return request.app.state.fluxrun
