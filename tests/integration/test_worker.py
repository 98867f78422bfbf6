"""The worker in-process, on both stores, with the tiny FLUX.1 and FLUX.2 pipelines."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from fluxrun.backends.base import BackendOptions
from fluxrun.backends.registry import BackendCache
from fluxrun.backends.tiny import ensure_tiny_flux1
from fluxrun.config import Settings
from fluxrun.errors import TaskStopped
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store.base import TaskStore
from fluxrun.store.events import PREVIEW_WANTED, TASK_PREVIEW, TaskEvent
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.loop import Worker
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
FLUX2 = find_tool("black-forest-labs", "flux-2-flex-t2i")


@pytest.fixture
def worker(store: TaskStore, backends: BackendCache, tmp_path: Path) -> Iterator[Worker]:
    settings = Settings(data_dir=tmp_path, lease_seconds=1.0, max_attempts=2)
    yield Worker(settings, store, LocalStorage(settings.outputs_dir), backends, worker_id="test/1")


def _submit(store: TaskStore, tool=PIXEL, **inputs):
    project = store.list_projects()[0] if store.list_projects() else store.create_project("p", "apikey")
    params = tool.validate({"prompt": "a cat", "steps": 2, "width": 256, "height": 256, **inputs})
    return project, store.create_task(project.id, tool.slug, params, tool.cps)


def test_a_task_walks_every_status_and_writes_its_files(worker: Worker, store: TaskStore) -> None:
    project, task = _submit(store, samples=2, steps=3)
    assert worker.run_once()
    done = store.get_task(project.id, task_id=task.id)
    assert done.status is Status.POSTPROCESS_END and done.pexit == 0, done.debugerror
    assert done.progress["stepCurrent"] == "6" and done.progress["percentage"] == "100"
    assert "attempt 1: worker test/1" in done.debugoutput and "tiny random-weight" in done.debugoutput
    assert all(getattr(done, c) for c in ("accepttime", "assigntime", "preprocessstarttime", "preprocessendtime",
                                          "starttime", "endtime", "postprocessstarttime", "postprocessendtime"))
    assert [o.name for o in done.outputs] == ["0.png", "1.png"]
    for output in done.outputs:
        path = worker.storage.path(done.output_key, output.name)
        assert path.stat().st_size == output.size
        assert Image.open(io.BytesIO(path.read_bytes())).size == (256, 256)
    assert not worker.run_once()


def test_the_flux2_tool_runs_locally_and_writes_a_jpeg(worker: Worker, store: TaskStore) -> None:
    project, task = _submit(store, FLUX2, width=192, height=128, outputFormat="jpeg")
    assert worker.run_once()
    done = store.get_task(project.id, task_id=task.id)
    assert done.status is Status.POSTPROCESS_END and done.pexit == 0, done.debugerror
    assert "FLUX.2 [dev] tiny random-weight" in done.debugoutput
    assert done.progress["stepCurrent"] == "2" and done.progress["stepTotal"] == "2"
    [output] = done.outputs
    assert output.name == "0.jpeg" and output.content_type == "image/jpeg"
    data = worker.storage.path(done.output_key, output.name).read_bytes()
    assert len(data) == output.size
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (192, 128)


def test_a_backend_that_cannot_load_fails_its_task_clearly_and_the_worker_goes_on(
    store: TaskStore, tmp_path: Path
) -> None:
    # Real mode: FLUX.1 from a local folder (the tiny one), FLUX.2 from a folder that is not there.
    options = BackendOptions(models="real", models_dir=tmp_path / "models",
                             flux1_base=str(ensure_tiny_flux1(tmp_path / "models")), flux2_model="/no/flux2/here")
    settings = Settings(data_dir=tmp_path, lease_seconds=5.0)
    worker = Worker(settings, store, LocalStorage(settings.outputs_dir), BackendCache(options), worker_id="test/2")
    project, flux2 = _submit(store, FLUX2)
    _, pixel = _submit(store)
    assert worker.run_once() and worker.run_once()
    failed = store.get_task(project.id, task_id=flux2.id)
    assert failed.status is Status.POSTPROCESS_END and failed.pexit == 1 and failed.outputs == ()
    assert failed.debugerror == "FLUXRUN_FLUX2_MODEL: /no/flux2/here is not a folder."
    assert store.get_task(project.id, task_id=pixel.id).pexit == 0


def test_a_worker_of_one_tool_leaves_the_other_tools_tasks_queued(
    store: TaskStore, backends: BackendCache, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, lease_seconds=5.0)
    worker = Worker(settings, store, LocalStorage(settings.outputs_dir), backends, worker_id="test/pixel",
                    tools=(PIXEL,))
    project, flux2 = _submit(store, FLUX2)  # the oldest task, of a tool this worker does not serve
    _, pixel = _submit(store)
    assert worker.run_once() and not worker.run_once()
    assert store.get_task(project.id, task_id=pixel.id).pexit == 0
    waiting = store.get_task(project.id, task_id=flux2.id)
    assert waiting.status is Status.QUEUE and waiting.attempt == 0


def test_a_backend_error_ends_the_task_not_the_worker(worker: Worker, store: TaskStore, monkeypatch) -> None:
    backend = worker.backends.get("flux1")

    def broken(request, job):
        job.step(1, 2)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend, "generate", broken)
    project, task = _submit(store)
    assert worker.run_once()
    failed = store.get_task(project.id, task_id=task.id)
    assert failed.pexit == 1 and failed.debugerror == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    monkeypatch.undo()
    _, ok = _submit(store)
    assert worker.run_once() and store.get_task(project.id, task_id=ok.id).pexit == 0


def test_kill_stops_generation_at_the_next_step(worker: Worker, store: TaskStore) -> None:
    # 40 steps at 1024x1024 take several seconds here; the kill comes at step 2.
    project, task = _submit(store, steps=40, width=1024, height=1024)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    deadline = time.monotonic() + 60
    while (current := store.get_task(project.id, task_id=task.id)).progress is None:
        assert time.monotonic() < deadline and not current.status.terminal, current
        time.sleep(0.01)
    killed_at_step = int(current.progress["stepCurrent"])
    store.kill(project.id, task.id, time.time())
    thread.join(timeout=30)
    assert not thread.is_alive()
    final = store.get_task(project.id, task_id=task.id)
    assert final.status is Status.CANCEL and final.outputs == ()
    # No progress was recorded after the kill, and the worker stopped long before step 40.
    assert int(final.progress["stepCurrent"]) <= killed_at_step + 1


def test_heartbeats_keep_a_task_longer_than_its_lease(
    store: TaskStore, backends: BackendCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease is 2 s (a beat every 0.67 s); the task takes 4 s, sleeping between its steps
    # so a busy machine cannot stretch it. Without heartbeats it would be re-queued.
    settings = Settings(data_dir=tmp_path, lease_seconds=2.0, max_attempts=2)
    worker = Worker(settings, store, LocalStorage(settings.outputs_dir), backends, worker_id="test/1")
    generate = backends.get("flux1").generate

    def slow(request, job):
        for step in range(40):
            time.sleep(0.1)
            job.step(step + 1, 40)
        return generate(request, job)

    monkeypatch.setattr(backends.get("flux1"), "generate", slow)
    project, task = _submit(store)
    stop = threading.Event()

    def reaper() -> None:
        while not stop.is_set():
            store.expire_leases(time.time(), max_attempts=2)
            time.sleep(0.1)

    thread = threading.Thread(target=reaper)
    thread.start()
    try:
        assert worker.run_once()
    finally:
        stop.set()
        thread.join()
    done = store.get_task(project.id, task_id=task.id)
    assert done.pexit == 0 and done.attempt == 1 and "lost worker" not in done.debugoutput
    assert done.elapsed > settings.lease_seconds


def test_a_worker_whose_lease_was_taken_over_writes_nothing(worker: Worker, store: TaskStore) -> None:
    project, task = _submit(store)
    stale = store.claim("paused-worker", 0.01, time.time())
    time.sleep(0.05)
    store.expire_leases(time.time(), max_attempts=3)
    assert worker.run_once()  # attempt 2 runs the task to the end
    worker.process(stale)  # the paused worker wakes up and tries to go on: fenced out
    done = store.get_task(project.id, task_id=task.id)
    assert done.attempt == 2 and done.pexit == 0 and len(done.outputs) == 1
    assert "paused-worker" in done.debugoutput


def test_a_gpu_out_of_memory_fails_that_task_frees_its_memory_and_the_next_succeeds(
    worker: Worker, store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    import torch

    held: list[weakref.ref] = []
    alive_when_cache_emptied: list[bool] = []

    def exhausted(*args, **kwargs):
        activations = torch.ones(256, 256)  # what the failed call was holding
        held.append(weakref.ref(activations))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    # Emptying the CUDA cache frees nothing while the failed call's tensors are still referenced
    # (from inside the except block, its traceback holds them): record whether they were gone.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_when_cache_emptied.append(held[0]() is not None))
    monkeypatch.setattr(worker.backends.get("flux1").pipe.transformer, "forward", exhausted)
    project, task = _submit(store, width=512, height=256)
    assert worker.run_once()
    failed = store.get_task(project.id, task_id=task.id)
    assert failed.status is Status.POSTPROCESS_END and failed.pexit == 1 and failed.outputs == ()
    assert failed.debugerror == (
        "The GPU ran out of memory making 1 image(s) of 512x256 (CUDA out of memory. Tried to allocate 20.00 GiB). "
        "Try a smaller size or fewer samples; on a small GPU the operator can set FLUXRUN_CPU_OFFLOAD=true."
    )
    assert alive_when_cache_emptied == [False]
    monkeypatch.undo()
    _, ok = _submit(store)
    assert worker.run_once() and store.get_task(project.id, task_id=ok.id).pexit == 0


# -- the event bus: wake-ups, kills and previews ---------------------------------------------
class RunningWorker:
    """``run_forever`` in a thread, as ``fluxrun worker`` runs it."""

    def __init__(self, store: TaskStore, backends: BackendCache, data_dir: Path, **settings) -> None:
        self.settings = Settings(data_dir=data_dir, **settings)
        self.worker = Worker(self.settings, store, LocalStorage(self.settings.outputs_dir), backends, "test/bus")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run_forever, args=(self.stop,))

    def __enter__(self) -> RunningWorker:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def _wait_until(store: TaskStore, project, task_id: int, done, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not done(current := store.get_task(project.id, task_id=task_id)):
        assert time.monotonic() < deadline, current
        time.sleep(0.02)
    return current


def test_an_idle_worker_starts_a_new_task_on_its_wake_up_not_its_poll(
    store: TaskStore, backends: BackendCache, tmp_path: Path
) -> None:
    # The fallback poll is 30 s away: only the queued event can start the task before.
    with RunningWorker(store, backends, tmp_path, idle_poll_seconds=30.0):
        time.sleep(1.0)  # the worker found the queue empty and sleeps
        project, task = _submit(store)
        done = _wait_until(store, project, task.id, lambda t: t.status.terminal)
    assert done.pexit == 0, done.debugerror
    assert done.accepttime - done.createtime < 15, "started by the fallback poll, not by the event"


def test_a_kill_heard_on_the_bus_stops_a_backend_that_waits_without_steps(
    store: TaskStore, backends: BackendCache, tmp_path: Path, monkeypatch
) -> None:
    seen: list[str] = []

    def remote_wait(request, job):  # a remote API: polls, no denoising steps
        for _ in range(1500):
            try:
                job.check()
            except TaskStopped:
                seen.append("stopped")
                raise
            time.sleep(0.01)
        seen.append("ran out")
        return []

    monkeypatch.setattr(backends.get("flux1"), "generate", remote_wait)
    # A 60 s lease heartbeats every 20 s: the heartbeat cannot be what notices the kill.
    with RunningWorker(store, backends, tmp_path, lease_seconds=60.0, idle_poll_seconds=30.0):
        project, task = _submit(store)
        _wait_until(store, project, task.id, lambda t: t.status is Status.START)
        store.kill(project.id, task.id, time.time())
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
    assert seen == ["stopped"]
    assert store.get_task(project.id, task_id=task.id).status is Status.CANCEL


def test_previews_go_out_on_the_bus_only_for_tasks_a_client_asked_about(
    store: TaskStore, backends: BackendCache, tmp_path: Path
) -> None:
    subscription = store.events.subscribe()
    try:
        with RunningWorker(store, backends, tmp_path, idle_poll_seconds=30.0):
            project, watched = _submit(store, steps=3)
            store.events.publish(TaskEvent(watched.id, PREVIEW_WANTED, 0))
            _, unwatched = _submit(store, steps=3)
            _wait_until(store, project, unwatched.id, lambda t: t.status.terminal)
        previews: dict[int, list[str]] = {watched.id: [], unwatched.id: []}
        while (event := subscription.get(timeout=0.5)) is not None:
            if event.type == TASK_PREVIEW:
                previews[event.task_id].append(event.message)
    finally:
        subscription.close()
    assert previews[unwatched.id] == []
    assert previews[watched.id], "no preview of the watched task"
    for data in previews[watched.id]:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "JPEG" and max(image.size) <= 128



def _output(worker: Worker, store: TaskStore, project, task) -> tuple[bytes, str]:
    done = store.get_task(project.id, task_id=task.id)
    assert done.pexit == 0 and len(done.outputs) == 1, done.debugerror
    return worker.storage.path(done.output_key, done.outputs[0].name).read_bytes(), done.debugoutput


def test_pixel_perfect_on_gives_few_colours_in_crisp_blocks_or_a_sprite(worker: Worker, store: TaskStore) -> None:
    project, upscaled_task = _submit(store, seed=5, pixelPerfect="on", paletteSize=6)
    _, sprite_task = _submit(store, seed=5, pixelPerfect="on", paletteSize="6", pixelOutput="sprite")
    assert worker.run_once() and worker.run_once()
    upscaled_png, upscaled_notes = _output(worker, store, project, upscaled_task)
    sprite_png, sprite_notes = _output(worker, store, project, sprite_task)
    upscaled, sprite = Image.open(io.BytesIO(upscaled_png)), Image.open(io.BytesIO(sprite_png))

    assert upscaled.format == sprite.format == "PNG"
    assert len(upscaled.getcolors()) <= 6 and len(sprite.getcolors()) <= 6
    assert max(sprite.size) <= 128  # one pixel per art pixel: small
    # The upscale is the sprite, each pixel a uniform square block, at about the asked size.
    scale = upscaled.width // sprite.width
    assert scale > 1 and upscaled.size == (sprite.width * scale, sprite.height * scale)
    assert abs(upscaled.width - 256) <= scale and abs(upscaled.height - 256) <= scale
    assert upscaled.convert("RGB").tobytes() == sprite.convert("RGB").resize(upscaled.size, Image.NEAREST).tobytes()
    for notes in (upscaled_notes, sprite_notes):
        assert "pixel-perfect: " in notes and f"sprite {sprite.width}x{sprite.height}" in notes


def test_pixel_perfect_off_leaves_the_image_as_it_was(worker: Worker, store: TaskStore) -> None:
    project, plain = _submit(store, seed=11)
    _, off = _submit(store, seed=11, pixelPerfect="off", paletteSize=4, pixelOutput="sprite")
    assert worker.run_once() and worker.run_once()
    plain_png, plain_notes = _output(worker, store, project, plain)
    off_png, off_notes = _output(worker, store, project, off)
    assert off_png == plain_png
    image = Image.open(io.BytesIO(off_png))
    assert image.size == (256, 256) and len(image.getcolors(256 * 256)) > 64
    assert "pixel-perfect" not in plain_notes + off_notes
