"""Stopping a real `fluxrun serve` and its workers, and what its JSON logs look like."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from fluxrun.store import open_store
from fluxrun.store.base import WorkerRecord
from tests.integration.server import TERMINAL, Server

PIXEL_RUN = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
# Long enough on a busy CPU to be signalled while it runs.
SLOW = {"prompt": "a long one", "steps": 30, "width": 1024, "height": 1024}
QUICK = {"prompt": "a quick one", "steps": 2, "width": 256, "height": 256}
RUNNING = ("task_start", "task_output")


def _run(server: Server, inputs: dict[str, Any]) -> str:
    answer = server.post(PIXEL_RUN, inputs).json()
    assert answer["result"], answer
    return answer["taskid"]


def _attempt_pid(server: Server, taskid: str, attempt: int) -> int:
    """The pid of the worker running ``attempt`` of the task, once it generates."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        task = server.detail(taskid)
        found = re.search(rf"attempt {attempt}: worker [^/\s]+/(\d+)", task["debugoutput"])
        if found and task["status"] in RUNNING:
            return int(found.group(1))
        assert task["status"] not in TERMINAL, task
        time.sleep(0.05)
    raise AssertionError(f"attempt {attempt} of task {taskid} never started:\n{server.log()[-6000:]}")


def _registry(server: Server) -> dict[int, WorkerRecord]:
    """The worker registry, as `fluxrun workers` reads it."""
    store = open_store(f"sqlite:///{server.data_dir / 'fluxrun.db'}")
    try:
        return {w.pid: w for w in store.list_workers()}
    finally:
        store.close()


def _wait(condition: Any, what: str, server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened:\n{server.log()[-6000:]}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers, JSON logs, and a lease so long that a task whose worker vanished would
    sit far beyond this test's patience: only a hand-back sends it on at once."""
    running = Server(tmp_path_factory.mktemp("pair") / "data", workers=2, FLUXRUN_LOG_FORMAT="json",
                     FLUXRUN_LEASE_SECONDS="600", FLUXRUN_MAX_ATTEMPTS="1").start()
    _wait(lambda: len([w for w in _registry(running).values() if w.state == "idle"]) == 2, "two idle workers", running)
    yield running
    running.stop()


def test_a_worker_told_twice_to_stop_hands_its_task_back_and_another_finishes_it(pair: Server) -> None:
    taskid = _run(pair, SLOW)
    first = _attempt_pid(pair, taskid, attempt=1)
    assert _registry(pair)[first].state == "busy" and _registry(pair)[first].task_id == int(taskid)

    os.kill(first, signal.SIGTERM)  # finish the task, then exit...
    _wait(lambda: _registry(pair)[first].state == "stopping", "the worker marked stopping", pair)
    time.sleep(1.2)  # a second signal within a second is taken for the same one
    os.kill(first, signal.SIGTERM)  # ...no: now

    task = pair.wait_for(taskid, timeout=240)
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", task
    assert len(task["outputs"]) == 1
    assert re.search(rf"attempt 1: worker [^/\s]+/{first} stopped at once \(SIGTERM again\); queued again",
                     task["debugoutput"]), task["debugoutput"]
    second = re.search(r"attempt 2: worker [^/\s]+/(\d+)", task["debugoutput"])
    assert second and int(second.group(1)) != first
    assert "lost worker" not in task["debugoutput"]  # with FLUXRUN_MAX_ATTEMPTS=1 a lost attempt would have failed it
    _wait(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE,
          "the first worker's exit", pair)
    assert _registry(pair)[first].state == "stopped"  # a clean exit, marked in the registry


def test_json_logs_one_object_a_line_and_lines_about_a_task_carry_its_id(pair: Server) -> None:
    taskid = _run(pair, QUICK)
    assert pair.wait_for(taskid)["pexit"] == "0"
    lines = [line for line in pair.log().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    assert all({"time", "level", "logger", "process", "message"} <= set(r) for r in records)

    about_tasks = [r for r in records if re.match(r"task (\d+)\b", r["message"])]
    assert about_tasks, "no line about a task"
    for record in about_tasks:
        assert record.get("task_id") == int(re.match(r"task (\d+)", record["message"]).group(1)), record
    finished = [r for r in records if r.get("task_id") == int(taskid) and r["logger"] == "fluxrun.worker"]
    assert any("image(s) in" in r["message"] for r in finished), finished
    # The server's access line of a request about the task carries the task too.
    detail_lines = [r for r in records if r["logger"] == "uvicorn.access" and "/v1/Task/Detail" in r["message"]]
    assert detail_lines and all("task_id" in r for r in detail_lines)
    assert any(r["task_id"] == int(taskid) and r["http"]["status"] == 200 for r in detail_lines)


def test_sigterm_lets_the_running_task_finish_refuses_new_runs_then_exits(tmp_path) -> None:
    server = Server(tmp_path / "data", workers=1, FLUXRUN_DRAIN_SECONDS="1", FLUXRUN_LOG_FORMAT="json").start()
    try:
        taskid = _run(server, SLOW)
        worker = _attempt_pid(server, taskid, attempt=1)
        server.process.send_signal(signal.SIGTERM)  # to serve alone, as an orchestrator does

        refused = server.post(PIXEL_RUN, QUICK)
        assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
        assert refused.json()["result"] is False and "shutting down" in refused.json()["errors"][0]["message"]
        listed = server.post("/v1/Task/List", {})  # other calls are still answered while draining
        assert listed.status_code == 200 and listed.json()["total"] == "1"

        task = server.wait_for(taskid, timeout=240)  # Task/Detail keeps working until the end
        assert task["status"] == "task_postprocess_end" and task["pexit"] == "0" and len(task["outputs"]) == 1
        assert server.process.wait(timeout=120) == 0
        assert not psutil.pid_exists(worker)

        records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        # The worker heard the signal with the task in hand, finished it, and stopped.
        heard = [r for r in records if r["message"].startswith("SIGTERM: finishing the current task")]
        assert heard and heard[0].get("task_id") == int(taskid)
        ends = [r["message"] for r in records if r["process"] == worker]
        assert any(m.startswith(f"task {taskid}: 1 image(s)") for m in ends) and ends[-1].endswith("stopped")
    finally:
        server.stop()


def test_serve_passes_a_second_sigterm_on_and_the_task_goes_back_to_the_queue(tmp_path) -> None:
    server = Server(tmp_path / "data", workers=1, FLUXRUN_LEASE_SECONDS="600").start()
    try:
        taskid = _run(server, SLOW)
        _attempt_pid(server, taskid, attempt=1)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_log("finishing the current task")
        time.sleep(1.2)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) == 0
    finally:
        server.stop()
    store = open_store(f"sqlite:///{server.data_dir / 'fluxrun.db'}")
    try:
        task = store.get_task(store.list_projects()[0].id, task_id=int(taskid))
        assert task.status.value == "task_queue" and "stopped at once (SIGTERM again); queued again" in task.debugoutput
        assert [w.state for w in store.list_workers()] == ["stopped"]
    finally:
        store.close()
