"""Images per minute through a saturated worker, against the pure pipeline's rate.

Side by side in one run, on the same inputs (one tool, the same size and steps, seeds 0..N-1):
- ``pipeline``: the backend's ``generate`` alone, one task after the other: what the GPU
  must do, and the rate a worker would reach if nothing else cost any time;
- ``worker, overlap on``: the real ``Worker.run_forever`` (FLUXRUN_OVERLAP_POSTPROCESS=true)
  with its store and its output storage, the queue filled with the N tasks before it starts;
  the rate is N x images over the window from the first claim to the last final write, as
  the store's timestamps say;
- ``worker, overlap off``: the same, each task start to end before the next is claimed.
The worker cases run on local files and, with ``--upload-delay-ms``, again on a storage whose
every upload first sleeps that long (a slow bucket). ``generating`` is the share of the window
the claim loop spent between task_start and task_end: the GPU's share, near 100 % when it
never waits for encoding, uploads or database writes. Each case runs ``--rounds`` times in
alternating order and keeps its best.

    PYTHONPATH=. python bench/worker_saturation.py [--tasks 12] [--rounds 2] [--upload-delay-ms 200]
        [--models auto|tiny|real|random] [--device auto] [--width W --height H --steps S --samples K]
        [--tool desertPixel/Flat-Pixel-Art-FLUX] [--postgres postgresql://...]

``--models auto`` means the real models on a CUDA GPU (their weights must be there, as for
``fluxrun worker``) and the tiny random-weight ones on a CPU; the tiny ones default to 512x512
and 4 steps, the real ones to the tool's own defaults (1024x1024). ``--models random`` builds
the pipeline as bench/gpu_flux.py does, with no download (GPU machines are often offline): on
a CUDA GPU the full-size architecture with random bf16 weights (FLUX.1-dev with a random
rank-64 LoRA for the FLUX.1 tools; FLUX.2 [klein] 4B for the FLUX.2 tool), on a CPU its tiny
configuration, handed to the worker's own backend class with the options the worker picks for
the device (FLUXRUN_* variables as for ``fluxrun worker``): the arithmetic of the real models
on the GPU, without their weights. The store is a SQLite file,
or a schema of its own on the PostgreSQL server that --postgres names (dropped afterwards).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import postgres_schema  # noqa: E402

from fluxrun.backends.base import Backend, RecordingJob  # noqa: E402
from fluxrun.backends.lora import lora_setting  # noqa: E402
from fluxrun.backends.registry import BackendCache, resolve_models_mode  # noqa: E402
from fluxrun.config import Settings  # noqa: E402
from fluxrun.storage.base import OutputStorage  # noqa: E402
from fluxrun.storage.local import LocalStorage  # noqa: E402
from fluxrun.store import open_store  # noqa: E402
from fluxrun.tools.catalog import tool_by_slug  # noqa: E402
from fluxrun.tools.spec import ToolSpec  # noqa: E402
from fluxrun.worker.loop import Worker  # noqa: E402
from fluxrun.worker.main import backend_options  # noqa: E402

TINY_SIZE, TINY_STEPS = 512, 4


class SlowStorage(OutputStorage):
    """Local files, each upload ``delay`` seconds late: a bucket far away."""

    def __init__(self, local: LocalStorage, delay: float) -> None:
        self.local = local
        self.delay = delay

    def put(self, key: str, name: str, data: bytes, content_type: str) -> int:
        time.sleep(self.delay)
        return self.local.put(key, name, data, content_type)

    def url(self, key: str, name: str, base_url: str) -> str:
        return self.local.url(key, name, base_url)

    def check(self) -> None:
        self.local.check()


def random_backends(tool: ToolSpec, device: str, scratch: Path, compile_backend: str) -> BackendCache:
    """The worker's backend for ``tool`` over a random-weight pipeline (see ``--models random``)."""
    from dataclasses import replace

    import torch

    from bench import gpu_flux

    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    name = tool.to_request(tool.validate({"prompt": "a knight"})).backend
    backend: Backend
    if name == "flux1":
        from fluxrun.backends.flux1 import Flux1Backend

        pipe = gpu_flux.build_flux1(not cuda, device, dtype, scratch)
        if tool.lora:  # the tool's LoRA slot, filled with a random LoRA of the usual rank
            lora = gpu_flux.write_lora(pipe.transformer, 64 if cuda else 4, 1, scratch / "lora")
            os.environ[lora_setting(tool.lora)] = str(lora)
        options, _ = gpu_flux.worker_options(compile_backend, device)
        backend = Flux1Backend(options, pipe=pipe)
    else:
        from fluxrun.backends.flux2 import Flux2Backend

        pipe = gpu_flux.build_flux2("klein", not cuda, device, dtype, scratch)
        options, _ = gpu_flux.worker_options(compile_backend, device)
        options = replace(options, flux2_model="klein-4b")
        backend = Flux2Backend(options, pipe=pipe)
    pipe.set_progress_bar_config(disable=True)
    return gpu_flux.Prebuilt(options, {name: backend})


@dataclass(frozen=True)
class Result:
    images: int
    seconds: float  # the window: first claim to last final write (pipeline: the generate calls)
    generating: float  # seconds between task_start and task_end, summed over the tasks

    @property
    def per_minute(self) -> float:
        return 60 * self.images / self.seconds


def task_inputs(tool: ToolSpec, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "a knight in a castle, pixel art", "seed": seed, "samples": args.samples}
    for name in ("width", "height", "steps"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    return tool.validate(body)


def measure_pipeline(backends: BackendCache, tool: ToolSpec, args: argparse.Namespace) -> Result:
    requests = [tool.to_request(task_inputs(tool, args, seed)) for seed in range(args.tasks)]
    backend = backends.get(requests[0].backend)
    made: list[int] = []

    def generate_all() -> None:
        for request in requests:
            made.append(len(backend.generate(request, RecordingJob())))

    # On a thread, as the worker's claim loop runs here: torch on the CPU runs the main thread's
    # parallel regions differently (on a loaded 2-core machine they were 10x slower there).
    thread = threading.Thread(target=generate_all, name="bench-pipeline")
    started = time.perf_counter()
    thread.start()
    thread.join()
    seconds = time.perf_counter() - started
    return Result(sum(made), seconds, seconds)


def measure_worker(
    backends: BackendCache, tool: ToolSpec, args: argparse.Namespace, database_url: str, data_dir: Path,
    overlap: bool, upload_delay: float,
) -> Result:
    settings = Settings(data_dir=data_dir, database_url=database_url, overlap_postprocess=overlap,
                        idle_poll_seconds=0.2)
    store = open_store(settings.effective_database_url)
    try:
        store.migrate()
        project = store.create_project("bench", "apikey")
        ids = [store.create_task(project.id, tool.slug, task_inputs(tool, args, seed), tool.cps).id
               for seed in range(args.tasks)]
        local = LocalStorage(settings.outputs_dir)
        storage: OutputStorage = SlowStorage(local, upload_delay) if upload_delay else local
        worker = Worker(settings, store, storage, backends, worker_id="bench/1", tools=(tool,))
        stop = threading.Event()
        thread = threading.Thread(target=worker.run_forever, args=(stop,), name="bench-worker")
        thread.start()
        try:
            while any(counts.queued or counts.running for counts in store.task_counts().values()):
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()
        done = [store.get_task(project.id, task_id=task_id) for task_id in ids]
        failed = [task for task in done if task.pexit != 0]
        if failed:
            raise SystemExit(f"task {failed[0].id} failed: {failed[0].debugerror}")
        window = max(t.postprocessendtime for t in done) - min(t.accepttime for t in done)
        generating = sum(t.endtime - t.starttime for t in done)
        return Result(sum(len(t.outputs) for t in done), window, generating)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=12, help="tasks in the queue (and pipeline calls) per case")
    parser.add_argument("--rounds", type=int, default=2, help="each case this many times, alternating; best kept")
    parser.add_argument("--upload-delay-ms", type=float, default=0.0,
                        help="also measure the worker on a storage whose every upload sleeps this long")
    parser.add_argument("--models", choices=("auto", "tiny", "real", "random"), default="auto")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend where the worker compiles (--models random)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tool", default="desertPixel/Flat-Pixel-Art-FLUX")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--postgres", help="a PostgreSQL server for the store (default: a SQLite file)")
    parser.add_argument("--data-dir", type=Path, help="where the tiny models are kept (default: a temporary folder)")
    args = parser.parse_args()

    random_weights = args.models == "random"
    mode, device = resolve_models_mode("auto" if random_weights else args.models, args.device)
    if random_weights:
        mode = "random-weight " + ("full-size" if device.startswith("cuda") else "tiny-configuration")
    if mode in ("tiny", "random-weight tiny-configuration"):
        args.width = args.width or TINY_SIZE
        args.height = args.height or TINY_SIZE
        args.steps = args.steps or TINY_STEPS
    tool = tool_by_slug(args.tool)
    with tempfile.TemporaryDirectory() as folder:
        data_dir = args.data_dir or Path(folder)
        if random_weights:
            backends = random_backends(tool, device, Path(folder) / "random", args.compile_backend)
        else:
            settings = Settings(data_dir=data_dir, models=mode, device=device)
            backends = BackendCache(backend_options(settings, mode, device))
        request = tool.to_request(task_inputs(tool, args, seed=10_000))
        backend = backends.get(request.backend)
        print(f"backend: {backend.description}", file=sys.stderr, flush=True)
        backend.generate(request, RecordingJob())  # loading and the first call's costs (compiling)

        delays = [0.0] + ([args.upload_delay_ms / 1000] if args.upload_delay_ms else [])
        cases: list[tuple[str, bool | None, float]] = [("pipeline (generate only)", None, 0.0)]
        for delay in delays:
            where = "local files" if not delay else f"+{delay * 1000:g} ms uploads"
            cases += [(f"worker, {where}, overlap on", True, delay), (f"worker, {where}, overlap off", False, delay)]
        best: dict[str, Result] = {}
        for round_ in range(args.rounds):
            order = cases if round_ % 2 == 0 else [cases[0], *reversed(cases[1:])]
            for name, overlap, delay in order:
                if overlap is None:
                    result = measure_pipeline(backends, tool, args)
                elif args.postgres:
                    with postgres_schema(args.postgres) as url:
                        result = measure_worker(backends, tool, args, url, data_dir / f"r{round_}", overlap, delay)
                else:
                    url = f"sqlite:///{data_dir / f'round{round_}-overlap-{overlap}-delay-{delay:g}.db'}"
                    result = measure_worker(backends, tool, args, url, data_dir / f"r{round_}", overlap, delay)
                print(f"round {round_ + 1}: {name}: {result.per_minute:.1f} images/min", file=sys.stderr, flush=True)
                if name not in best or result.per_minute > best[name].per_minute:
                    best[name] = result

    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"worker_saturation: {args.tasks} tasks of {tool.slug}, {args.width or 'default'}x"
          f"{args.height or 'default'}, {args.steps or 'default'} steps, {args.samples} image(s) each; "
          f"{mode} models on {device}; store {'postgres' if args.postgres else 'sqlite'}; best of {args.rounds} "
          f"round(s); {os.cpu_count()} CPUs, load average {load}")
    pipeline = best[cases[0][0]]
    print(f"{'case':40} {'images/min':>10} {'s/image':>8} {'vs pipeline':>11} {'generating':>10} {'gen s/image':>11}")
    for name, _, _ in cases:
        result = best[name]
        print(f"{name:40} {result.per_minute:10.1f} {result.seconds / result.images:8.3f} "
              f"{result.per_minute / pipeline.per_minute:10.3f}x {100 * result.generating / result.seconds:9.1f}% "
              f"{result.generating / result.images:11.3f}")
    print("generating: share of the window between task_start and task_end (the GPU's part of a task; the "
          "pipeline: 100 %); gen s/image: that time per image, against the pipeline's s/image")


if __name__ == "__main__":
    main()
