"""Settings: ``FLUXRUN_*`` environment variables, overridden by command-line flags.

Built once by the command line and passed down; nothing reads the environment at import
time. Worker processes started by ``serve`` receive the same settings through
``to_env()``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ModelsMode = Literal["auto", "tiny", "real"]
_LORA_ENV = re.compile(r"^FLUXRUN_LORA_([A-Z0-9_]+)$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXRUN_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="SQLite file, local outputs, tiny models")
    database_url: str | None = Field(None, description="default: sqlite file in data_dir")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(None, description="base URL clients reach; default http://host:port")
    workers: int = Field(1, ge=0, description="worker processes started by serve")
    models: ModelsMode = "auto"
    lease_seconds: float = Field(30.0, gt=0, description="a worker that stops heartbeating loses its task after this")
    max_attempts: int = Field(3, ge=1, description="tries before a task whose worker keeps dying fails")
    nonce_window_seconds: float = Field(300.0, gt=0)
    idle_poll_seconds: float = Field(0.5, gt=0, description="how often an idle worker looks for work")
    reaper_seconds: float = Field(2.0, gt=0, description="how often the API re-queues expired leases")
    flux1_base: str = "black-forest-labs/FLUX.1-dev"
    flux2_model: str = Field(
        "dev",
        description="FLUX.2 model of the local pipeline: dev | klein-4b | klein-9b | klein-base-4b | klein-base-9b, "
        "a hub repo id or a local folder",
    )
    cpu_offload: bool = False
    # FLUXRUN_LORA_<NAME>=hub-repo-or-path, one per adapter; collected by lora_sources().

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres(cls, value: str | None) -> str | None:
        # Users paste libpq URLs; SQLAlchemy needs the psycopg (v3) driver named.
        if value and value.startswith(("postgres://", "postgresql://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value or None

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fluxrun.db').resolve()}"

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "credentials.json"

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3

    def lora_sources(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """Adapter name -> source, from FLUXRUN_LORA_<NAME> (FLAT_PIXEL_ART -> flat-pixel-art)."""
        found: dict[str, str] = {}
        for key, value in (os.environ if environ is None else environ).items():
            match = _LORA_ENV.match(key)
            if match and value:
                found[match.group(1).lower().replace("_", "-")] = value
        return found

    def to_env(self) -> dict[str, str]:
        """These settings as FLUXRUN_* variables, for processes this one starts."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            env[f"FLUXRUN_{name.upper()}"] = _env_text(value)
        env["FLUXRUN_DATA_DIR"] = str(self.data_dir.resolve())
        return env


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
