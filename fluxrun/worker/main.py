"""``fluxrun worker``: one worker process, holding its models for its whole life."""

from __future__ import annotations

import logging
import sys

from fluxrun import logs
from fluxrun.backends.base import BackendOptions
from fluxrun.backends.library_logs import route_library_logs
from fluxrun.backends.memory import gpu_memory
from fluxrun.backends.registry import BackendCache, resolve_models_mode
from fluxrun.backends.speed import SpeedChoice, choose_speed, device_facts
from fluxrun.config import Settings
from fluxrun.errors import EXIT_CONFIG, BackendUnavailable, StorageUnavailable
from fluxrun.storage import open_storage
from fluxrun.store import open_store
from fluxrun.tools.catalog import tools_named
from fluxrun.worker.callbacks import Deliverer
from fluxrun.worker.loop import Worker, default_worker_id
from fluxrun.worker.presence import Presence
from fluxrun.worker.shutdown import Shutdown
from fluxrun.worker.startup import (
    choose_worker_speed,
    load_all,
    load_moderation,
    lora_report,
    say,
    speed_request,
    wait_for_schema,
    wants_warmup,
    warm_up,
)

log = logging.getLogger("fluxrun.worker")

TINY_BANNER = """
************************************************************************************
*  fluxrun worker: TINY RANDOM-WEIGHT MODELS ({reason})
*  The pipelines are the real diffusers FLUX architectures with random weights:
*  every image is noise. Use --models real on a machine with a CUDA GPU and the
*  weights to serve the real models.
************************************************************************************
"""


def backend_options(settings: Settings, mode: str, device: str, speed: SpeedChoice | None = None) -> BackendOptions:
    """The backends' options: the settings, with the speed settings decided for ``device``
    (``speed``, or chosen here when not given)."""
    speed = speed or choose_speed(speed_request(settings), device_facts(device))
    return BackendOptions(
        models=mode,
        models_dir=settings.models_dir,
        device=device,
        flux1_base=settings.flux1_base,
        flux2_model=settings.flux2_model,
        lora_sources=settings.lora_sources(),
        cpu_offload=settings.cpu_offload,
        compile=speed.compile,
        compile_mode=speed.compile_mode,
        quantize=speed.quantize,
        attention=speed.attention,
        compile_vae=speed.compile_vae,
        bfl_api_key=settings.bfl_api_key.get_secret_value() if settings.bfl_api_key else None,
        bfl_base_url=settings.bfl_base_url,
        bfl_deadline_seconds=settings.bfl_deadline_seconds,
        bfl_poll_seconds=settings.bfl_poll_seconds,
        bfl_request_timeout_seconds=settings.bfl_request_timeout_seconds,
    )


def run_worker(settings: Settings) -> None:
    """Serve the tools of FLUXRUN_WORKER_TOOLS until told to stop (worker/shutdown.py says how)."""
    try:
        tools = tools_named(settings.worker_tools)
    except ValueError as exc:
        say(f"fluxrun worker: FLUXRUN_WORKER_TOOLS: {exc}", logging.ERROR)
        sys.exit(EXIT_CONFIG)
    try:
        mode, device = resolve_models_mode(settings.models, settings.device)
    except BackendUnavailable as exc:
        say(f"fluxrun worker: {exc}", logging.ERROR)
        sys.exit(EXIT_CONFIG)
    if mode == "tiny":
        reason = "no CUDA GPU found" if settings.models == "auto" else "--models tiny"
        say(TINY_BANNER.format(reason=reason), logging.WARNING)
    else:
        log.info("serving real models on %s", device)
    try:
        speed = choose_worker_speed(settings, device)
    except BackendUnavailable as exc:
        say(f"fluxrun worker: {exc}", logging.ERROR)
        sys.exit(EXIT_CONFIG)
    for line in lora_report(settings, mode, tools):
        log.warning(line)
    log.info("serving %s", ", ".join(tool.slug for tool in tools))

    if logs.is_json():
        route_library_logs()  # every line a JSON object: the model libraries' lines too, no progress bars
    store = open_store(settings.effective_database_url)
    storage = open_storage(settings)
    try:
        storage.check()
    except StorageUnavailable as exc:
        # Not fatal: the store may be back soon. Until then each task fails with this same line.
        log.error("output storage cannot be written: %s", exc)
    else:
        log.info("outputs: %s", storage.describe())
        if swept := storage.sweep():
            log.info("outputs: removed %d partial file(s) left by writes cut short", swept)
    worker_id = default_worker_id()
    presence = Presence(store, worker_id, [tool.slug for tool in tools], mode, device,
                        settings.worker_heartbeat_seconds, gpu_reader=lambda: gpu_memory(device))
    worker: Worker | None = None

    def stop_now(why: str) -> None:
        if worker is not None:
            worker.stop_now(why)

    shutdown = Shutdown(settings.shutdown_grace_seconds, on_stopping=presence.stopping, on_stop_now=stop_now)
    shutdown.install()
    # Callbacks go out while the models load, too: they need no model.
    deliverer = Deliverer(settings, store, storage, deliverer_id=worker_id)
    try:
        if not wait_for_schema(store, shutdown.stop):
            return
        presence.start()
        deliverer.start()
        backends = BackendCache(backend_options(settings, mode, device, speed))
        served = load_all(backends, tools)  # only the backends of the tools served
        if wants_warmup(settings, speed):
            warm_up(backends, tools, settings.warmup_size_list)
        worker = Worker(settings, store, storage, backends, worker_id=worker_id, on_callback_owed=deliverer.wake,
                        presence=presence, tools=tools)
        load_moderation(worker.moderation, [backends.get(tool.backend) for tool in served])
        shutdown.loading = False
        if shutdown.stop.is_set():
            return
        presence.serving([tool.slug for tool in served])
        log.info("worker %s ready (%s models on %s), serving %s", worker.worker_id, mode, device,
                 ", ".join(tool.slug for tool in served) or "no tool (no backend loaded)")
        worker.run_forever(shutdown.stop)
    finally:
        shutdown.cancel()
        deliverer.stop()
        presence.stop()
        store.close()
        log.info("worker %s stopped", worker_id)
