"""fluxrun.client against a real `fluxrun serve` (API and a tiny-model worker): run and wait
by WebSocket and by polling, download, cancel, kill, listing, tool schemas, the errors a real
server gives, and both authentication modes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from fluxrun.client import Client, Event, errors
from tests.integration.server import Server, free_port

pytestmark = pytest.mark.slow

PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
WAIT = 90.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("client") / "data")
    try:
        running.start()
        running.wait_for_log("ready (tiny models")  # the worker is up: tasks start at once
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    # Key, secret and base URL from the credentials file the server wrote, as a user's would be.
    with Client(credentials_path=server.data_dir / "credentials.json") as made:
        yield made


def test_the_credentials_file_gives_key_secret_and_url(server: Server, client: Client) -> None:
    assert client.api_key == server.key and client.signed
    assert client.base_url == server.base_url + "/v1"
    assert client.socket_url == server.base_url.replace("http://", "ws://") + "/v1"


def test_run_and_wait_by_websocket_reports_progress(client: Client, tmp_path: Path) -> None:
    events: list[Event] = []
    task = client.run(PIXEL, prompt="dpixeBw style, a fox", steps=5, width=256, height=256, seed="7")
    info = task.wait(timeout=WAIT, on_event=events.append)
    assert info.succeeded and info.status == "task_postprocess_end" and info.id == task.id
    kinds = [e.type for e in events]
    assert "task_status" not in kinds  # every event came by socket, none by polling
    assert kinds[-1] == "task_postprocess_end" and "task_end" in kinds
    steps = [e.progress for e in events if e.progress is not None]
    assert [p.step_current for p in steps] == [1, 2, 3, 4, 5] and {p.step_total for p in steps} == {5}
    assert steps[-1].percentage == 100.0
    assert info.parameters["steps"] == "5" and info.tool == PIXEL

    paths = task.download(tmp_path / "out")
    [output] = info.outputs
    assert paths == [tmp_path / "out" / output.name]
    data = paths[0].read_bytes()
    assert len(data) == output.size and data.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(data)).size == (256, 256)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [output.name]  # no temporary file left


def test_run_and_wait_by_polling(client: Client, tmp_path: Path) -> None:
    events: list[Event] = []
    task = client.run(PIXEL, prompt="a cat", steps=2, width=128, height=128, samples=2)
    info = task.wait(timeout=WAIT, on_event=events.append, websocket=False)
    assert info.succeeded and len(info.outputs) == 2
    assert {e.type for e in events} == {"task_status"}
    statuses = [e.status for e in events]
    assert statuses[-1] == "task_postprocess_end" and len(statuses) == len(set(statuses))  # changes only
    paths = task.download(tmp_path)
    assert [p.name for p in paths] == ["0.png", "1.png"]
    assert [p.stat().st_size for p in paths] == [o.size for o in info.outputs]


def test_a_socket_that_cannot_connect_falls_back_to_polling(server: Server) -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
    with Client(credentials_path=server.data_dir / "credentials.json", socket_url=nowhere) as client:
        events: list[Event] = []
        task = client.run(PIXEL, prompt="a cat", steps=2, width=64, height=64)
        assert task.wait(timeout=WAIT, on_event=events.append).succeeded
    assert {e.type for e in events} == {"task_status"} and events[-1].status == "task_postprocess_end"


def test_a_task_that_ended_before_the_socket_registered_is_waited_for_at_once(server: Server, client: Client) -> None:
    task = client.run(PIXEL, prompt="a cat", steps=1, width=64, height=64)
    server.wait_for(task.id)  # it ends before wait() connects: the socket sends the end at registration
    events: list[Event] = []
    assert task.wait(timeout=WAIT, on_event=events.append).succeeded
    assert [e.type for e in events] == ["task_postprocess_end"]
    # A handle read after the end does not even connect: one look at Task/Detail says it all.
    again = client.task(task.id)
    events.clear()
    assert again.wait(timeout=WAIT, on_event=events.append).succeeded
    assert [(e.type, e.status) for e in events] == [("task_status", "task_postprocess_end")]
    assert [o.size for o in again.outputs] == [o.size for o in task.outputs]


def test_cancel_a_queued_task_and_kill_a_running_one(client: Client) -> None:
    # One worker: while the long task runs, the second one waits in the queue.
    running = client.run(PIXEL, prompt="a long one", steps=50, width=1024, height=1024)
    queued = client.run(PIXEL, prompt="a short one", steps=1, width=64, height=64)
    cancelled = queued.cancel()
    assert cancelled.status == "task_cancel" and cancelled.id == queued.id
    with pytest.raises(errors.TaskCancelled):
        queued.wait(timeout=WAIT)
    with pytest.raises(errors.APIError, match="not in a cancellable state"):
        queued.cancel()

    killed_at: list[int] = []

    def kill_at_first_step(event: Event) -> None:
        if event.progress is not None and not killed_at:
            killed_at.append(event.progress.step_current)
            running.kill()

    with pytest.raises(errors.TaskCancelled) as caught:
        running.wait(timeout=WAIT, on_event=kill_at_first_step)
    assert killed_at and caught.value.task.status == "task_cancel" and caught.value.task.outputs == []
    with pytest.raises(errors.TaskCancelled):
        running.download(".")


def test_tasks_lists_the_projects_tasks_newest_first(client: Client) -> None:
    task = client.run(PIXEL, prompt="listed", steps=1, width=64, height=64)
    task.wait(timeout=WAIT)
    listed = client.tasks(limit=3, tool=PIXEL)
    assert listed[0].id == task.id and len(listed) <= 3
    assert [int(t.id) for t in listed] == sorted((int(t.id) for t in listed), reverse=True)
    assert client.tasks(tool="black-forest-labs/flux-2-flex-t2i") == []


def test_tools_and_a_tools_input_schema(client: Client) -> None:
    assert PIXEL in [t.name for t in client.tools()]
    assert [t.name for t in client.tools(search="pixel")] == [PIXEL]
    tool = client.tool(PIXEL)
    by_id = {item.id: item for item in tool.inputs}
    assert by_id["prompt"].required and by_id["prompt"].type == "textarea"
    assert (by_id["width"].min, by_id["width"].max, by_id["width"].step) == (64.0, 2048.0, 16.0)
    assert by_id["steps"].default == "12"


def test_the_real_servers_errors(server: Server, client: Client) -> None:
    with pytest.raises(errors.InputError) as caught:
        client.run(PIXEL, prompt="a cat", width=1000)
    assert caught.value.field == "width" and "multiple of 16" in caught.value.rule
    with pytest.raises(errors.NotFound, match="There is no task yet."):
        client.task("999999")
    with pytest.raises(errors.NotFound, match="not found"):
        client.tool("nobody/nothing")
    with Client(server.key, "not-the-secret", server.base_url) as wrong:
        with pytest.raises(errors.AuthenticationError) as refused:
            wrong.tools()
    assert refused.value.status_code == 401
    with Client(server.key, None, server.base_url) as unsigned:  # a signature project needs the signature
        with pytest.raises(errors.AuthenticationError, match="requires signature authentication"):
            unsigned.tools()


def test_many_quick_signed_requests_never_reuse_a_nonce(client: Client) -> None:
    # The server refuses a nonce it has seen; a burst within milliseconds must all pass.
    task = client.run(PIXEL, prompt="a cat", steps=1, width=64, height=64)
    for _ in range(30):
        task.refresh()
    task.wait(timeout=WAIT)


def test_an_apikey_only_project(server: Server, tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "fluxrun", "keys", "create", "--name", "plain", "--mode", "apikey", "--json",
         "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=60, env=server.env,
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["api_secret"] is None
    with Client(created["api_key"], base_url=server.base_url) as plain:
        assert not plain.signed
        task = plain.run(PIXEL, prompt="a cat", steps=1, width=64, height=64)
        assert task.wait(timeout=WAIT).succeeded
        assert [t.id for t in plain.tasks()] == [task.id]  # only its own project's tasks
        assert plain.task(task.id).download(tmp_path)[0].stat().st_size > 0
