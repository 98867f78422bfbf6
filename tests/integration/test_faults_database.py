"""The database away for a while, under a running `fluxrun serve`.

PostgreSQL: the server's processes reach it through a TCP proxy (tests/fakes/tcp_proxy.py)
that the test cuts, as if the database were restarted or the network between the hosts
failed, for longer than a lease, while a task generates and others wait in the queue; then
restores. SQLite: another process holds the file's write lock beyond the busy timeout.
What a user sees:
- while it is away, every API call that needs the database answers HTTP 503 with a
  Retry-After and SPEC.md section 7's error body saying so (a WebSocket registration: the
  refusal with that message, closed with 1013, try again later); /health still answers;
- the running task goes on and ends; the queued ones run once it is back; no task is lost,
  and no attempt either: with FLUXRUN_MAX_ATTEMPTS=1 a lease taken over would have failed
  the task ("lost worker"), so every task ending well on its first attempt shows the
  workers and the reaper waited for each other rather than for the clock;
- each process says once that the database went away and once that it came back.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fluxrun.api.app import create_app
from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.errors import DatabaseUnavailable
from fluxrun.storage.local import LocalStorage
from fluxrun.store.sqlite import SqliteTaskStore
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.loop import Worker
from tests.conftest import PostgresSchema
from tests.fakes.tcp_proxy import TcpProxy
from tests.integration.cluster import fluxrun_env
from tests.integration.server import TERMINAL, Server, free_port

PIXEL_RUN = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
LONG = {"prompt": "runs through the outage", "steps": 24, "width": 512, "height": 512}
QUICK = {"prompt": "waits in the queue", "steps": 2, "width": 128, "height": 128}
LEASE_SECONDS = 2.0
OUTAGE_SECONDS = 2.5 * LEASE_SECONDS  # long enough for every lease to run out
UNAVAILABLE = "The server cannot reach its database right now; try again in 5 seconds."


def _records(server: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def _run(server: Server, inputs: dict[str, Any]) -> str:
    answer = server.post(PIXEL_RUN, inputs).json()
    assert answer["result"], answer
    return answer["taskid"]


def _wait_until_generating(server: Server, taskid: str) -> None:
    deadline = time.monotonic() + 120
    while server.detail(taskid)["status"] != "task_output":
        assert time.monotonic() < deadline, server.log()[-6000:]
        time.sleep(0.05)


def _assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    assert answer.json() == {"result": False, "errors": [{"code": 0, "message": UNAVAILABLE}]}


def _assert_all_ended_on_their_first_attempt(server: Server, taskids: list[str]) -> None:
    for taskid in taskids:
        task = server.wait_for(taskid, TERMINAL, timeout=120)
        assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", task
        assert len(task["outputs"]) == 1, task
        assert httpx.get(task["outputs"][0]["url"], timeout=30).status_code == 200
        assert "attempt 1: worker" in task["debugoutput"] and "attempt 2" not in task["debugoutput"], task
        assert "lost worker" not in task["debugoutput"], task


@pytest.mark.slow
def test_postgres_away_for_longer_than_a_lease_loses_no_task(tmp_path: Path, postgres_schema: PostgresSchema) -> None:
    schema = postgres_schema
    target = urlsplit(schema.base_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    through_proxy = schema.url.replace(f"@{target.netloc.split('@')[-1]}", f"@127.0.0.1:{proxy.port}", 1)
    server = Server(tmp_path / "data", FLUXRUN_DATABASE_URL=through_proxy, FLUXRUN_LEASE_SECONDS=str(LEASE_SECONDS),
                    FLUXRUN_MAX_ATTEMPTS="1", FLUXRUN_LOG_FORMAT="json").start()
    try:
        running = _run(server, LONG)
        queued = [_run(server, QUICK) for _ in range(3)]
        token = server.detail(running)["socketaccesstoken"]
        _wait_until_generating(server, running)

        proxy.cut()
        cut_at = time.monotonic()
        _assert_unavailable(server.post(PIXEL_RUN, QUICK))
        _assert_unavailable(server.post("/v1/Task/Detail", {"taskid": running}))
        _assert_unavailable(server.post("/v1/Task/List", {}))
        assert httpx.get(server.base_url + "/health").status_code == 200
        ready = httpx.get(server.base_url + "/ready")
        assert ready.status_code == 503 and ready.json()["failed"] == ["database"]
        assert "Connection refused" in ready.json()["checks"]["database"]
        with connect(server.base_url.replace("http", "ws", 1) + "/v1") as socket:
            socket.send(json.dumps({"type": "task_info", "tasktoken": token}))
            assert json.loads(socket.recv(timeout=10)) == {
                "type": "task_info", "tasktoken": token, "message": UNAVAILABLE, "result": False}
            with pytest.raises(ConnectionClosed) as closed:
                socket.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013  # try again later
        time.sleep(max(0.0, cut_at + OUTAGE_SECONDS - time.monotonic()))
        proxy.restore()

        after = _run(server, QUICK)  # the first call after the outage just works
        _assert_all_ended_on_their_first_attempt(server, [running, *queued, after])
    finally:
        server.stop()
        proxy.cut()

    records = _records(server)
    processes = {r["process"] for r in records}
    assert len(processes) == 2  # serve (the API) and its worker
    for pid in processes:
        said = [r["message"] for r in records if r["process"] == pid]
        assert sum(m.startswith("the database is unreachable") for m in said) == 1, said
        assert sum(m.startswith("the database is reachable again") for m in said) == 1, said
    # Nothing of the outage came with a traceback.
    assert not [r for r in records if "exc_info" in r or "Traceback" in r["message"]]


@pytest.mark.slow
def test_a_sqlite_file_locked_beyond_the_busy_timeout_answers_503_and_loses_no_task(
    tmp_path: Path, backends: BackendCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # In-process: the API (with its reaper) and a worker on one SQLite file, each with its own
    # store, as `fluxrun serve` runs them; a busy timeout of 0.3 s instead of 30 s, so that a
    # lock held for 2.5 leases is an outage for both.
    url = f"sqlite:///{tmp_path / 'fluxrun.db'}"
    settings = Settings(data_dir=tmp_path, lease_seconds=LEASE_SECONDS, max_attempts=1, reaper_seconds=0.2,
                        idle_poll_seconds=0.2)
    api_store, worker_store = SqliteTaskStore(url, busy_timeout_ms=300), SqliteTaskStore(url, busy_timeout_ms=300)
    api_store.migrate()
    project = api_store.create_project("p", "apikey")
    storage = LocalStorage(settings.outputs_dir)
    generate = backends.get("flux1").generate

    def slow(request: Any, job: Any) -> Any:  # steps a busy machine cannot shorten or stretch much
        if request.prompt == LONG["prompt"]:
            for step in range(40):  # 7 s: it generates through the whole outage
                time.sleep(0.18)
                job.step(step + 1, 40)
        return generate(request, job)

    monkeypatch.setattr(backends.get("flux1"), "generate", slow)
    worker = Worker(settings, worker_store, storage, backends, worker_id="test/sqlite")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    headers = {"x-api-key": project.api_key}
    try:
        with TestClient(create_app(settings, api_store, storage)) as client:
            def run(inputs: dict[str, Any]) -> str:
                answer = client.post(PIXEL_RUN, json=inputs, headers=headers).json()
                assert answer["result"], answer
                return answer["taskid"]

            def detail(taskid: str) -> dict[str, Any]:
                return client.post("/v1/Task/Detail", json={"taskid": taskid}, headers=headers).json()["tasklist"][0]

            running = run({**QUICK, "prompt": LONG["prompt"]})
            queued = [run(QUICK) for _ in range(2)]
            thread.start()
            deadline = time.monotonic() + 60
            while detail(running)["status"] != "task_output":
                assert time.monotonic() < deadline
                time.sleep(0.05)

            holder = sqlite3.connect(tmp_path / "fluxrun.db", isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")  # a backup tool, or `sqlite3 fluxrun.db` left in a transaction
            locked_at = time.monotonic()
            try:
                refused = client.post(PIXEL_RUN, json=QUICK, headers=headers)
                assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
                assert refused.json() == {"result": False, "errors": [{"code": 0, "message": (
                    "The server's database is locked by another process right now; try again in 5 seconds.")}]}
                while time.monotonic() < locked_at + OUTAGE_SECONDS:  # SQLite still serves reads
                    assert detail(running)["status"] == "task_output"
                    time.sleep(0.2)
            finally:
                holder.execute("ROLLBACK")
                holder.close()

            for taskid in [running, *queued]:
                deadline = time.monotonic() + 60
                while (task := detail(taskid))["status"] not in TERMINAL:
                    assert time.monotonic() < deadline, task
                    time.sleep(0.05)
                assert task["pexit"] == "0" and len(task["outputs"]) == 1, task
                assert "lost worker" not in task["debugoutput"] and "attempt 2" not in task["debugoutput"]
            assert float(detail(running)["elapsedseconds"]) > OUTAGE_SECONDS  # it generated through it
        said = [r.getMessage() for r in caplog.records if r.name == "fluxrun.store"]
        # One line each way per store (the API's, the worker's), however many calls failed or read.
        assert sum(m.startswith("the database is unreachable (OperationalError: database is locked)")
                   for m in said) == 2, said
        assert sum(m.startswith("the database is reachable again") for m in said) == 2, said
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=60)
        api_store.close()
        worker_store.close()


# -- the store itself: what the API and the workers build on ------------------------------------
class Outage:
    """Takes the database away from a store and brings it back: a proxy cut (PostgreSQL) or
    another process holding the write lock past the busy timeout (SQLite)."""

    def __init__(self, kind: str, tmp_path: Path, schema: PostgresSchema | None) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.path = tmp_path / "fluxrun.db"
            self.url = f"sqlite:///{self.path}"
            self.holder: sqlite3.Connection | None = None
        else:
            assert schema is not None
            target = urlsplit(schema.base_url)
            self.proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
            self.url = schema.url.replace(f"@{target.netloc.split('@')[-1]}", f"@127.0.0.1:{self.proxy.port}", 1)

    def open(self) -> Any:
        from fluxrun.store import open_store

        return SqliteTaskStore(self.url, busy_timeout_ms=300) if self.kind == "sqlite" else open_store(self.url)

    def begin(self) -> None:
        if self.kind == "sqlite":
            self.holder = sqlite3.connect(self.path, isolation_level=None)
            self.holder.execute("BEGIN EXCLUSIVE")
        else:
            self.proxy.cut()

    def end(self) -> None:
        if self.kind == "sqlite":
            assert self.holder is not None
            self.holder.execute("ROLLBACK")
            self.holder.close()
        else:
            self.proxy.restore()

    def close(self) -> None:
        if self.kind != "sqlite":
            self.proxy.cut()


@pytest.fixture(params=["sqlite", "postgres"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    schema = None
    if request.param == "postgres":
        schema = PostgresSchema.created_or_skip()
    made = Outage(request.param, tmp_path, schema)
    try:
        yield made
    finally:
        made.close()
        if schema is not None:
            schema.drop()


def test_the_store_says_unavailable_and_the_reaper_waits_a_lease_once_it_is_back(outage: Outage) -> None:
    api, worker = outage.open(), outage.open()
    api.migrate()
    project = api.create_project("p", "apikey")
    for n in range(2):
        api.create_task(project.id, "desertPixel/Flat-Pixel-Art-FLUX", {"prompt": str(n)}, Decimal("0.1"))
    live, dead = worker.claim("w/live", 1.0, time.time()), worker.claim("w/dead", 1.0, time.time())

    outage.begin()
    try:
        with pytest.raises(DatabaseUnavailable) as refused:
            api.list_tasks(project.id, start=0, limit=10) if outage.kind == "postgres" else api.use_nonce(
                project.id, "n", time.time(), None)
        assert refused.value.http_status == 503 and refused.value.headers == {"Retry-After": "5"}
        assert refused.value.cause and str(refused.value) in (
            UNAVAILABLE, "The server's database is locked by another process right now; try again in 5 seconds.")
        with pytest.raises(DatabaseUnavailable):
            api.expire_leases(time.time(), 3, settle_seconds=1.0)
        assert api.availability.settled_for() == 0.0
        time.sleep(1.5)  # both leases run out meanwhile
    finally:
        outage.end()

    # Back: both leases are out of date, but nobody could renew them. None is taken for a lease's length...
    assert api.expire_leases(time.time(), 3, settle_seconds=1.0) == []
    worker.heartbeat(live, 30.0, time.time())  # ...in which the live worker renews its own
    time.sleep(1.0)
    [expired] = api.expire_leases(time.time(), 3, settle_seconds=1.0)  # and the dead one's goes
    assert (expired.task_id, expired.requeued) == (dead.task_id, True)
    assert api.get_task(project.id, task_id=live.task_id).lease_owner == "w/live"
    api.close()
    worker.close()


def test_a_worker_told_to_stop_now_while_the_database_is_away_stops_and_leaves_the_task_to_its_lease(
    tmp_path: Path, backends: BackendCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second SIGTERM (or the grace running out) hands the task back to the queue; with the
    # database away that write cannot be made, and the worker must not wait for it.
    url = f"sqlite:///{tmp_path / 'fluxrun.db'}"
    settings = Settings(data_dir=tmp_path, lease_seconds=LEASE_SECONDS, idle_poll_seconds=0.2)
    store = SqliteTaskStore(url, busy_timeout_ms=300)
    store.migrate()
    project = store.create_project("p", "apikey")
    generate = backends.get("flux1").generate

    def endless(request: Any, job: Any) -> Any:
        for step in range(1000):
            time.sleep(0.05)
            job.step(step + 1, 1000)
        return generate(request, job)

    monkeypatch.setattr(backends.get("flux1"), "generate", endless)
    tool = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
    params = tool.validate({"prompt": "p", "steps": 2, "width": 64, "height": 64})
    task = store.create_task(project.id, tool.slug, params, tool.cps)
    worker = Worker(settings, store, LocalStorage(settings.outputs_dir), backends, worker_id="test/stop-now")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    holder = sqlite3.connect(tmp_path / "fluxrun.db", isolation_level=None)
    try:
        deadline = time.monotonic() + 60
        while store.get_task(project.id, task_id=task.id).status.value != "task_output":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        holder.execute("BEGIN EXCLUSIVE")
        stop.set()
        worker.stop_now("SIGTERM again")
        thread.join(timeout=10)
        assert not thread.is_alive()  # it did not wait for the database
    finally:
        holder.execute("ROLLBACK") if holder.in_transaction else None
        holder.close()
        stop.set()
        thread.join(timeout=60)
    left = store.get_task(project.id, task_id=task.id)
    assert left.status.value == "task_output" and left.lease_owner == "test/stop-now"  # for its lease to expire
    [requeued] = store.expire_leases(time.time() + LEASE_SECONDS + 1, max_attempts=3)
    assert requeued.task_id == task.id and requeued.requeued
    store.close()


@pytest.mark.parametrize("command", ["serve", "api"])
def test_a_server_started_without_its_database_says_so_in_one_line_and_exits(command: str, tmp_path: Path) -> None:
    nothing_there = free_port()  # nothing listens on it: connection refused
    env = fluxrun_env(FLUXRUN_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{nothing_there}/fluxrun")
    args = ["--port", str(free_port()), "--data-dir", str(tmp_path / "data")]
    done = subprocess.run([sys.executable, "-m", "fluxrun", command, *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1  # not EXIT_CONFIG: a supervisor starts it again, the database may be back
    output = (done.stdout + done.stderr).strip()
    assert output.startswith("FLUXRUN_DATABASE_URL: cannot reach the database (OperationalError: ")
    assert "Connection refused" in output and "Traceback" not in output and len(output.splitlines()) <= 2
