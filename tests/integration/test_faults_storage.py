"""The output storage failing while a worker writes a task's files: a full disk under a real
`fluxrun serve`, and an S3 endpoint that goes away, then its bucket.

What a user sees: the task ends (task_postprocess_end, pexit 1) with a debugerror naming the
cause and the setting to look at, and no output; no half-written file is left where outputs
live; the same worker process goes on, and once there is room (or a bucket) again the next
task succeeds.
"""

from __future__ import annotations

import errno
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.status import Status
from fluxrun.storage import open_storage
from fluxrun.store import open_store
from fluxrun.store.base import TaskRecord, TaskStore
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.loop import Worker
from tests.fakes.s3 import FAKE_CREDENTIALS, MotoS3
from tests.integration.server import Server

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
PIXEL_RUN = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
INPUTS = {"prompt": "a full disk", "steps": 2, "width": 256, "height": 256}
TMPFS_BYTES = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem of its own (tmpfs), mounted where `serve` keeps its output files."""
    outputs = tmp_path / "data" / "outputs"
    outputs.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(outputs)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small filesystem cannot be mounted here (needs root): {mounted.stderr.strip()}")
    try:
        yield outputs
    finally:
        subprocess.run(["umount", "-l", str(outputs)], check=False)


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem under ``folder`` is full; the file."""
    ballast = folder / "ballast"
    with ballast.open("wb", buffering=0) as handle:  # unbuffered: nothing left to fail at close
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return ballast


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_a_full_disk_fails_the_task_clearly_and_the_worker_goes_on_once_there_is_room(
    tmp_path: Path, small_disk: Path
) -> None:
    server = Server(tmp_path / "data").start()  # checks its storage at start: the disk is not full yet
    try:
        warm = server.post(PIXEL_RUN, INPUTS).json()["taskid"]  # the worker is up and writes files
        assert server.wait_for(warm)["pexit"] == "0"
        [worker] = server.worker_pids()
        before = _files(small_disk)

        ballast = _fill(small_disk)
        full = server.post(PIXEL_RUN, INPUTS).json()["taskid"]
        failed = server.wait_for(full)
        assert failed["status"] == "task_postprocess_end" and failed["pexit"] == "1", failed
        assert failed["outputs"] == []
        assert failed["debugerror"].startswith("FLUXRUN_DATA_DIR: cannot write output file 0.png under "), failed
        assert failed["debugerror"].endswith("(No space left on device)"), failed
        assert _files(small_disk) == sorted([*before, "ballast"])  # no half-written file anywhere

        ballast.unlink()  # room again
        after = server.post(PIXEL_RUN, INPUTS).json()["taskid"]
        done = server.wait_for(after)
        assert done["pexit"] == "0" and len(done["outputs"]) == 1, done
        download = httpx.get(done["outputs"][0]["url"], timeout=30)
        assert download.status_code == 200 and len(download.content) == int(done["outputs"][0]["size"])
        assert server.worker_pids() == [worker]  # the same worker process did all three
    finally:
        server.stop()


# -- S3: the endpoint away, then the bucket ---------------------------------------------------------
@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path / "moto.log").start()
    yield server
    server.stop()


def _submit(store: TaskStore, project_id: int) -> TaskRecord:
    params = PIXEL.validate({"prompt": "to a bucket", "steps": 2, "width": 64, "height": 64})
    return store.create_task(project_id, PIXEL.slug, params, PIXEL.cps)


def _ended(store: TaskStore, project_id: int, task: TaskRecord) -> TaskRecord:
    deadline = time.monotonic() + 120
    while not (current := store.get_task(project_id, task_id=task.id)).status.terminal:
        assert time.monotonic() < deadline, current
        time.sleep(0.05)
    return current


def test_an_s3_endpoint_that_goes_away_then_its_bucket_fail_one_task_each_and_the_worker_goes_on(
    tmp_path: Path, moto: MotoS3, backends: BackendCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    bucket = moto.new_bucket()
    settings = Settings(data_dir=tmp_path, s3_bucket=bucket, s3_endpoint_url=moto.url, s3_addressing="path",
                        idle_poll_seconds=0.2)
    store = open_store(settings.effective_database_url)
    store.migrate()
    project = store.create_project("p", "apikey")
    worker = Worker(settings, store, open_storage(settings), backends, worker_id="test/s3-faults")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    try:
        assert _ended(store, project.id, _submit(store, project.id)).pexit == 0

        moto.stop()  # the endpoint is gone: connections refused
        away = _ended(store, project.id, _submit(store, project.id))
        assert (away.status, away.pexit, away.outputs) == (Status.POSTPROCESS_END, 1, ())
        assert away.debugerror.startswith(f"FLUXRUN_S3_ENDPOINT_URL: cannot reach the S3 endpoint {moto.url} "
                                          f"while writing outputs/{away.output_key}/0.png"), away.debugerror

        moto.start()  # back on its port, empty: the bucket is gone
        gone = _ended(store, project.id, _submit(store, project.id))
        assert (gone.pexit, gone.outputs) == (1, ())
        assert gone.debugerror.startswith(f"FLUXRUN_S3_BUCKET: there is no bucket '{bucket}' at {moto.url}"), gone

        moto.client().create_bucket(Bucket=bucket)
        back = _ended(store, project.id, _submit(store, project.id))
        assert back.pexit == 0 and [o.name for o in back.outputs] == ["0.png"], back.debugerror
        stored = moto.client().list_objects_v2(Bucket=bucket)["Contents"]
        assert [o["Key"] for o in stored] == [f"outputs/{back.output_key}/0.png"]  # nothing of the failed ones
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=60)
        store.close()
