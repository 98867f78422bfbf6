"""What a worker does before it takes tasks: wait for the database's schema, say what it
serves, load its models and its safety classifier, warm up.

Every problem an operator can fix is one log line that says what to do: a device that is
not there (fatal: the worker exits with errors.EXIT_CONFIG and is not restarted), a gated or
unreachable model, a LoRA file that does not exist, a LoRA tool without its LoRA.
The same messages reach each affected task's debugoutput or debugerror.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence

from fluxrun.backends import memory
from fluxrun.backends.base import Backend, RecordingJob, moderated_remotely
from fluxrun.backends.flux1 import BACKEND_NAME as FLUX1
from fluxrun.backends.lora import configured_sources, lora_setting, source_problem
from fluxrun import logs
from fluxrun.backends.registry import BackendCache
from fluxrun.backends.speed import SpeedChoice, SpeedRequest, choose_speed, device_facts
from fluxrun.config import Settings
from fluxrun.errors import BackendUnavailable, DatabaseUnavailable, ValidationError
from fluxrun.store.base import TaskStore
from fluxrun.tools.spec import ToolSpec
from fluxrun.worker.moderation import Moderation

log = logging.getLogger("fluxrun.worker")

WARMUP_STEPS = 2
SCHEMA_POLL_SECONDS = 2.0


def wait_for_schema(store: TaskStore, stop: threading.Event, poll_seconds: float = SCHEMA_POLL_SECONDS) -> bool:
    """Wait until the database's schema is one this release can use; False if ``stop`` was
    set first. A worker never migrates (``fluxrun db upgrade``, ``api`` and ``serve`` do) and
    processes may start in any order, so a schema behind this release is waited for, with one
    line saying what to run, instead of a traceback when the first query finds no table."""
    said: str | None = None
    while True:
        try:
            lag = store.schema_lag()
        except DatabaseUnavailable:  # the store said so in one line; the database may be starting too
            lag = "unreachable"
        if lag is None:
            if said is not None:
                log.info("database schema ready")
            return True
        if lag != said and lag != "unreachable":
            log.warning("waiting for the database: %s. Run `fluxrun db upgrade` (`fluxrun api` and `fluxrun serve` "
                        "upgrade it at start).", lag)
        said = lag
        if stop.wait(poll_seconds):
            return False


def lora_report(settings: Settings, mode: str, tools: tuple[ToolSpec, ...] | None = None) -> list[str]:
    """One line per LoRA that will not be used as configured (real models only: tiny mode
    builds a tiny LoRA for every adapter; and only when one of ``tools`` runs on FLUX.1)."""
    if mode != "real" or (tools is not None and all(tool.backend != FLUX1 for tool in tools)):
        return []
    lines: list[str] = []
    for name, source in sorted(configured_sources(FLUX1, settings.lora_sources()).items()):
        if source is None:
            lines.append(f"LoRA '{name}' is not configured: its tools run on the base model. Set {lora_setting(name)} "
                         "to its hub repo id or .safetensors file.")
        elif problem := source_problem(name, source):
            lines.append(problem)
    return lines


def load_all(backends: BackendCache, tools: tuple[ToolSpec, ...]) -> list[ToolSpec]:
    """Load every backend the tools need now, so the first task does not wait for it. One
    that cannot load is reported here; its tasks fail with the same message (and retry the load).
    Returns the tools whose backend loaded: what the worker registry says this worker serves."""
    loaded: set[str] = set()
    for name in sorted({tool.backend for tool in tools}):
        started = time.monotonic()
        try:
            backend = backends.get(name)
        except BackendUnavailable as exc:
            log.error("backend %s cannot be loaded: %s", name, exc)
            continue
        loaded.add(name)
        log.info("backend %s ready in %.1f s: %s", name, time.monotonic() - started, backend.description)
    return [tool for tool in tools if tool.backend in loaded]


def speed_request(settings: Settings) -> SpeedRequest:
    """The speed settings as the operator wrote them."""
    return SpeedRequest(compile=settings.compile, compile_mode=settings.compile_mode, quantize=settings.quantize,
                        attention=settings.attention, compile_vae=settings.compile_vae)


def choose_worker_speed(settings: Settings, device: str) -> SpeedChoice:
    """What this worker turns on for ``device``, logged as one line saying what and why.
    Raises BackendUnavailable for a setting this device cannot honour (fp8 on an A100)."""
    facts = device_facts(device)
    choice = choose_speed(speed_request(settings), facts)
    log.info(choice.report(facts))
    return choice


def wants_warmup(settings: Settings, choice: SpeedChoice) -> bool:
    """FLUXRUN_WARMUP: on, off, or auto (on when the transformer is compiled: the first task
    would otherwise wait for the compilation)."""
    return settings.warmup == "on" or (settings.warmup == "auto" and choice.compile)


def warm_up(backends: BackendCache, tools: tuple[ToolSpec, ...], sizes: tuple[tuple[int, int], ...] = ()) -> None:
    """A short generation per tool at each of ``sizes`` (none: the tool's default size), so
    the first user task is not the one that pays for lazy initialisation, kernel selection or
    compilation. Compiled graphs are per shape until a second size makes them shape-generic
    (fluxrun.backends.speed), so warming two sizes leaves no size to compile in a user's task.
    A size a tool does not accept is skipped with a line saying why."""
    for tool in tools:
        try:
            backend = backends.get(tool.backend)
        except BackendUnavailable:
            continue  # already reported by load_all
        for size in sizes or (None,):
            values: dict[str, object] = {"prompt": "warm-up", "steps": WARMUP_STEPS, "samples": 1}
            if size is not None:
                values.update(width=size[0], height=size[1])
            try:
                request = tool.to_request(tool.validate(values))
            except ValidationError as exc:
                log.info("warm-up of %s at %dx%d skipped: %s", tool.slug, *(size or (0, 0)), exc)
                continue
            started = time.monotonic()
            try:
                memory.generate(backend, request, RecordingJob())
            except Exception as exc:  # a warm-up failure is news, not a reason to stop serving
                log.error("warm-up of %s failed: %s: %s", tool.slug, type(exc).__name__, exc)
                continue
            log.info("warm-up of %s (%dx%d, %d steps): %.1f s", tool.slug, request.width, request.height,
                     request.steps, time.monotonic() - started)


UNMODERATED_LINE = (
    "fluxrun worker: local generation is UNMODERATED (no FLUXRUN_SAFETY_MODEL): images made here are stored "
    "without a safety check. Set FLUXRUN_SAFETY_MODEL to an image classifier "
    "(e.g. Falconsai/nsfw_image_detection) to screen them."
)


def say(text: str, level: int) -> None:
    """A message an operator must not miss: printed as it is (a banner) in text logs, one log
    line in JSON logs, where every line must be a JSON object."""
    if logs.is_json():
        log.log(level, text.strip())
    else:
        print(text, file=sys.stderr, flush=True)


def load_moderation(moderation: Moderation, backends: Sequence[Backend]) -> None:
    """Load the safety classifier now (not on the first task), or say that there is none;
    neither when every backend served here relays to an API that moderates itself (a
    partner-only worker has no image of its own to screen)."""
    if backends and all(moderated_remotely(backend) for backend in backends):
        return
    if not moderation.configured:
        say(UNMODERATED_LINE, logging.WARNING)
        return
    try:
        checker = moderation.checker()
    except BackendUnavailable as exc:  # every locally generated task fails with this message until it loads
        log.warning("safety classifier unavailable: %s Local tasks fail until it loads.", exc)
        return
    log.info("%s; default safetyTolerance %d", checker.description, moderation.default_tolerance)
