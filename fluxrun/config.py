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

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fluxrun.logs import LogFormat
from fluxrun.netguard import Allowlist

ModelsMode = Literal["auto", "tiny", "real"]
S3UrlMode = Literal["presigned", "public"]
S3Addressing = Literal["auto", "path", "virtual"]
# SigV4 presigned URLs live at most 7 days; S3 refuses a longer X-Amz-Expires.
S3_MAX_PRESIGN_SECONDS = 604800
_LORA_ENV = re.compile(r"^FLUXRUN_LORA_([A-Z0-9_]+)$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# The speed settings' choices; fluxrun.backends.speed holds the same lists (a test keeps them equal).
Switch = Literal["auto", "on", "off"]
CompileMode = Literal["auto", "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]
Quantize = Literal["auto", "fp8", "none"]
Attention = Literal["auto", "native", "cudnn", "efficient", "math", "flash", "flash3", "sage", "xformers"]
_ON = {"true", "1", "yes", "on"}
_OFF = {"false", "0", "no", "off"}
# Warm-up sizes: the tools' own bounds (multiples of 16, 64 to 4096 pixels a side).
_WARMUP_SIDE = (64, 4096)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXRUN_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="SQLite file, local outputs, tiny models")
    database_url: str | None = Field(None, description="default: sqlite file in data_dir")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(None, description="base URL clients reach; default http://host:port")
    workers: int = Field(1, ge=0, description="worker processes started by serve")
    worker_tools: str = Field(
        "", description="comma-separated tools (owner/project, any case) a worker serves and loads; empty: every tool"
    )
    # The queue's limits (README "Queueing"); 0 is no limit.
    project_concurrency: int = Field(
        16, ge=0, description="most tasks of one project queued or running at once; `fluxrun keys limit` sets one "
        "project's own; a Run over it gets error code 96"
    )
    queue_limit: int = Field(10_000, ge=0, description="most tasks queued in all; a Run beyond it gets HTTP 429")
    # Request limits (README "Limits"); 0 is no limit. The task limits' defaults are the tools'
    # own maxima (FLUX.1 tools: 4 samples of 2048x2048, 50 steps), so by default they refuse
    # nothing a tool page allows; an operator lowers them to fit a smaller GPU.
    max_body_bytes: int = Field(
        1_048_576, ge=0, description="largest request body in bytes; a bigger one gets HTTP 413 before it is read"
    )
    max_prompt_chars: int = Field(10_000, ge=0, description="longest prompt a Run may send, in characters")
    max_samples: int = Field(4, ge=0, description="most images (samples) one task may ask for")
    max_steps: int = Field(50, ge=0, description="most denoising steps one task may ask for")
    max_task_pixels: int = Field(
        16_777_216, ge=0, description="most pixels one task may ask for: width x height x samples"
    )
    rate_limit_per_second: float = Field(
        50.0, ge=0, description="requests a second each API key may send (each client address, without a key); "
        "over it HTTP 429 with Retry-After; counted by each API process on its own"
    )
    rate_limit_burst: int = Field(200, ge=1, description="requests a key may send at once before the rate applies")
    ws_max_message_bytes: int = Field(
        4096, ge=0, description="largest message a WebSocket client may send; a bigger one closes it (code 1009)"
    )
    ws_max_tasks: int = Field(
        100, ge=0, description="most tasks one WebSocket connection may watch at once (ended tasks do not count)"
    )
    models: ModelsMode = "auto"
    lease_seconds: float = Field(30.0, gt=0, description="a worker that stops heartbeating loses its task after this")
    max_attempts: int = Field(3, ge=1, description="tries before a task whose worker keeps dying fails")
    nonce_window_seconds: float = Field(300.0, gt=0)
    idle_poll_seconds: float = Field(
        5.0, gt=0, description="how often an idle worker looks for work besides the wake-ups of the event bus"
    )
    reaper_seconds: float = Field(2.0, gt=0, description="how often the API re-queues expired leases")
    overlap_postprocess: bool = Field(
        True, description="a worker encodes, uploads and records a task's images on a thread of its own while its "
        "GPU makes the next task's; false: one task at a time, start to end"
    )
    # Operations: the worker registry, shutdown, logs.
    worker_heartbeat_seconds: float = Field(
        5.0, gt=0, description="how often a worker refreshes its registry row; not seen for 3 of these: gone"
    )
    shutdown_grace_seconds: float = Field(
        60.0, ge=0, description="after a SIGTERM, how long a worker may finish its task before handing it back"
    )
    drain_seconds: float = Field(
        5.0, ge=0, description="after a SIGTERM, how long the API keeps answering (refusing Runs, /ready 503) "
        "so a load balancer stops sending to it"
    )
    log_format: LogFormat = Field("text", description="text | json: one JSON object per log line")
    flux1_base: str = "black-forest-labs/FLUX.1-dev"
    flux2_model: str = Field(
        "dev",
        description="FLUX.2 model of the local pipeline: dev | klein-4b | klein-9b | klein-base-4b | klein-base-9b, "
        "a hub repo id or a local folder",
    )
    cpu_offload: bool = False
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps: where a worker runs its models")
    # Speed on the GPU (fluxrun/backends/speed.py decides each "auto" for the worker's device).
    compile: Switch = Field(
        "auto", description="auto | on | off: torch.compile the transformer's repeated blocks (regional); "
        "auto: on for CUDA GPUs of compute capability >= 8.0; LoRAs then hotswap"
    )
    compile_mode: CompileMode = Field(
        "auto", description="auto | default | max-autotune-no-cudagraphs | max-autotune | reduce-overhead: "
        "torch.compile mode; auto: default"
    )
    quantize: Quantize = Field(
        "auto", description="auto | fp8 | none: fp8 weights and activations in the transformer (torchao); "
        "auto: fp8 on CUDA compute capability >= 8.9 (Ada, Hopper) with torchao installed, else bf16"
    )
    attention: Attention = Field(
        "auto", description="auto | native | cudnn | efficient | math | flash | flash3 | sage | xformers: attention "
        "kernel; auto: flash3, else cudnn on Hopper, flash on Ampere/Ada when installed, else native (torch SDPA)"
    )
    compile_vae: Switch = Field("auto", description="auto | on | off: torch.compile the VAE decoder; auto: as compile")
    warmup: Switch = Field(
        "auto", description="auto | on | off: a worker runs a short generation per tool and warm-up size before "
        "taking tasks; auto: on when the transformer is compiled"
    )
    warmup_sizes: str = Field(
        "1024x1024,1344x768", description="comma-separated WIDTHxHEIGHT sizes warmed up per tool (multiples of 16); "
        "empty: each tool's default size"
    )
    # FLUX.2 [flex] relayed to Black Forest Labs' API (SPEC.md section 10) when a key is set.
    bfl_api_key: SecretStr | None = Field(None, description="Black Forest Labs API key; never logged")
    bfl_base_url: str = Field("https://api.bfl.ai", description="the partner API (or api.eu.bfl.ai, api.us.bfl.ai)")
    bfl_deadline_seconds: float = Field(600.0, gt=0, description="longest a task's relay may take, retries included")
    bfl_poll_seconds: float = Field(0.5, gt=0, description="time between two polls of a partner task")
    bfl_request_timeout_seconds: float = Field(30.0, gt=0, description="longest one HTTP call to the partner may take")
    safety_model: str | None = Field(
        None, description="image-classification model (hub repo or local folder) that screens locally made images"
    )
    safety_unsafe_labels: str = Field(
        "nsfw,porn,hentai,sexy,unsafe,explicit",
        description="comma-separated labels of the safety model that count as unsafe (exact names, any case)",
    )
    safety_default_tolerance: int = Field(
        2, ge=0, le=6, description="safetyTolerance for tools that have no such input (the pixel-art tool)"
    )
    # Callbacks (SPEC.md section 6), delivered by the workers.
    callback_allow: str = Field("", description="hosts or networks (CIDR) callbacks may reach despite the SSRF rules")
    callback_timeout_seconds: float = Field(10.0, gt=0, description="per connect / send / read of one try")
    callback_max_attempts: int = Field(16, ge=1, description="tries before a callback is given up")
    callback_max_age_seconds: float = Field(86400.0, gt=0, description="no retry later than this after the task ended")
    callback_retry_base_seconds: float = Field(1.0, gt=0, description="wait before the second try; doubles each try")
    callback_retry_max_seconds: float = Field(3600.0, gt=0, description="longest wait between two tries")
    callback_poll_seconds: float = Field(1.0, gt=0, description="how often a worker looks for due callbacks")
    # Output files in an S3-compatible bucket when a bucket is set (else local files under
    # data_dir). Credentials come the AWS way (AWS_* env, profiles, instance roles), never from here.
    s3_bucket: str | None = Field(None, description="bucket for output files; setting it selects S3 storage")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO...); default AWS S3")
    s3_prefix: str = Field("outputs/", description="key prefix of output objects in the bucket")
    s3_region: str | None = Field(None, description="bucket region; default the AWS way (AWS_DEFAULT_REGION...)")
    s3_url_mode: S3UrlMode = Field("presigned", description="presigned: signed GET URLs; public: public base URL + key")
    s3_public_base_url: str | None = Field(
        None, validate_default=True, description="public mode: URL in front of the bucket (a CDN); url = base + key"
    )
    s3_presign_seconds: int = Field(S3_MAX_PRESIGN_SECONDS, ge=1, le=S3_MAX_PRESIGN_SECONDS,
                                    description="lifetime of presigned output URLs (at most 7 days)")
    s3_addressing: S3Addressing = Field("auto", description="auto | path | virtual bucket addressing (MinIO: path)")
    # FLUXRUN_LORA_<NAME>=hub-repo-or-path, one per adapter; collected by lora_sources().

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres(cls, value: str | None) -> str | None:
        # Users paste libpq URLs; SQLAlchemy needs the psycopg (v3) driver named.
        if value and value.startswith(("postgres://", "postgresql://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value or None

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        text = value.strip().lower()
        if not _DEVICE.match(text):
            raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda, cuda:N (a GPU index) or mps")
        return text
    @field_validator("compile", "compile_vae", "warmup", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # FLUXRUN_COMPILE=true/false (the older boolean form) still works: on/off.
        text = str(value).strip().lower() if not isinstance(value, bool) else ("true" if value else "false")
        return "on" if text in _ON else "off" if text in _OFF else text

    @field_validator("compile_mode", "quantize", "attention", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("warmup_sizes")
    @classmethod
    def _check_sizes(cls, value: str) -> str:
        _parse_sizes(value)  # a typo fails at start, not during the warm-up
        return value

    @property
    def warmup_size_list(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each warm-up size, in order; empty: each tool's default."""
        return _parse_sizes(self.warmup_sizes)

    @field_validator("bfl_api_key")
    @classmethod
    def _no_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        # FLUXRUN_BFL_API_KEY= (empty) means no relay, not a relay with an empty key.
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("bfl_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("safety_model")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None  # FLUXRUN_SAFETY_MODEL= (empty) means no classifier, as unset does

    @field_validator("callback_allow")
    @classmethod
    def _check_allow(cls, value: str) -> str:
        Allowlist.parse(value)  # a typo in a network fails at start, not at the first callback
        return value

    @property
    def callback_allowlist(self) -> Allowlist:
        return Allowlist.parse(self.callback_allow)

    @property
    def callback_claim_seconds(self) -> float:
        """How long one try holds its delivery: past it, another deliverer may try again."""
        return 3 * self.callback_timeout_seconds + 5

    @field_validator("s3_bucket", "s3_region")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        # FLUXRUN_S3_BUCKET= (empty) means local files, not a bucket with an empty name.
        return (value or "").strip() or None

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        text = (value or "").strip().rstrip("/")
        if not text:
            return None
        if not text.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:9000 for MinIO)")
        return text

    @field_validator("s3_prefix")
    @classmethod
    def _prefix_is_a_folder(cls, value: str) -> str:
        # "outputs", "/outputs/" and "outputs/" all mean the folder outputs/; "" the bucket's root.
        folder = value.strip().strip("/")
        return f"{folder}/" if folder else ""

    @field_validator("s3_public_base_url")
    @classmethod
    def _public_mode_has_a_base(cls, value: str | None, info: ValidationInfo) -> str | None:
        text = (value or "").strip().rstrip("/")
        if text and not text.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        if not text and info.data.get("s3_url_mode") == "public":
            raise ValueError("required when FLUXRUN_S3_URL_MODE=public: the URL in front of the bucket that clients "
                             "download from (e.g. https://cdn.example.com); or set FLUXRUN_S3_URL_MODE=presigned")
        return text or None

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
    def ws_frame_limit_bytes(self) -> int:
        """The WebSocket server's own cap on one message (uvicorn's ``ws_max_size``).

        Above FLUXRUN_WS_MAX_MESSAGE_BYTES, so a message a little over the setting reaches the
        handler, which says what the limit is; one far over it is cut by the protocol (close
        1009) before the server buffers it whole. 0 (no limit): uvicorn's own 16 MiB.
        """
        if self.ws_max_message_bytes == 0:
            return 16 * 1024 * 1024
        return max(4 * self.ws_max_message_bytes, 64 * 1024)

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

    @property
    def unsafe_labels(self) -> tuple[str, ...]:
        return tuple(label.strip() for label in self.safety_unsafe_labels.split(",") if label.strip())

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


def _parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes: list[tuple[int, int]] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        match = _SIZE.match(item)
        if not match:
            raise ValueError(f"{item!r} is not a size: write WIDTHxHEIGHT, e.g. 1024x1024,1344x768")
        width, height = int(match.group(1)), int(match.group(2))
        for side in (width, height):
            if side % 16 or not _WARMUP_SIDE[0] <= side <= _WARMUP_SIDE[1]:
                raise ValueError(f"{item}: each side must be a multiple of 16 from {_WARMUP_SIDE[0]} to "
                                 f"{_WARMUP_SIDE[1]}")
        if (width, height) not in sizes:
            sizes.append((width, height))
    return tuple(sizes)


def _env_text(value: Any) -> str:
    if isinstance(value, SecretStr):  # str() of a SecretStr is its mask
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
