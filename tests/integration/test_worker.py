"""The worker in-process, on both stores, with the tiny FLUX.1 pipeline."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from fluxrun.backends.base import BackendOptions
from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store.base import TaskStore
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.loop import Worker
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
FLUX2 = find_tool("black-forest-labs", "flux-2-flex-t2i")


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> BackendCache:
    cache = BackendCache(BackendOptions(models="tiny", models_dir=tmp_path_factory.mktemp("models")))
    cache.get("flux1")
    return cache


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


def test_a_tool_without_a_backend_fails_clearly_and_the_worker_goes_on(worker: Worker, store: TaskStore) -> None:
    project, flux2 = _submit(store, FLUX2)
    _, pixel = _submit(store)
    assert worker.run_once() and worker.run_once()
    failed = store.get_task(project.id, task_id=flux2.id)
    assert failed.status is Status.POSTPROCESS_END and failed.pexit == 1
    assert "FLUX.2" in failed.debugerror and failed.outputs == ()
    assert store.get_task(project.id, task_id=pixel.id).pexit == 0


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


def test_heartbeats_keep_a_task_longer_than_its_lease(worker: Worker, store: TaskStore) -> None:
    # The lease is 1 s; this task takes longer. Without heartbeats it would be re-queued.
    project, task = _submit(store, steps=12, width=1024, height=1024)
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
    assert done.elapsed > 1.0


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
