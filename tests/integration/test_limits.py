"""Request limits as a client meets them (in-process API, SQLite, no worker): body size, the
task limits at Run, the per-key rate, the WebSocket's message size and tasks per connection.

Each limit: what a request over it gets (status, section 7's body, a message naming the field
and the rule), and that a request just within it is accepted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

from fluxrun.api.app import create_app
from fluxrun.auth import signature_headers
from fluxrun.client import protocol
from fluxrun.client.errors import InputError, RateLimited
from fluxrun.config import Settings
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from fluxrun.store.base import Project, TaskStore

PIXEL = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "/v1/Run/black-forest-labs/flux-2-flex-t2i"
# No rate limit unless a test is about it: the others send requests back to back.
UNLIMITED = {"rate_limit_per_second": 0}


class Api:
    def __init__(self, http: TestClient, store: TaskStore) -> None:
        self.http = http
        self.store = store
        self.project = store.create_project("main", "signature")

    def headers(self, project: Project | None = None) -> dict[str, str]:
        project = project or self.project
        return signature_headers(project.api_key, project.api_secret or "", nonce=str(time.time_ns()))

    def post(self, path: str, body: dict[str, Any], project: Project | None = None) -> Any:
        return self.http.post(path, json=body, headers=self.headers(project))


ApiFactory = Callable[..., Api]


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[ApiFactory]:
    """An in-process API with these settings (over UNLIMITED), one project in its store."""
    opened: list[tuple[TestClient, TaskStore]] = []

    def make(**settings: Any) -> Api:
        config = Settings(data_dir=tmp_path, **{**UNLIMITED, **settings})
        store = open_store(config.effective_database_url)
        store.migrate()
        http = TestClient(create_app(config, store, LocalStorage(config.outputs_dir), reaper=False))
        http.__enter__()
        opened.append((http, store))
        return Api(http, store)

    yield make
    for http, store in opened:
        http.__exit__(None, None, None)
        store.close()


def refusal(response: Any, status: int = 200) -> str:
    """The message of a section 7 error answer with this HTTP status and code 0."""
    assert response.status_code == status, (response.status_code, response.text)
    answer = response.json()
    assert answer["result"] is False and len(answer["errors"]) == 1, answer
    assert answer["errors"][0]["code"] == 0, answer
    return answer["errors"][0]["message"]


def accepted(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["result"] is True, answer
    return answer


# -- body size ---------------------------------------------------------------------------------
def test_a_body_over_the_size_limit_gets_413_and_queues_nothing(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=2048)
    at_limit = json.dumps({"prompt": "a cat", "pad": ""})
    at_limit = json.dumps({"prompt": "a cat", "pad": "x" * (2048 - len(at_limit))})
    assert len(at_limit) == 2048
    accepted(api.http.post(PIXEL, content=at_limit, headers={**api.headers(), "Content-Type": "application/json"}))

    over = json.dumps({"prompt": "a cat", "pad": "x" * 5000})
    response = api.http.post(PIXEL, content=over, headers={**api.headers(), "Content-Type": "application/json"})
    assert refusal(response, 413) == f"body: must be at most 2048 bytes (got {len(over)})"
    with pytest.raises(InputError) as raised:  # what the SDK makes of it
        protocol.parse_answer(response.status_code, response.headers, response.content, "Run")
    assert (raised.value.field, raised.value.status_code) == ("body", 413)
    assert api.post("/v1/Task/List", {}).json()["total"] == "1"


def test_a_chunked_body_is_counted_as_it_arrives(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=2048)

    def chunks(count: int) -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        yield b'{"prompt": "a cat", "pad": "'
        for _ in range(count):
            yield b"x" * 512
        yield b'"}'

    headers = {**api.headers(), "Content-Type": "application/json"}
    message = refusal(api.http.post(PIXEL, content=chunks(1000), headers=headers), 413)
    assert message == "body: must be at most 2048 bytes"
    accepted(api.http.post(PIXEL, content=chunks(2), headers={**api.headers(), "Content-Type": "application/json"}))


def test_multipart_forms_are_held_to_the_size_limit(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=2048)
    small = api.http.post(PIXEL, files={"prompt": (None, "a cat"), "steps": (None, "3")}, headers=api.headers())
    taskid = accepted(small)["taskid"]
    detail = api.post("/v1/Task/Detail", {"taskid": taskid}).json()
    assert detail["tasklist"][0]["parameters"]["steps"] == "3"
    big = api.http.post(PIXEL, files={"prompt": (None, "a cat"), "upload": ("a.png", b"\0" * 10_000)},
                        headers=api.headers())
    assert refusal(big, 413).startswith("body: must be at most 2048 bytes (got ")


# -- what one task may ask for -------------------------------------------------------------------
def test_the_defaults_accept_every_tool_at_its_own_maxima(make_api: ApiFactory) -> None:
    api = make_api()
    accepted(api.post(PIXEL, {"prompt": "p" * 10_000, "samples": 4, "steps": 50, "width": 2048, "height": 2048}))
    accepted(api.post(FLUX2, {"prompt": "p" * 10_000, "steps": 50, "width": 2048, "height": 2048}))


def test_prompt_length(make_api: ApiFactory) -> None:
    api = make_api(max_prompt_chars=100)
    accepted(api.post(PIXEL, {"prompt": "é" * 100}))  # characters, not bytes
    assert refusal(api.post(PIXEL, {"prompt": "é" * 101})) == "prompt: must be at most 100 characters (got 101)"
    # Over the tool's own limit too: the server's limit is the one the message names.
    assert refusal(api.post(FLUX2, {"prompt": "p" * 20_000})) == \
        "prompt: must be at most 100 characters (got 20000)"


def test_samples_and_steps(make_api: ApiFactory) -> None:
    api = make_api(max_samples=2, max_steps=20)
    accepted(api.post(PIXEL, {"prompt": "a cat", "samples": 2, "steps": 20}))
    assert refusal(api.post(PIXEL, {"prompt": "a cat", "samples": "3"})) == \
        "samples: must be at most 2 images per task on this server (got 3)"
    assert refusal(api.post(PIXEL, {"prompt": "a cat", "steps": 21})) == \
        "steps: must be at most 20 steps on this server (got 21)"
    assert refusal(api.post(FLUX2, {"prompt": "a cat", "steps": 21})) == \
        "steps: must be at most 20 steps on this server (got 21)"
    # The tool's own range still speaks where it is the tighter rule.
    assert refusal(api.post(PIXEL, {"prompt": "a cat", "samples": 0})).startswith("samples: must be between 1 and 4")


def test_pixels_per_task_count_every_image(make_api: ApiFactory) -> None:
    api = make_api(max_task_pixels=2 * 1024 * 1024)
    accepted(api.post(PIXEL, {"prompt": "a cat", "width": 1024, "height": 1024, "samples": 2}))
    assert refusal(api.post(PIXEL, {"prompt": "a cat", "width": 1024, "height": 1024, "samples": 3})) == \
        "width: width x height x samples must be at most 2097152 pixels per task (got 1024x1024x3 = 3145728)"
    accepted(api.post(FLUX2, {"prompt": "a cat", "width": 2048, "height": 1024}))
    assert refusal(api.post(FLUX2, {"prompt": "a cat", "width": 2048, "height": 1040})) == \
        "width: width x height must be at most 2097152 pixels per task (got 2048x1040 = 2129920)"
    assert api.post("/v1/Task/List", {}).json()["total"] == "2"


def test_zero_is_no_limit(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=0, max_prompt_chars=0, max_samples=0, max_steps=0, max_task_pixels=0)
    accepted(api.post(PIXEL, {"prompt": "p" * 10_000, "pad": "x" * 2_000_000, "samples": 4, "steps": 50,
                              "width": 2048, "height": 2048}))


# -- the per-key rate ----------------------------------------------------------------------------
def test_a_key_over_its_rate_gets_429_with_retry_after(make_api: ApiFactory) -> None:
    api = make_api(rate_limit_per_second=1, rate_limit_burst=3)
    for _ in range(3):
        assert api.post("/v1/Task/List", {}).status_code == 200
    over = api.post(PIXEL, {"prompt": "a cat"})
    assert refusal(over, 429) == ("Too many requests: this API key may send 1 request a second, 3 at once. "
                                  "Try again in 1 second.")
    assert over.headers["Retry-After"] == "1"
    with pytest.raises(RateLimited) as raised:  # what the SDK makes of it (it waits and retries reads)
        protocol.parse_answer(over.status_code, over.headers, over.content, "Run")
    assert raised.value.retry_after == 1
    assert api.store.list_tasks(api.project.id, start=0, limit=10)[0] == 0  # the refused Run queued nothing

    other = api.store.create_project("other", "signature")
    assert api.post("/v1/Task/List", {}, project=other).status_code == 200  # each key its own bucket
    assert api.http.get("/health").status_code == 200  # GET routes are not counted

    time.sleep(int(over.headers["Retry-After"]))  # as told: then it goes through
    accepted(api.post(PIXEL, {"prompt": "a cat"}))


def test_requests_without_a_key_are_limited_per_address(make_api: ApiFactory) -> None:
    api = make_api(rate_limit_per_second=0.5, rate_limit_burst=2)
    for _ in range(2):
        assert api.http.post("/v1/Task/List", json={}).status_code == 401  # no key: 401 as always
    over = api.http.post("/v1/Task/List", json={})
    assert refusal(over, 429).startswith("Too many requests: this address (no x-api-key) may send 0.5 requests a "
                                         "second, 2 at once. Try again in 2 seconds.")
    assert over.headers["Retry-After"] == "2"
    assert api.post("/v1/Task/List", {}).status_code == 200  # a request with a key has its key's bucket


# -- the WebSocket -------------------------------------------------------------------------------
def register(ws: WebSocketTestSession, token: str) -> None:
    ws.send_text(json.dumps({"type": "task_info", "tasktoken": token}))


def test_a_websocket_message_over_the_size_limit_closes_with_1009(make_api: ApiFactory) -> None:
    api = make_api(ws_max_message_bytes=256)
    token = accepted(api.post(PIXEL, {"prompt": "a cat"}))["socketaccesstoken"]
    with api.http.websocket_connect("/v1") as ws:
        message = json.dumps({"type": "task_info", "tasktoken": token, "pad": ""})
        ws.send_text(message[:-2] + "x" * (256 - len(message)) + '"}')  # 256 bytes: within the limit
        assert ws.receive_json()["type"] == "task_queue"
        big = json.dumps({"type": "task_info", "tasktoken": token, "pad": "é" * 200})
        ws.send_text(big)
        answer = ws.receive_json()
        size = len(big.encode())
        assert answer == {"type": "task_info", "tasktoken": None, "result": False,
                          "message": f"Messages must be at most 256 bytes (got {size})."}
        closing = ws.receive()
        assert closing["type"] == "websocket.close" and closing["code"] == 1009


def test_tasks_per_connection(make_api: ApiFactory) -> None:
    api = make_api(ws_max_tasks=2)
    tasks = [accepted(api.post(PIXEL, {"prompt": "a cat"})) for _ in range(3)]
    with api.http.websocket_connect("/v1") as ws:
        for task in tasks[:2]:
            register(ws, task["socketaccesstoken"])
            assert ws.receive_json()["type"] == "task_queue"
        register(ws, tasks[0]["socketaccesstoken"])  # a task already watched is no new one
        register(ws, tasks[2]["socketaccesstoken"])
        refused = ws.receive_json()
        assert refused == {"type": "task_info", "tasktoken": tasks[2]["socketaccesstoken"], "result": False,
                           "message": "This connection already watches 2 tasks that have not ended, the most one "
                                      "connection may watch; it goes on watching them. Register this task once "
                                      "one of them has ended, or on another connection."}
        # Still open and watching: the first task's end arrives, and then there is room.
        accepted(api.post("/v1/Task/Cancel", {"taskid": tasks[0]["taskid"]}))
        cancelled = ws.receive_json()
        assert (cancelled["type"], cancelled["id"]) == ("task_cancel", tasks[0]["taskid"])
        register(ws, tasks[2]["socketaccesstoken"])
        watched = ws.receive_json()
        assert (watched["type"], watched["id"], watched["result"]) == ("task_queue", tasks[2]["taskid"], True)
