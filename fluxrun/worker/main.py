"""``fluxrun worker``: one worker process, holding its models for its whole life."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from fluxrun.backends.base import BackendOptions
from fluxrun.backends.registry import BackendCache, resolve_models_mode
from fluxrun.config import Settings
from fluxrun.errors import EXIT_CONFIG, BackendUnavailable, StorageUnavailable
from fluxrun.storage import open_storage
from fluxrun.store import open_store
from fluxrun.tools.catalog import tools_named
from fluxrun.worker.callbacks import Deliverer
from fluxrun.worker.loop import Worker, default_worker_id
from fluxrun.worker.moderation import Moderation
from fluxrun.worker.startup import load_all, lora_report, warm_up

log = logging.getLogger("fluxrun.worker")

TINY_BANNER = """
************************************************************************************
*  fluxrun worker: TINY RANDOM-WEIGHT MODELS ({reason})
*  The pipelines are the real diffusers FLUX architectures with random weights:
*  every image is noise. Use --models real on a machine with a CUDA GPU and the
*  weights to serve the real models.
************************************************************************************
"""


UNMODERATED_LINE = (
    "fluxrun worker: local generation is UNMODERATED (no FLUXRUN_SAFETY_MODEL): images made here are stored "
    "without a safety check. Set FLUXRUN_SAFETY_MODEL to an image classifier "
    "(e.g. Falconsai/nsfw_image_detection) to screen them."
)


def backend_options(settings: Settings, mode: str, device: str) -> BackendOptions:
    return BackendOptions(
        models=mode,
        models_dir=settings.models_dir,
        device=device,
        flux1_base=settings.flux1_base,
        flux2_model=settings.flux2_model,
        lora_sources=settings.lora_sources(),
        cpu_offload=settings.cpu_offload,
        compile=settings.compile,
        bfl_api_key=settings.bfl_api_key.get_secret_value() if settings.bfl_api_key else None,
        bfl_base_url=settings.bfl_base_url,
        bfl_deadline_seconds=settings.bfl_deadline_seconds,
        bfl_poll_seconds=settings.bfl_poll_seconds,
        bfl_request_timeout_seconds=settings.bfl_request_timeout_seconds,
    )


def run_worker(settings: Settings) -> None:
    try:
        tools = tools_named(settings.worker_tools)
    except ValueError as exc:
        print(f"fluxrun worker: FLUXRUN_WORKER_TOOLS: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG)
    try:
        mode, device = resolve_models_mode(settings.models, settings.device)
    except BackendUnavailable as exc:
        print(f"fluxrun worker: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG)
    if mode == "tiny":
        reason = "no CUDA GPU found" if settings.models == "auto" else "--models tiny"
        print(TINY_BANNER.format(reason=reason), file=sys.stderr, flush=True)
    else:
        log.info("serving real models on %s", device)
    for line in lora_report(settings, mode, tools):
        log.warning(line)
    log.info("serving %s", ", ".join(tool.slug for tool in tools))

    store = open_store(settings.effective_database_url)
    storage = open_storage(settings)
    try:
        storage.check()
    except StorageUnavailable as exc:
        # Not fatal: the store may be back soon. Until then each task fails with this same line.
        log.error("output storage cannot be written: %s", exc)
    else:
        log.info("outputs: %s", storage.describe())
    worker_id = default_worker_id()
    stop = threading.Event()
    loading = threading.Event()
    loading.set()

    def on_signal(signum: int, _: FrameType | None) -> None:
        stop.set()
        if loading.is_set():  # no task in hand yet: leave now, through the finally below
            log.info("signal %d while loading models: stopping", signum)
            raise SystemExit(0)
        log.info("signal %d: finishing the current task, then stopping", signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Callbacks go out while the models load, too: they need no model.
    deliverer = Deliverer(settings, store, storage, deliverer_id=worker_id)
    deliverer.start()
    try:
        backends = BackendCache(backend_options(settings, mode, device))
        load_all(backends, tools)  # only the backends of the tools served
        if settings.warmup:
            warm_up(backends, tools)
        worker = Worker(settings, store, storage, backends, worker_id=worker_id, on_callback_owed=deliverer.wake,
                        tools=tools)
        load_moderation(worker.moderation)
        loading.clear()
        log.info("worker %s ready (%s models on %s)", worker.worker_id, mode, device)
        worker.run_forever(stop)
    finally:
        deliverer.stop()
        store.close()


def load_moderation(moderation: Moderation) -> None:
    """Load the safety classifier now (not on the first task), or say that there is none."""
    if not moderation.configured:
        print(UNMODERATED_LINE, file=sys.stderr, flush=True)
        return
    try:
        checker = moderation.checker()
    except BackendUnavailable as exc:  # every locally generated task fails with this message until it loads
        log.warning("safety classifier unavailable: %s Local tasks fail until it loads.", exc)
        return
    log.info("%s; default safetyTolerance %d", checker.description, moderation.default_tolerance)
