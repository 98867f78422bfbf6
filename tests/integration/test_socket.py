"""The WebSocket at /v1 of a real `fluxrun serve` (API and worker in separate processes),
on SQLite and on PostgreSQL, with the `websockets` client a user would use."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import BACKENDS, PostgresSchema
from tests.integration.server import Server

pytestmark = pytest.mark.slow

PIXEL = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
STATUS_ORDER = ["task_queue", "task_accept", "task_assign", "task_preprocess_start", "task_preprocess_end",
                "task_start", "task_output", "task_end", "task_postprocess_end"]
OUTPUT_FIELDS = ("name", "contenttype", "size", "url")
WAIT = 60.0


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings: dict[str, str] = {}
    schema = None
    if request.param == "postgres":
        schema = PostgresSchema.created_or_skip()
        settings["FLUXRUN_DATABASE_URL"] = schema.url
    # Idle workers poll every 30 s: tasks start promptly only if the event bus wakes them.
    running = Server(tmp_path_factory.mktemp("socket") / "data", FLUXRUN_IDLE_POLL_SECONDS="30", **settings)
    try:
        running.start()
        running.wait_for_log("ready (tiny models")  # the worker is up and idle
        yield running
    finally:
        running.stop()
        if schema:
            schema.drop()


class Socket:
    def __init__(self, server: Server) -> None:
        # A socket the test reads later keeps every message meanwhile (and answers pings).
        self.ws: ClientConnection = connect(server.base_url.replace("http", "ws", 1) + "/v1", max_queue=None)

    def register(self, token: str, **extra: Any) -> None:
        self.ws.send(json.dumps({"type": "task_info", "tasktoken": token, **extra}))

    def next(self, timeout: float = WAIT) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=timeout))

    def until_end(self, *taskids: str) -> dict[str, list[dict[str, Any]]]:
        """Every message, per task, until each of ``taskids`` reached a terminal status."""
        seen: dict[str, list[dict[str, Any]]] = {taskid: [] for taskid in taskids}
        open_ids = set(taskids)
        deadline = time.monotonic() + 120
        while open_ids:
            message = self.next(timeout=max(0.1, deadline - time.monotonic()))
            seen[message["id"]].append(message)
            if message["type"] in ("task_postprocess_end", "task_cancel"):
                open_ids.discard(message["id"])
        return seen

    def close(self) -> None:
        self.ws.close()


def _run(server: Server, **inputs: Any) -> dict[str, Any]:
    answer = server.post(PIXEL, {"prompt": "a cat", "steps": 2, "width": 128, "height": 128, **inputs}).json()
    assert answer["result"], answer
    return answer


def _long(server: Server) -> dict[str, Any]:
    """A task that keeps the worker busy for seconds, running when this returns."""
    run = _run(server, steps=40, width=1024, height=1024)
    server.wait_for(run["taskid"], ("task_start", "task_output"))
    return run


def _outputs(task: dict[str, Any]) -> list[dict[str, str]]:
    return [{key: output[key] for key in OUTPUT_FIELDS} for output in task["outputs"]]


def _kill(server: Server, taskid: str) -> None:
    server.post("/v1/Task/Kill", {"taskid": taskid})


def test_a_client_sees_each_status_then_every_step_then_the_outputs(server: Server) -> None:
    blocker = _long(server)  # so the watched task is still queued when the client registers
    run = _run(server, steps=4)
    socket = Socket(server)
    try:
        socket.register(run["socketaccesstoken"])
        first = socket.next()
        assert first["type"] == "task_queue", first
        _kill(server, blocker["taskid"])  # now the worker takes the watched task
        messages = [first] + socket.until_end(run["taskid"])[run["taskid"]]
    finally:
        socket.close()
    kinds = [m["type"] for m in messages]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert collapsed == STATUS_ORDER, kinds
    for message in messages:
        assert message["id"] == run["taskid"] and message["tasktoken"] == run["socketaccesstoken"]
        assert message["result"] is True
    progress = [m["message"] for m in messages if m["type"] == "task_output"]
    assert [p["stepCurrent"] for p in progress] == ["1", "2", "3", "4"]
    assert all(p["stepTotal"] == "4" and p["type"] == "progressGenerate" for p in progress)
    assert all(isinstance(value, str) for p in progress for value in p.values())
    assert progress[-1]["percentage"] == "100"
    assert all(m["message"] is None for m in messages if m["type"] not in ("task_output", "task_postprocess_end"))
    task = server.detail(run["taskid"])
    assert task["pexit"] == "0" and messages[-1]["message"] == _outputs(task) and len(task["outputs"]) == 1


def test_a_client_that_registers_after_the_end_gets_the_end_at_once(server: Server) -> None:
    run = _run(server)
    task = server.wait_for(run["taskid"])
    socket = Socket(server)
    try:
        socket.register(run["socketaccesstoken"])
        message = socket.next()
    finally:
        socket.close()
    assert message == {"type": "task_postprocess_end", "id": run["taskid"], "tasktoken": run["socketaccesstoken"],
                       "message": _outputs(task), "result": True}


def test_two_clients_on_one_task_and_two_tasks_on_one_client(server: Server) -> None:
    first, second = _run(server), _run(server, samples=2)
    one, other = Socket(server), Socket(server)
    try:
        one.register(first["socketaccesstoken"])
        other.register(first["socketaccesstoken"])
        other.register(second["socketaccesstoken"])
        seen_by_one = one.until_end(first["taskid"])
        seen_by_other = other.until_end(first["taskid"], second["taskid"])
    finally:
        one.close()
        other.close()
    for run in (first, second):
        task = server.detail(run["taskid"])
        watchers = [seen_by_other] + ([seen_by_one] if run is first else [])
        for seen in watchers:
            end = seen[run["taskid"]][-1]
            assert end["type"] == "task_postprocess_end" and end["message"] == _outputs(task)
            assert all(m["tasktoken"] == run["socketaccesstoken"] for m in seen[run["taskid"]])
    assert len(server.detail(second["taskid"])["outputs"]) == 2


def test_an_unknown_token_gets_an_error_and_the_connection_is_closed(server: Server) -> None:
    socket = Socket(server)
    try:
        socket.register("not-a-token-of-any-task-000000")
        message = socket.next()
        with pytest.raises(ConnectionClosed) as closed:
            socket.next(timeout=10)
    finally:
        socket.close()
    assert message["result"] is False and message["tasktoken"] == "not-a-token-of-any-task-000000"
    assert message["message"] == "There is no task with this tasktoken."
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_kill_reaches_the_client_as_task_cancel(server: Server) -> None:
    run = _run(server, steps=40, width=1024, height=1024)
    socket = Socket(server)
    try:
        socket.register(run["socketaccesstoken"])
        while (message := socket.next())["type"] != "task_output":
            assert message["type"] not in ("task_postprocess_end", "task_cancel"), message
        _kill(server, run["taskid"])
        rest = socket.until_end(run["taskid"])[run["taskid"]]
    finally:
        socket.close()
    assert rest[-1]["type"] == "task_cancel" and rest[-1]["message"] is None
    assert "task_postprocess_end" not in [m["type"] for m in rest]
    assert server.detail(run["taskid"])["status"] == "task_cancel"


def test_previews_arrive_only_when_asked_and_are_small_jpegs(server: Server) -> None:
    run = _run(server, steps=40, width=1024, height=1024)
    asked, silent = Socket(server), Socket(server)
    try:
        asked.register(run["socketaccesstoken"], preview=True)
        silent.register(run["socketaccesstoken"])
        previews = []
        while len(previews) < 2:
            message = asked.next()
            assert message["type"] not in ("task_postprocess_end", "task_cancel"), "ended before two previews"
            if message["type"] == "task_preview":
                previews.append(message)
        _kill(server, run["taskid"])
        silent_seen = silent.until_end(run["taskid"])[run["taskid"]]
    finally:
        asked.close()
        silent.close()
    for message in previews:
        assert message["id"] == run["taskid"] and message["result"] is True
        image = Image.open(io.BytesIO(base64.b64decode(message["message"])))
        assert image.format == "JPEG" and max(image.size) <= 128
    assert silent_seen and "task_preview" not in [m["type"] for m in silent_seen]


def test_an_idle_worker_starts_a_task_when_it_is_queued_not_at_its_next_poll(server: Server) -> None:
    before = _run(server)
    finished = server.wait_for(before["taskid"])
    time.sleep(1.5)  # the worker has looked at the empty queue and sleeps for 30 s
    run = _run(server)
    task = server.wait_for(run["taskid"])
    # Started by the queued event: long before the poll, 30 s after the last one.
    assert int(task["accepttime"]) - int(finished["postprocessendtime"]) < 15, (finished, task)
