"""Task.wait() and Task.download() against a scripted API and a scripted socket: events by
WebSocket, the fall back to polling (connection refused, silence, an early close, a refused
token), the backoff, the end of a task as the errors it stands for, and atomic downloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError

from fluxrun.client import Client, Event, errors
from fluxrun.client.task import POLL_MAX_S
from tests.fakes.task_api import FakeTaskApi, detail, refusal, task_wire

TOKEN = "t" * 30
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100
OUTPUT = {"name": "0.png", "contenttype": "image/png", "size": str(len(PNG)),
          "url": "http://fluxrun.test/files/abc/0.png", "id": "o1"}


class FakeTime:
    """The client's clock and sleep: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeSocket:
    """A scripted WebSocket: ``script`` items are messages (dicts, sent as JSON text), or
    exceptions raised by recv(); after the script, recv() times out (advancing the clock)."""

    def __init__(self, script: list[Any], time: FakeTime) -> None:
        self.script = list(script)
        self.time = time
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def recv(self, timeout: float | None = None) -> str:
        if not self.script:
            self.time.now += timeout or 0
            raise TimeoutError
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return json.dumps(item)


class Harness:
    def __init__(self) -> None:
        self.api = FakeTaskApi()
        self.time = FakeTime()
        self.sockets: list[FakeSocket] = []
        self.socket_script: list[Any] | BaseException = []
        self.connects: list[tuple[str, dict[str, Any]]] = []
        self.events: list[Event] = []

    def connect(self, url: str, **options: Any) -> FakeSocket:
        self.connects.append((url, options))
        if isinstance(self.socket_script, BaseException):
            raise self.socket_script
        socket = FakeSocket(self.socket_script, self.time)
        self.sockets.append(socket)
        return socket

    def client(self, **options: Any) -> Client:
        client = Client("key", "secret", "http://fluxrun.test", transport=self.api.transport,
                        socket_connect=self.connect, **options)
        client._sleep = self.time.sleep
        client._clock = self.time.clock
        return client

    def run(self, **options: Any) -> Any:
        self.api.on("Run/desertPixel/Flat-Pixel-Art-FLUX",
                    {"errors": [], "taskid": "7", "socketaccesstoken": TOKEN, "result": True})
        return self.client(**options).run("desertPixel/Flat-Pixel-Art-FLUX", prompt="a cat")


def event(kind: str, message: Any = None) -> dict[str, Any]:
    return {"type": kind, "id": "7", "tasktoken": TOKEN, "message": message, "result": True}


def progress(step: int, total: int = 4) -> dict[str, Any]:
    return event("task_output", {"type": "progressGenerate", "task": "Generate", "percentage": str(100 * step // total),
                                 "stepCurrent": str(step), "stepTotal": str(total), "speed": "1.84",
                                 "speedType": "it/s", "elapsedTime": "1s", "remainingTime": ""})


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_wait_follows_the_socket_and_reads_the_end_from_task_detail(harness: Harness) -> None:
    harness.socket_script = [event("task_queue"), event("task_start"), progress(1), progress(4),
                             event("task_error", "a warning on stderr"), event("task_end"),
                             event("task_postprocess_end", [OUTPUT])]
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end", outputs=[OUTPUT])))
    task = harness.run()
    info = task.wait(on_event=harness.events.append)
    assert info.succeeded and info.outputs[0].size == len(PNG) and task.info == info
    [(url, _)] = harness.connects
    assert url == "ws://fluxrun.test/v1"
    assert harness.sockets[0].sent == [{"type": "task_info", "tasktoken": TOKEN}] and harness.sockets[0].closed
    assert [e.type for e in harness.events] == ["task_queue", "task_start", "task_output", "task_output",
                                               "task_error", "task_end", "task_postprocess_end"]
    first, last = harness.events[2].progress, harness.events[3].progress
    assert first is not None and (first.step_current, first.step_total, first.percentage) == (1, 4, 25.0)
    assert last is not None and last.step_current == 4 and last.speed == 1.84 and last.remaining is None
    assert harness.events[4].status is None and harness.events[4].message == "a warning on stderr"
    assert len(harness.api.sent("Task/Detail")) == 1  # once, for pexit; no status event repeated


def test_previews_are_asked_for_and_decoded(harness: Harness) -> None:
    harness.socket_script = [event("task_preview", "/9j/4AAQ"), event("task_postprocess_end", [])]
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end")))
    harness.run().wait(on_event=harness.events.append, previews=True)
    assert harness.sockets[0].sent == [{"type": "task_info", "tasktoken": TOKEN, "preview": True}]
    assert harness.events[0].preview == b"\xff\xd8\xff\xe0\x00\x10"


def test_a_refused_socket_connection_falls_back_to_polling(harness: Harness) -> None:
    harness.socket_script = ConnectionRefusedError(111, "Connection refused")
    harness.api.on("Task/Detail", detail(task_wire(status="task_queue")), detail(task_wire(status="task_queue")),
                   detail(task_wire(status="task_start")), detail(task_wire(status="task_postprocess_end")))
    info = harness.run().wait(on_event=harness.events.append)
    assert info.status == "task_postprocess_end"
    assert [(e.type, e.status) for e in harness.events] == [
        ("task_status", "task_queue"), ("task_status", "task_start"), ("task_status", "task_postprocess_end")]
    assert harness.time.sleeps == [0.5, 0.75, 1.125]  # the backoff: 1.5x each time


def test_polling_backs_off_up_to_five_seconds(harness: Harness) -> None:
    queued = detail(task_wire(status="task_queue"))
    harness.api.on("Task/Detail", *([queued] * 12), detail(task_wire(status="task_postprocess_end")))
    harness.run(websocket=False).wait()
    assert harness.connects == []
    assert max(harness.time.sleeps) == POLL_MAX_S and harness.time.sleeps[-3:] == [POLL_MAX_S] * 3
    assert harness.time.sleeps == sorted(harness.time.sleeps)


def test_a_socket_closed_early_falls_back_to_polling(harness: Harness) -> None:
    harness.socket_script = [event("task_start"), ConnectionClosedError(None, None)]
    harness.api.on("Task/Detail", detail(task_wire(status="task_start")), detail(task_wire(status="task_postprocess_end")))
    harness.run().wait(on_event=harness.events.append)
    # task_start came by socket; polling repeats nothing and reports the end.
    assert [(e.type, e.status) for e in harness.events] == [("task_start", "task_start"),
                                                           ("task_status", "task_postprocess_end")]


def test_a_silent_socket_falls_back_to_polling(harness: Harness) -> None:
    harness.socket_script = []  # connects, then never a message
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end")))
    assert harness.run().wait().succeeded
    assert len(harness.connects) == 1 and harness.sockets[0].closed


def test_a_refused_token_falls_back_to_polling(harness: Harness) -> None:
    harness.socket_script = [{"type": "task_info", "tasktoken": TOKEN, "message": "There is no task with this tasktoken.",
                              "result": False}]
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end")))
    assert harness.run().wait().succeeded


def test_a_quiet_socket_is_checked_by_task_detail(harness: Harness) -> None:
    # The task waits in the queue: after 30 s of quiet, one look at Task/Detail.
    harness.socket_script = [event("task_queue")]
    harness.api.on("Task/Detail", detail(task_wire(status="task_queue")), detail(task_wire(status="task_cancel")))
    with pytest.raises(errors.TaskCancelled):
        harness.run().wait(on_event=harness.events.append)
    assert [(e.type, e.status) for e in harness.events] == [("task_queue", "task_queue"),
                                                           ("task_status", "task_cancel")]


def test_a_failed_check_of_a_quiet_socket_hands_over_to_polling(harness: Harness) -> None:
    harness.socket_script = [event("task_queue")]
    harness.api.on("Task/Detail", httpx.ConnectError("refused"), detail(task_wire(status="task_postprocess_end")))
    assert harness.run().wait().succeeded
    assert len(harness.api.sent("Task/Detail")) == 2


def test_a_failed_task_raises_with_its_debugerror(harness: Harness) -> None:
    harness.socket_script = [event("task_start"), event("task_postprocess_end", [])]
    failed = task_wire(status="task_postprocess_end", pexit="1", debugerror="CUDA out of memory on this task")
    harness.api.on("Task/Detail", detail(failed))
    with pytest.raises(errors.TaskFailed) as caught:
        harness.run().wait()
    assert caught.value.debugerror == "CUDA out of memory on this task" and caught.value.task.pexit == "1"
    assert "CUDA out of memory" in str(caught.value)


def test_a_cancelled_task_raises(harness: Harness) -> None:
    harness.socket_script = [event("task_queue"), event("task_cancel")]
    harness.api.on("Task/Detail", detail(task_wire(status="task_cancel")))
    with pytest.raises(errors.TaskCancelled) as caught:
        harness.run().wait()
    assert caught.value.task.status == "task_cancel"


def test_wait_times_out_while_polling(harness: Harness) -> None:
    harness.api.on("Task/Detail", detail(task_wire(status="task_queue")))
    with pytest.raises(errors.WaitTimeout) as caught:
        harness.run(websocket=False).wait(timeout=10)
    assert caught.value.task is not None and caught.value.task.status == "task_queue"
    assert sum(harness.time.sleeps) == pytest.approx(10)  # the last sleep stops at the deadline


def test_wait_times_out_on_a_quiet_socket(harness: Harness) -> None:
    harness.socket_script = [event("task_queue")]
    harness.api.on("Task/Detail", detail(task_wire(status="task_queue")))
    with pytest.raises(errors.WaitTimeout, match="task 7 had not ended"):
        harness.run().wait(timeout=5)
    assert harness.time.now == pytest.approx(1005)


def test_polling_sits_out_a_few_failures(harness: Harness) -> None:
    harness.api.on("Task/Detail", httpx.ConnectError("refused"), httpx.Response(503, headers={"Retry-After": "40"},
                   json=refusal(0, "draining")), detail(task_wire(status="task_postprocess_end")))
    assert harness.run(websocket=False).wait().succeeded
    assert 40 in harness.time.sleeps  # the server's Retry-After, beyond the client's own retries


def test_polling_gives_up_when_the_server_stays_away(harness: Harness) -> None:
    harness.api.on("Task/Detail", httpx.ConnectError("refused"))
    with pytest.raises(errors.TransportError, match="refused"):
        harness.run(websocket=False).wait()


def test_download_writes_each_output_atomically(harness: Harness, tmp_path: Path) -> None:
    second = {**OUTPUT, "name": "1.png", "url": "http://fluxrun.test/files/abc/1.png"}
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end", outputs=[OUTPUT, second])))
    harness.api.on("/files/abc/0.png", httpx.Response(200, content=PNG))
    harness.api.on("/files/abc/1.png", httpx.Response(200, content=PNG))
    task = harness.client().task("7")
    paths = task.download(tmp_path / "out")
    assert paths == [tmp_path / "out" / "0.png", tmp_path / "out" / "1.png"]
    assert all(p.read_bytes() == PNG for p in paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png"]  # no temporary files left
    for request in harness.api.sent("/files/abc/0.png"):
        assert request.method == "GET" and "x-api-key" not in request.headers and "x-signature" not in request.headers


def test_a_short_download_leaves_no_file(harness: Harness, tmp_path: Path) -> None:
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end", outputs=[OUTPUT])))
    harness.api.on("/files/abc/0.png", httpx.Response(200, content=PNG[:10]))
    with pytest.raises(errors.TransportError, match=f"got 10 bytes, the task says {len(PNG)}"):
        harness.client().task("7").download(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_expired_link_is_not_found(harness: Harness, tmp_path: Path) -> None:
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end", outputs=[OUTPUT])))
    harness.api.on("/files/abc/0.png", httpx.Response(404, text="Not Found"))
    with pytest.raises(errors.NotFound):
        harness.client().task("7").download(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_names_stay_inside_the_directory(harness: Harness, tmp_path: Path) -> None:
    sneaky = {**OUTPUT, "name": "../../etc/0.png"}
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end", outputs=[sneaky])))
    harness.api.on("/files/abc/0.png", httpx.Response(200, content=PNG))
    assert harness.client().task("7").download(tmp_path / "out") == [tmp_path / "out" / "0.png"]


def test_download_before_the_end_or_after_a_failure_is_refused(harness: Harness, tmp_path: Path) -> None:
    harness.api.on("Task/Detail", detail(task_wire(status="task_start")))
    with pytest.raises(errors.TaskNotFinished, match="has not ended yet"):
        harness.client().task("7").download(tmp_path)
    harness.api.on("Task/Detail", detail(task_wire(status="task_postprocess_end", pexit="1", debugerror="boom")))
    with pytest.raises(errors.TaskFailed, match="boom"):
        harness.client().task("7").download(tmp_path)
