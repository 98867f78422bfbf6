"""The worker finishes a task (encode, upload, final writes) while its GPU makes the next one.

In-process, on both stores, with the tiny FLUX.1 pipeline. The storage is local files behind a
gate the test opens: an upload that takes as long as the test wants, so what happens while a
task is being finished is seen in the store, not guessed from timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fluxrun.api.app import create_app
from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.errors import StorageUnavailable
from fluxrun.status import ORDER, Status
from fluxrun.storage.base import OutputStorage
from fluxrun.storage.local import LocalStorage
from fluxrun.store.base import Project, TaskRecord, TaskStore, WorkerRecord
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.finisher import Finisher
from fluxrun.worker.loop import Worker
from fluxrun.worker.presence import Presence
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
BUCKET_DOWN = "FLUXRUN_S3_BUCKET: the bucket cannot be reached (EndpointConnectionError writing outputs/x/0.png)"
TIMES = ("accepttime", "assigntime", "preprocessstarttime", "preprocessendtime", "starttime", "endtime",
         "postprocessstarttime", "postprocessendtime")


class GatedStorage(OutputStorage):
    """Local files whose uploads wait at a gate until the test opens it (a slow bucket, on cue)."""

    def __init__(self, root: Path) -> None:
        self.local = LocalStorage(root)
        self.gate = threading.Event()
        self.waiting = threading.Event()  # an upload is at the gate
        self.down_for: set[str] = set()  # output keys whose uploads fail as with a bucket that is away
        self.stored: list[tuple[str, str]] = []  # (key, name) of every file written, in order
        self._lock = threading.Lock()

    def put(self, key: str, name: str, data: bytes, content_type: str) -> int:
        self.waiting.set()
        assert self.gate.wait(60), "the test never opened the gate"
        if key in self.down_for:
            raise StorageUnavailable(BUCKET_DOWN)
        size = self.local.put(key, name, data, content_type)
        with self._lock:
            self.stored.append((key, name))
        return size

    def names(self, key: str) -> list[str]:
        with self._lock:
            return [name for stored_key, name in self.stored if stored_key == key]

    def url(self, key: str, name: str, base_url: str) -> str:
        return self.local.url(key, name, base_url)

    def check(self) -> None:
        self.local.check()


class RunningWorker:
    """``run_forever`` in a thread, as ``fluxrun worker`` runs it, with its registry row."""

    def __init__(self, store: TaskStore, backends: BackendCache, data_dir: Path, **settings: object) -> None:
        self.settings = Settings(data_dir=data_dir, lease_seconds=5.0, idle_poll_seconds=0.5, **settings)
        self.storage = GatedStorage(self.settings.outputs_dir)
        self.presence = Presence(store, "test/overlap", [PIXEL.slug], "tiny", "cpu", every=0.05)
        self.worker = Worker(self.settings, store, self.storage, backends, "test/overlap", presence=self.presence)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run_forever, args=(self.stop,))

    def __enter__(self) -> RunningWorker:
        self.presence.start()
        self.presence.serving([PIXEL.slug])
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.storage.gate.set()
        self.stop.set()
        self.thread.join(timeout=60)
        self.presence.stop()
        assert not self.thread.is_alive()


@pytest.fixture
def project(store: TaskStore) -> Project:
    return store.create_project("p", "apikey")


def _submit(store: TaskStore, project: Project, **inputs: object) -> TaskRecord:
    params = PIXEL.validate({"prompt": "a cat", "steps": 2, "width": 128, "height": 128, **inputs})
    return store.create_task(project.id, PIXEL.slug, params, PIXEL.cps)


def _wait(store: TaskStore, project: Project, task_id: int, done: Callable[[TaskRecord], bool]) -> TaskRecord:
    deadline = time.monotonic() + 60
    while not done(current := store.get_task(project.id, task_id=task_id)):
        assert time.monotonic() < deadline, current
        time.sleep(0.02)
    return current


def _reached(status: Status) -> Callable[[TaskRecord], bool]:
    return lambda task: task.status.terminal or ORDER.index(task.status) >= ORDER.index(status)


def _row(store: TaskStore, until: Callable[[WorkerRecord], bool]) -> WorkerRecord:
    deadline = time.monotonic() + 30
    while not (rows := store.list_workers()) or not until(rows[0]):
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)
    return rows[0]


def _succeeded_with_files(running: RunningWorker, task: TaskRecord, images: int = 1) -> None:
    assert task.status is Status.POSTPROCESS_END and task.pexit == 0, task.debugerror
    assert [o.name for o in task.outputs] == [f"{i}.png" for i in range(images)]
    for output in task.outputs:
        path = running.storage.local.path(task.output_key, output.name)
        assert path is not None and path.stat().st_size == output.size
    times = [getattr(task, name) for name in TIMES]
    assert all(times) and times == sorted(times), dict(zip(TIMES, times))  # the statuses, walked in order


def test_the_next_tasks_generate_while_the_first_one_uploads(
    store: TaskStore, backends: BackendCache, tmp_path: Path, project: Project
) -> None:
    tasks = [_submit(store, project, seed=seed) for seed in range(4)]
    with RunningWorker(store, backends, tmp_path) as running:
        running.storage.waiting.wait(60)  # the first task's upload is held at the gate...
        second = _wait(store, project, tasks[1].id, _reached(Status.END))  # ...the second waits to be finished...
        third = _wait(store, project, tasks[2].id, _reached(Status.END))  # ...and the third was generated too
        first = store.get_task(project.id, task_id=tasks[0].id)
        assert first.status is Status.END and first.lease_owner == "test/overlap"  # still in hand, leased
        assert second.status is third.status is Status.END and third.progress["stepCurrent"] == "2"
        # The registry names the newest task in hand; the worker is busy with it.
        assert _row(store, lambda w: w.task_id == tasks[2].id).state == "busy"
        # Back-pressure: with one task uploading and one waiting, the worker claims no fourth.
        time.sleep(0.5)
        assert store.get_task(project.id, task_id=tasks[3].id).status is Status.QUEUE
        running.storage.gate.set()
        done = [_wait(store, project, task.id, lambda t: t.status.terminal) for task in tasks]
        idle = _row(store, lambda w: w.state == "idle")
        assert idle.task_id is None
    for task in done:
        _succeeded_with_files(running, task)
    assert done[1].starttime < done[0].postprocessendtime and done[2].starttime < done[0].postprocessendtime


def test_storage_down_fails_only_that_task_and_the_next_succeeds(
    store: TaskStore, backends: BackendCache, tmp_path: Path, project: Project
) -> None:
    broken, fine = _submit(store, project, samples=2), _submit(store, project)
    with RunningWorker(store, backends, tmp_path) as running:
        running.storage.down_for.add(broken.output_key)
        running.storage.gate.set()
        failed = _wait(store, project, broken.id, lambda t: t.status.terminal)
        ok = _wait(store, project, fine.id, lambda t: t.status.terminal)
    assert failed.status is Status.POSTPROCESS_END and failed.pexit == 1 and failed.outputs == ()
    assert failed.debugerror == BUCKET_DOWN and failed.lease_owner is None
    assert running.storage.names(broken.output_key) == []
    _succeeded_with_files(running, ok)


def test_a_kill_while_finishing_stores_no_more_files_and_the_worker_goes_on(
    store: TaskStore, backends: BackendCache, tmp_path: Path, project: Project
) -> None:
    killed, after = _submit(store, project, samples=3), _submit(store, project)
    with RunningWorker(store, backends, tmp_path) as running:
        running.storage.waiting.wait(60)  # the first file of three is on its way
        assert store.kill(project.id, killed.id, time.time()) is not None
        running.storage.gate.set()  # the upload in flight lands; no other file follows it
        ok = _wait(store, project, after.id, lambda t: t.status.terminal)
    final = store.get_task(project.id, task_id=killed.id)
    assert final.status is Status.CANCEL and final.outputs == () and final.postprocessendtime is None
    assert running.storage.names(killed.output_key) in ([], ["0.png"])
    _succeeded_with_files(running, ok)


def test_an_attempt_that_lost_its_lease_while_finishing_writes_nothing_more(
    store: TaskStore, backends: BackendCache, tmp_path: Path, project: Project
) -> None:
    settings = Settings(data_dir=tmp_path, lease_seconds=5.0)
    storage = GatedStorage(settings.outputs_dir)
    worker = Worker(settings, store, storage, backends, worker_id="test/paused")
    task = _submit(store, project, samples=2)
    with Finisher() as finisher:
        worker.process(store.claim("test/paused", settings.lease_seconds, time.time()), finisher)
        assert store.get_task(project.id, task_id=task.id).status is Status.END  # handed over, not finished
        storage.waiting.wait(60)
        # The worker seems gone (a long pause): its lease expires and another worker takes the task.
        store.expire_leases(time.time() + 3600, max_attempts=3)
        taken = store.claim("test/other", 60.0, time.time())
        assert taken is not None and taken.attempt == 2
        storage.gate.set()
    # Attempt 1 wrote no status and no file after the one in flight; attempt 2 holds the task, untouched.
    now = store.get_task(project.id, task_id=task.id)
    assert (now.status, now.attempt, now.lease_owner, now.outputs) == (Status.ACCEPT, 2, "test/other", ())
    assert now.pexit is None and now.debugerror == "" and now.endtime is None
    assert storage.names(task.output_key) in ([], ["0.png"])


def test_an_upload_in_flight_when_the_task_was_taken_over_never_overwrites_the_files_of_the_new_attempt(
    store: TaskStore, backends: BackendCache, tmp_path: Path, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, lease_seconds=5.0)
    late = GatedStorage(settings.outputs_dir)
    paused = Worker(settings, store, late, backends, worker_id="test/paused")
    other = Worker(settings, store, LocalStorage(settings.outputs_dir), backends, worker_id="test/other")
    task = _submit(store, project)
    backend = backends.get("flux1")
    generate = backend.generate
    # Two attempts seldom make the same bytes on a GPU; the tiny pipeline on a CPU does, so
    # attempt 1 makes another image here, for its file to show wherever it lands.
    monkeypatch.setattr(backend, "generate", lambda request, job: generate(replace(request, seed=request.seed + 1), job))
    with Finisher() as finisher:
        paused.process(store.claim("test/paused", settings.lease_seconds, time.time()), finisher)
        monkeypatch.setattr(backend, "generate", generate)
        assert late.waiting.wait(60)  # attempt 1's upload is in flight...
        store.expire_leases(time.time() + 3600, max_attempts=3)  # ...when its worker seems gone
        assert other.run_once()  # attempt 2 runs the task to the end: its file, recorded
        done = store.get_task(project.id, task_id=task.id)
        assert done.attempt == 2 and done.pexit == 0, done.debugerror
        [output] = done.outputs
        recorded = other.storage.path(output.key, output.name).read_bytes()
        late.gate.set()  # attempt 1's upload lands now; its final write is fenced off
    assert other.storage.path(output.key, output.name).read_bytes() == recorded  # attempt 2's file, untouched
    assert late.names(task.output_key) == ["0.png"]
    assert late.local.path(task.output_key, "0.png").read_bytes() != recorded  # the late file, where it landed
    assert store.get_task(project.id, task_id=task.id) == done

    normal = _submit(store, project)
    assert other.run_once()
    with TestClient(create_app(settings, store, other.storage, reaper=False)) as client:
        def seen(task_id: int) -> dict[str, str]:
            detail = client.post("/v1/Task/Detail", json={"taskid": str(task_id)},
                                 headers={"x-api-key": project.api_key}).json()
            [output] = detail["tasklist"][0]["outputs"]
            return output

        taken_over = seen(task.id)
        # What clients see of the task (SPEC.md section 4): 0.png, at a URL ending so, serving attempt 2's bytes.
        assert taken_over["name"] == "0.png" and taken_over["url"].endswith("/0.png")
        assert client.get(taken_over["url"].replace("http://testserver", "")).content == recorded
        # A task done on its first attempt: its files where they always were.
        assert seen(normal.id)["url"] == f"http://testserver/files/{normal.output_key}/0.png"


def test_a_stopping_worker_finishes_what_it_holds_and_takes_nothing_new(
    store: TaskStore, backends: BackendCache, tmp_path: Path, project: Project
) -> None:
    tasks = [_submit(store, project, seed=seed) for seed in range(4)]
    with RunningWorker(store, backends, tmp_path) as running:
        running.storage.waiting.wait(60)
        _wait(store, project, tasks[1].id, _reached(Status.END))  # one uploading, one waiting to be
        running.stop.set()  # what the first SIGTERM does
        time.sleep(0.5)
        assert running.thread.is_alive()  # it does not leave with tasks in hand
        running.storage.gate.set()
        running.thread.join(timeout=60)
        assert not running.thread.is_alive()
    final = [store.get_task(project.id, task_id=task.id) for task in tasks]
    held = [task for task in final if task.attempt]
    assert len(held) >= 2 and final[-1].status is Status.QUEUE  # it claimed no more than it could hold
    for task in held:
        _succeeded_with_files(running, task)
    for task in final:
        assert task.status in (Status.POSTPROCESS_END, Status.QUEUE) and task.lease_owner is None


def test_stop_now_hands_back_the_tasks_being_finished(
    store: TaskStore, backends: BackendCache, tmp_path: Path, project: Project
) -> None:
    tasks = [_submit(store, project, seed=seed, samples=2) for seed in range(2)]
    with RunningWorker(store, backends, tmp_path) as running:
        running.storage.waiting.wait(60)
        _wait(store, project, tasks[1].id, _reached(Status.END))
        running.stop.set()
        running.worker.stop_now("SIGTERM again")  # the second signal: hand everything back
        running.storage.gate.set()
        running.thread.join(timeout=60)
        _row(store, lambda w: w.state == "idle" and w.task_id is None)  # it holds nothing any more
    for task in tasks:
        back = store.get_task(project.id, task_id=task.id)
        assert back.status is Status.QUEUE and back.outputs == () and back.lease_owner is None
        assert "attempt 1: worker test/overlap stopped at once (SIGTERM again); queued again" in back.debugoutput
        assert running.storage.names(task.output_key) in ([], ["0.png"])  # at most the upload in flight


def test_with_overlap_off_a_task_is_finished_before_the_next_is_claimed(
    store: TaskStore, backends: BackendCache, tmp_path: Path, project: Project
) -> None:
    first, second = _submit(store, project, seed=1), _submit(store, project, seed=2)
    with RunningWorker(store, backends, tmp_path, overlap_postprocess=False) as running:
        running.storage.waiting.wait(60)
        time.sleep(0.5)  # time enough to claim the next task, were it not sequential
        assert store.get_task(project.id, task_id=second.id).status is Status.QUEUE
        running.storage.gate.set()
        done = [_wait(store, project, task.id, lambda t: t.status.terminal) for task in (first, second)]
    for task in done:
        _succeeded_with_files(running, task)
    assert done[1].accepttime >= done[0].postprocessendtime
