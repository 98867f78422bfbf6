"""Chaos: fluxrun scaled out, with processes dying under it.

Two `fluxrun api` and three `fluxrun worker` processes on one PostgreSQL schema and one S3
bucket (moto's server on loopback), as deploy/ lays them out on many hosts. 200 tasks are
submitted across both APIs while a worker that holds a task is killed with SIGKILL every few
seconds (at least 3 s apart, and only while another worker is up: a worker takes seconds to
load torch and its models again here) and started again half a second later, as systemd's
Restart=always would; one API process is killed and restarted midway. Workers run with
FLUXRUN_LEASE_SECONDS=2, so a killed attempt is re-queued within about 2.5 s; a task's last
allowed attempt is never the one killed, so every task can succeed.
Then, as a user and as an operator would see it:
- every task ended, and ended once: terminal through both APIs and in the database, no lease
  left, the attempt count within FLUXRUN_MAX_ATTEMPTS and equal to its lost attempts + 1;
  a WebSocket client on the API that stays up saw exactly one end per task;
- every success has its files in the bucket, of the sizes Task/Detail says, and its
  presigned urls download them;
- tasks whose worker was killed say "lost worker" in their debugoutput and still ended.
"""

from __future__ import annotations

import io
import json
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from websockets.sync.client import connect

from fluxrun.storage.base import attempt_key
from tests.conftest import PostgresSchema
from tests.fakes.s3 import FAKE_CREDENTIALS, MotoS3
from tests.integration.cluster import (
    ApiProcess,
    SignedClient,
    WorkerProcess,
    create_keys,
    fluxrun_cli,
    fluxrun_env,
)
from tests.integration.server import free_port

pytestmark = pytest.mark.slow

TASKS = 200
SUBMIT_EVERY_S = 0.1  # submissions spread over ~20 s, so the kills fall among them
KILL_EVERY_S = 3.0
RESTART_AFTER_S = 0.5  # deploy/systemd's RestartSec
LEASE_SECONDS = 2.0
MAX_ATTEMPTS = 3
SETTLE_DEADLINE_S = 180.0
TERMINAL = ("task_postprocess_end", "task_cancel")
RUNNING = ("task_accept", "task_assign", "task_preprocess_start", "task_preprocess_end", "task_start",
           "task_output", "task_end")
PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "black-forest-labs/flux-2-flex-t2i"
GIVEN_UP = re.compile(rf"stopped responding on each of {MAX_ATTEMPTS} attempts")


@dataclass(frozen=True)
class Submitted:
    taskid: str
    token: str
    samples: int


def task_body(index: int) -> tuple[str, dict[str, Any], int]:
    """Task ``index``: the tool, its inputs (tiny images, 2 steps) and its number of images."""
    if index % 4 == 3:
        fmt = "jpeg" if index % 8 == 7 else "png"
        return FLUX2, {"prompt": f"chaos {index}", "width": 64, "height": 64, "steps": 2, "outputFormat": fmt}, 1
    samples = 2 if index % 5 == 0 else 1
    return PIXEL, {"prompt": f"chaos {index}", "width": 64, "height": 64, "steps": 2, "samples": samples}, samples


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path / "moto.log").start()
    yield server
    server.stop()


class Chaos:
    """Kills a worker that holds a task every KILL_EVERY_S and starts it again; kills and
    restarts one API process once half the tasks are submitted."""

    def __init__(self, workers: list[WorkerProcess], api: ApiProcess, client: SignedClient, database_url: str,
                 submitted: list[Submitted]) -> None:
        self.workers = workers
        self.api = api
        self.client = client
        self.engine = create_engine(database_url)
        self.submitted = submitted
        self.stop = threading.Event()
        self.killed_pids: list[int] = []
        self.api_restarted = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Chaos:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.engine.dispose()

    def _run(self) -> None:
        try:
            next_kill = time.monotonic() + KILL_EVERY_S
            while not self.stop.wait(0.1):
                if not self.api_restarted.is_set() and len(self.submitted) >= TASKS // 2:
                    self.api.kill()
                    time.sleep(RESTART_AFTER_S)
                    self.api.start()
                    self.api.wait_ready(self.client)
                    self.api_restarted.set()
                if time.monotonic() >= next_kill and self._kill_a_busy_worker():
                    next_kill = time.monotonic() + KILL_EVERY_S
        except BaseException as exc:  # the test reports it
            self.error = exc

    def _kill_a_busy_worker(self) -> bool:
        """Kill a worker in the middle of a task, if one is and the others are up."""
        with self.engine.connect() as conn:
            # A task's last attempt is spared: the test wants tasks re-run, not given up on.
            owners = [row[0] for row in conn.execute(text(
                "SELECT lease_owner FROM tasks WHERE lease_owner IS NOT NULL AND attempt < :last"),
                {"last": MAX_ATTEMPTS})]
        busy = [w for w in self.workers if w.ready and any(o.endswith(w.worker_id_suffix) for o in owners)]
        # Restarting takes a worker seconds (torch, the models): keep another one serving.
        if not busy or sum(w.ready for w in self.workers) < 2:
            return False
        victim = busy[len(self.killed_pids) % len(busy)]
        self.killed_pids.append(victim.pid)
        victim.kill()  # SIGKILL: no goodbye, the lease just stops being renewed
        time.sleep(RESTART_AFTER_S)
        victim.start()
        return True


class SocketWatcher:
    """A WebSocket client on one API process that registers every task as it is submitted
    and counts the terminal messages it gets per task."""

    def __init__(self, api: ApiProcess) -> None:
        self.ws = connect(api.base_url.replace("http", "ws", 1) + "/v1", max_queue=None)
        self.tokens: queue.Queue[str] = queue.Queue()
        self.ends: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="socket", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> SocketWatcher:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.ws.close()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                while not self.tokens.empty():
                    self.ws.send(json.dumps({"type": "task_info", "tasktoken": self.tokens.get()}))
                try:
                    message = json.loads(self.ws.recv(timeout=0.2))
                except TimeoutError:
                    continue
                if message["type"] in TERMINAL:
                    self.ends[message["id"]] += 1
        except BaseException as exc:  # the test reports it
            self.error = exc


def test_every_task_ends_once_while_workers_are_killed_and_an_api_restarts(
    tmp_path: Path, postgres_schema: PostgresSchema, moto: MotoS3
) -> None:
    schema = postgres_schema
    started = time.monotonic()
    bucket = moto.new_bucket()
    env = fluxrun_env(
        FLUXRUN_DATABASE_URL=schema.url, FLUXRUN_MODELS="tiny", FLUXRUN_DEVICE="cpu",
        FLUXRUN_S3_BUCKET=bucket, FLUXRUN_S3_ENDPOINT_URL=moto.url, FLUXRUN_S3_ADDRESSING="path",
        FLUXRUN_LEASE_SECONDS=str(LEASE_SECONDS), FLUXRUN_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        FLUXRUN_REAPER_SECONDS="0.5", FLUXRUN_IDLE_POLL_SECONDS="0.5",
        FLUXRUN_PROJECT_CONCURRENCY="0",  # 200 tasks of one project go in at once: no per-project cap
        FLUXRUN_RATE_LIMIT_PER_SECOND="0",  # one key polls 200 tasks back to back: crashes are tested here, not rates
        # Three workers share two cores here: one thread each, or they fight over them.
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-creds"),
        **FAKE_CREDENTIALS,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    # The release procedure of deploy/: migrate once, then start the processes.
    fluxrun_cli({**env, "FLUXRUN_DATA_DIR": str(tmp_path / "admin")}, "db", "upgrade")
    key, secret = create_keys({**env, "FLUXRUN_DATA_DIR": str(tmp_path / "admin")}, "chaos")
    client = SignedClient(key, secret)
    # One data directory per process, as on separate hosts (the workers keep their tiny
    # models there: one folder for the three, so they are built once).
    apis = [ApiProcess(f"api{n}", free_port(), {**env, "FLUXRUN_DATA_DIR": str(tmp_path / f"api{n}")}, logs)
            for n in range(2)]
    worker_env = {**env, "FLUXRUN_DATA_DIR": str(tmp_path / "workers")}
    workers = [WorkerProcess(f"worker{n}", worker_env, logs) for n in range(3)]
    processes = [*apis, *workers]
    try:
        for api in apis:
            api.start()
        workers[0].start().wait_ready()  # builds the tiny models the others then load
        for worker in workers[1:]:
            worker.start()
        for api in apis:
            api.wait_ready(client)
        for worker in workers[1:]:
            worker.wait_ready()
        ready_s = time.monotonic() - started

        submitted: list[Submitted] = []
        run_errors = 0  # Run requests cut off by the API restart, sent again to the other API
        lock = threading.Lock()
        chaos_started = time.monotonic()

        def submit(index: int) -> None:
            nonlocal run_errors
            time.sleep(max(0.0, chaos_started + index * SUBMIT_EVERY_S - time.monotonic()))
            tool, body, samples = task_body(index)
            for turn in range(100):
                api = (index + turn) % 2
                try:
                    answer = client.post(apis[api].base_url, f"/v1/Run/{tool}", body).json()
                except httpx.TransportError:
                    with lock:
                        run_errors += 1
                    time.sleep(0.1)
                    continue
                assert answer["result"] is True, answer
                with lock:
                    submitted.append(Submitted(answer["taskid"], answer["socketaccesstoken"], samples))
                watcher.tokens.put(answer["socketaccesstoken"])
                return
            raise AssertionError(f"task {index} could not be submitted to either API")

        with SocketWatcher(apis[0]) as watcher, Chaos(workers, apis[1], client, schema.url, submitted) as chaos:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(submit, range(TASKS)))
            submit_s = time.monotonic() - chaos_started
            engine = create_engine(schema.url)
            deadline = time.monotonic() + SETTLE_DEADLINE_S
            while True:
                with engine.connect() as conn:
                    open_count = conn.execute(text("SELECT count(*) FROM tasks WHERE status NOT IN "
                                                   "('task_postprocess_end', 'task_cancel')")).scalar_one()
                if open_count == 0:
                    break
                assert chaos.error is None, chaos.error
                assert time.monotonic() < deadline, f"{open_count} tasks never ended"
                time.sleep(0.5)
            settle_s = time.monotonic() - chaos_started
            # The end events of the last tasks may still be on their way to the socket.
            socket_deadline = time.monotonic() + 30
            while len(watcher.ends) < TASKS and time.monotonic() < socket_deadline and watcher.error is None:
                time.sleep(0.2)
        assert chaos.error is None, chaos.error
        assert watcher.error is None, watcher.error
        assert chaos.api_restarted.is_set()

        # -- the database, as an operator sees it ---------------------------------------------
        with engine.connect() as conn:
            rows = {str(r.id): r for r in conn.execute(text(
                "SELECT id, status, attempt, lease_owner, lease_expires_at, pexit, debugoutput, debugerror, "
                "output_key FROM tasks"))}
        engine.dispose()
        ids = [s.taskid for s in submitted]
        assert len(set(ids)) == TASKS
        orphans = set(rows) - set(ids)  # a Run that the killed API committed but never answered
        assert set(ids) <= set(rows) and len(orphans) <= run_errors
        lost_attempts = 0
        for taskid, row in rows.items():
            assert row.status in TERMINAL and row.lease_owner is None and row.lease_expires_at is None, row
            assert 1 <= row.attempt <= MAX_ATTEMPTS, row
            lost = row.debugoutput.count("lost worker")
            lost_attempts += lost
            if row.pexit == 0:
                assert row.attempt == lost + 1, row.debugoutput  # one claim per lost attempt, then the good one
            else:  # only a task whose every attempt lost its worker may fail here
                assert GIVEN_UP.search(row.debugerror) and lost == row.attempt == MAX_ATTEMPTS, row
        lost_tasks = [t for t, r in rows.items() if "lost worker" in r.debugoutput]
        killed = {str(pid) for pid in chaos.killed_pids}
        lost_to_kills = [t for t in lost_tasks
                         if {m for m in re.findall(r"lost worker \S+/(\d+)", rows[t].debugoutput)} & killed]
        assert chaos.killed_pids and lost_to_kills, "no kill landed on a running task"

        # -- the bucket ---------------------------------------------------------------------------
        s3 = moto.client()
        objects: dict[str, int] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="outputs/"):
            objects.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})

        # -- what users see, through either API ---------------------------------------------------
        successes = failures = downloads = 0
        for task in submitted:
            seen = [client.detail(api.base_url, task.taskid) for api in apis]
            assert seen[0]["status"] == seen[1]["status"] and seen[0]["status"] in TERMINAL, seen
            assert watcher.ends[task.taskid] == 1, (task, watcher.ends[task.taskid])
            detail = seen[0]
            if detail["pexit"] != "0":
                failures += 1
                continue
            successes += 1
            assert len(detail["outputs"]) == task.samples, detail
            for output in detail["outputs"]:
                # The attempt that ended it stored its files under its own key.
                row = rows[task.taskid]
                key = f"outputs/{attempt_key(row.output_key, row.attempt)}/{output['name']}"
                assert objects.get(key) == int(output["size"]), (key, output)
                downloaded = httpx.get(output["url"], timeout=30)
                assert downloaded.status_code == 200 and len(downloaded.content) == int(output["size"])
                assert Image.open(io.BytesIO(downloaded.content)).size == (64, 64)
                downloads += 1
        for task in (t for t in submitted if t.taskid in lost_to_kills):
            assert "lost worker" in client.detail(apis[1].base_url, task.taskid)["debugoutput"]

        print(f"\nchaos: {TASKS} tasks ({len(orphans)} more from Runs cut off by the API restart, "
              f"{run_errors} Run requests sent again), {successes} succeeded, {failures} failed after "
              f"{MAX_ATTEMPTS} lost attempts; {len(chaos.killed_pids)} worker kills, 1 API restart; "
              f"{lost_attempts} attempts lost and re-run ({len(lost_to_kills)} tasks hit by a kill, "
              f"{len(lost_tasks) - len(lost_to_kills)} by a late heartbeat); {downloads} files downloaded; "
              f"start-up {ready_s:.0f} s, submission {submit_s:.0f} s, all ended after {settle_s:.0f} s, "
              f"total {time.monotonic() - started:.0f} s")
    finally:
        client.close()
        for process in processes:
            process.kill()
