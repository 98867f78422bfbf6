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
from fluxrun.errors import BackendUnavailable
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from fluxrun.tools.catalog import TOOLS
from fluxrun.worker.loop import Worker

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
        flux2_model=settings.flux2_model,
        lora_sources=settings.lora_sources(),
        cpu_offload=settings.cpu_offload,
    )


def run_worker(settings: Settings) -> None:
    mode, device = resolve_models_mode(settings.models)
    if mode == "tiny":
        reason = "no CUDA GPU found" if settings.models == "auto" else "--models tiny"
        print(TINY_BANNER.format(reason=reason), file=sys.stderr, flush=True)
    else:
        log.info("serving real models on %s", device)

    store = open_store(settings.effective_database_url)
    storage = LocalStorage(settings.outputs_dir)
    backends = BackendCache(backend_options(settings, mode, device))
    # Load every pipeline now, so the first user task is not the one that waits for it.
    for name in sorted({tool.backend for tool in TOOLS}):
        try:
            backends.get(name)
        except BackendUnavailable as exc:
            log.warning("backend %s unavailable: %s", name, exc)

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
