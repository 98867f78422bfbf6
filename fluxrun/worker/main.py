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
from fluxrun.tools.catalog import TOOLS
from fluxrun.worker.loop import Worker
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


def backend_options(settings: Settings, mode: str, device: str) -> BackendOptions:
    return BackendOptions(
        models=mode,
        models_dir=settings.models_dir,
        device=device,
        flux1_base=settings.flux1_base,
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
        mode, device = resolve_models_mode(settings.models, settings.device)
    except BackendUnavailable as exc:
        print(f"fluxrun worker: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG)
    if mode == "tiny":
        reason = "no CUDA GPU found" if settings.models == "auto" else "--models tiny"
        print(TINY_BANNER.format(reason=reason), file=sys.stderr, flush=True)
    else:
        log.info("serving real models on %s", device)
    for line in lora_report(settings, mode):
        log.warning(line)

    store = open_store(settings.effective_database_url)
    storage = open_storage(settings)
    try:
        storage.check()
    except StorageUnavailable as exc:
        # Not fatal: the store may be back soon. Until then each task fails with this same line.
        log.error("output storage cannot be written: %s", exc)
    else:
        log.info("outputs: %s", storage.describe())
    backends = BackendCache(backend_options(settings, mode, device))
    load_all(backends, TOOLS)
    if settings.warmup:
        warm_up(backends, TOOLS)

    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("signal %d: finishing the current task, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = Worker(settings, store, storage, backends)
    log.info("worker %s ready (%s models on %s)", worker.worker_id, mode, device)
    worker.run_forever(stop)
    store.close()
