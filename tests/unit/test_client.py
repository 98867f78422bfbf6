"""fluxrun.client against a scripted API (httpx.MockTransport, no server): what each answer
of the protocol becomes, which requests are retried, and what every request carries."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from fluxrun.auth import verify
from fluxrun.client import Client, errors
from fluxrun.client.protocol import Nonces
from tests.fakes.task_api import FakeTaskApi, detail, refusal, task_wire

PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
RUN = f"Run/{PIXEL}"
RUN_OK = {"errors": [], "taskid": "7", "socketaccesstoken": "t" * 30, "result": True}


@pytest.fixture
def api() -> FakeTaskApi:
    return FakeTaskApi()


@pytest.fixture
def client(api: FakeTaskApi) -> Client:
    made = Client("key", "secret", "http://fluxrun.test", transport=api.transport, websocket=False)
    sleeps: list[float] = []
    made._sleep = sleeps.append  # no real waiting in unit tests; what was asked for is kept
    made.sleeps = sleeps  # type: ignore[attr-defined]
    return made


def test_run_sends_inputs_as_json_and_returns_a_handle(api: FakeTaskApi, client: Client) -> None:
    api.on(RUN, RUN_OK)
    task = client.run(PIXEL, prompt="a cat", steps=4, seed=None, callback_url="https://example.com/hook")
    assert task.id == "7" and task.socket_token == "t" * 30 and task.info is None
    [request] = api.sent(RUN)
    assert request.method == "POST" and request.headers["content-type"] == "application/json"
    # None means "not given": the tool's default applies.
    assert api.bodies(RUN) == [{"prompt": "a cat", "steps": 4, "callbackUrl": "https://example.com/hook"}]


def test_signed_requests_carry_a_valid_signature_and_no_nonce_twice(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Detail", detail(task_wire()))
    for _ in range(50):  # well within one millisecond each: the clock alone would repeat nonces
        client.task("7")
    nonces = [r.headers["x-nonce"] for r in api.requests]
    assert len(set(nonces)) == 50 and nonces == sorted(nonces, key=int)
    for request in api.requests:
        assert request.headers["x-api-key"] == "key"
        assert verify("key", "secret", request.headers["x-nonce"], request.headers["x-signature"])


def test_apikey_only_mode_sends_the_key_alone(api: FakeTaskApi) -> None:
    api.on("Tool/List", {"result": True, "errors": [], "total": "0", "tool": []})
    client = Client("key", base_url="http://fluxrun.test", transport=api.transport)
    assert client.tools() == [] and not client.signed
    [request] = api.requests
    assert request.headers["x-api-key"] == "key"
    assert "x-nonce" not in request.headers and "x-signature" not in request.headers


def test_nonces_stay_unique_across_threads() -> None:
    nonces = Nonces()
    seen: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [nonces.next() for _ in range(500)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 2000
    assert all(len(n) == 13 for n in seen)  # unix milliseconds, which the server can check and forget


def test_hosted_base_url_gets_the_same_requests() -> None:
    hosted = FakeTaskApi("https://api.wiro.ai/v1").on(RUN, RUN_OK)
    client = Client("key", "secret", "https://api.wiro.ai/v1", transport=hosted.transport)
    client.run(PIXEL, prompt="a cat")
    [request] = hosted.requests
    assert str(request.url) == f"https://api.wiro.ai/v1/{RUN}"
    assert {"x-api-key", "x-nonce", "x-signature"} <= set(request.headers)
    assert client.socket_url == "wss://api.wiro.ai/v1"


# --- every error kind ---

def test_http_401_is_an_authentication_error(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Detail", httpx.Response(401, json=refusal(99, "Project authorization is not valid.")))
    with pytest.raises(errors.AuthenticationError) as caught:
        client.task("7")
    assert caught.value.status_code == 401 and caught.value.code == 99
    assert str(caught.value) == "Project authorization is not valid."


def test_code_98_on_http_200_is_an_authentication_error(api: FakeTaskApi, client: Client) -> None:
    api.on("Tool/List", refusal(98, "x-api-key header is required."))
    with pytest.raises(errors.AuthenticationError) as caught:
        client.tools()
    assert caught.value.code == 98 and caught.value.status_code == 200


def test_a_refused_input_names_its_field_and_rule(api: FakeTaskApi, client: Client) -> None:
    api.on(RUN, refusal(0, "width: must be a multiple of 16 (got 1000)"))
    with pytest.raises(errors.InputError) as caught:
        client.run(PIXEL, prompt="a cat", width=1000)
    assert caught.value.field == "width" and caught.value.rule == "must be a multiple of 16 (got 1000)"
    assert isinstance(caught.value, errors.APIError) and caught.value.code == 0


def test_a_general_refusal_is_an_api_error_not_an_input_error(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Cancel", refusal(0, "Task is not in a cancellable state."))
    with pytest.raises(errors.APIError) as caught:
        client.cancel("7")
    assert type(caught.value) is errors.APIError and caught.value.message == "Task is not in a cancellable state."


def test_a_malformed_tool_name_is_refused_before_sending(api: FakeTaskApi, client: Client) -> None:
    with pytest.raises(errors.InputError) as caught:
        client.run("Flat-Pixel-Art-FLUX", prompt="a cat")
    assert caught.value.field == "tool" and caught.value.status_code is None
    assert api.requests == []


def test_an_unknown_task_is_not_found(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Detail", refusal(1, "There is no task yet."))
    with pytest.raises(errors.NotFound, match="There is no task yet."):
        client.task("99")


def test_the_concurrency_limit_is_its_own_error(api: FakeTaskApi, client: Client) -> None:
    api.on(RUN, refusal(96, "Concurrency limit reached: this project has 4 tasks queued or running"))
    with pytest.raises(errors.ConcurrencyLimited) as caught:
        client.run(PIXEL, prompt="a cat")
    assert caught.value.code == 96


def test_insufficient_balance_is_its_own_error(api: FakeTaskApi, client: Client) -> None:
    api.on(RUN, refusal(97, "Insufficient balance."))
    with pytest.raises(errors.InsufficientBalance):
        client.run(PIXEL, prompt="a cat")


def test_a_full_queue_is_rate_limited_and_run_is_never_retried(api: FakeTaskApi, client: Client) -> None:
    api.on(RUN, httpx.Response(429, headers={"Retry-After": "7"}, json=refusal(0, "The queue is full")))
    with pytest.raises(errors.RateLimited) as caught:
        client.run(PIXEL, prompt="a cat")
    assert caught.value.retry_after == 7.0 and caught.value.status_code == 429
    assert len(api.sent(RUN)) == 1 and client.sleeps == []  # type: ignore[attr-defined]


def test_a_draining_server_is_rate_limited_with_retry_after(api: FakeTaskApi, client: Client) -> None:
    api.on(RUN, httpx.Response(503, headers={"Retry-After": "5"}, json=refusal(0, "This server is shutting down")))
    with pytest.raises(errors.RateLimited) as caught:
        client.run(PIXEL, prompt="a cat")
    assert caught.value.retry_after == 5.0 and caught.value.status_code == 503 and len(api.requests) == 1


def test_retry_after_may_be_an_http_date(api: FakeTaskApi, client: Client) -> None:
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    api.on(RUN, httpx.Response(429, headers={"Retry-After": later}, text="slow down"))
    with pytest.raises(errors.RateLimited) as caught:
        client.run(PIXEL, prompt="a cat")
    assert caught.value.retry_after is not None and 100 < caught.value.retry_after <= 120
    assert caught.value.message == "slow down"


def test_reads_are_retried_after_retry_after(api: FakeTaskApi, client: Client) -> None:
    busy = httpx.Response(429, headers={"Retry-After": "2"}, json=refusal(0, "busy"))
    page = {"total": "1", "errors": [], "tasklist": [task_wire()], "result": True}
    api.on("Task/List", busy, busy, page)
    assert [t.id for t in client.tasks()] == ["7"]
    assert client.sleeps == [2.0, 2.0]  # type: ignore[attr-defined]
    assert len({r.headers["x-nonce"] for r in api.requests}) == 3  # each try signed afresh


def test_reads_give_up_after_a_few_retries(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Detail", httpx.Response(503, headers={"Retry-After": "1"}, json=refusal(0, "draining")))
    with pytest.raises(errors.RateLimited):
        client.task("7")
    assert len(api.requests) == 4  # the first try and three more


def test_a_refused_connection_is_a_transport_error(api: FakeTaskApi, client: Client) -> None:
    api.on(RUN, httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(errors.TransportError, match="Connection refused"):
        client.run(PIXEL, prompt="a cat")


def test_no_answer_in_time_is_a_transport_error(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Detail", httpx.ReadTimeout("timed out"))
    with pytest.raises(errors.TransportError, match="no answer within 30 s"):
        client.task("7")


def test_a_body_that_is_not_json_is_a_transport_error(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Detail", httpx.Response(200, text="<html>captive portal</html>"))
    with pytest.raises(errors.TransportError, match="not a JSON object"):
        client.task("7")


def test_a_proxy_error_page_is_a_transport_error(api: FakeTaskApi, client: Client) -> None:
    api.on(RUN, httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(errors.TransportError, match="HTTP 502"):
        client.run(PIXEL, prompt="a cat")


def test_json_of_another_shape_is_a_transport_error(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Detail", {"result": True, "errors": [], "tasklist": [{"status": "task_queue"}]})  # no id
    with pytest.raises(errors.TransportError, match="unexpected shape"):
        client.task("7")


def test_every_error_is_a_client_error() -> None:
    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, errors.ClientError), name


# --- reading ---

def test_tools_and_a_tools_inputs_are_typed(api: FakeTaskApi, client: Client) -> None:
    item = {"id": "width", "type": "number", "label": "Width", "description": "px", "default": "1024",
            "required": False, "options": [], "min": "256", "max": "2048", "step": ""}
    tool = {"id": "1", "title": "Flat Pixel Art", "slugowner": "desertPixel", "slugproject": "Flat-Pixel-Art-FLUX",
            "description": "", "categories": ["model"], "tags": [], "image": "", "cps": "0.000585000000",
            "parameters": [{"title": "Inputs", "items": [item]}]}
    api.on("Tool/Detail", {"result": True, "errors": [], "tool": [tool]})
    info = client.tool(PIXEL)
    assert api.bodies("Tool/Detail") == [{"slugowner": "desertPixel", "slugproject": "Flat-Pixel-Art-FLUX"}]
    assert info.name == PIXEL
    [width] = info.inputs
    assert (width.id, width.min, width.max, width.step, width.required) == ("width", 256.0, 2048.0, None, False)


def test_tools_pages_through_the_list(api: FakeTaskApi, client: Client) -> None:
    def tool(n: int) -> dict[str, str]:
        return {"slugowner": "o", "slugproject": f"p{n}"}

    first = {"result": True, "errors": [], "total": "3", "tool": [tool(0), tool(1)]}
    second = {"result": True, "errors": [], "total": "3", "tool": [tool(2)]}
    api.on("Tool/List", first, second)
    assert [t.name for t in client.tools(search="p")] == ["o/p0", "o/p1", "o/p2"]
    assert [b["start"] for b in api.bodies("Tool/List")] == ["0", "2"]
    assert api.bodies("Tool/List")[0]["search"] == "p"


def test_tasks_asks_for_the_newest_first_of_one_tool(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/List", {"total": "1", "errors": [], "tasklist": [task_wire("9", "task_start")], "result": True})
    [info] = client.tasks(limit=5, tool=PIXEL)
    assert info.id == "9" and info.tool == PIXEL and not info.finished
    assert api.bodies("Task/List") == [{"start": "0", "limit": "5", "sort": "id", "order": "DESC", "modelName": PIXEL}]


def test_task_info_keeps_the_wire_and_reads_its_numbers(api: FakeTaskApi, client: Client) -> None:
    output = {"name": "0.png", "contenttype": "image/png", "size": "202472", "url": "http://x/0.png", "id": "o1"}
    api.on("Task/Detail", detail(task_wire(status="task_postprocess_end", outputs=[output])))
    info = client.task("7").info
    assert info is not None and info.finished and info.succeeded
    assert info.outputs[0].size == 202472 and info.elapsedseconds == "1.5000"
    assert info.model_extra is not None and info.model_extra["projectid"] == "1"  # unknown fields are kept


def test_kill_returns_the_task_as_the_server_left_it(api: FakeTaskApi, client: Client) -> None:
    api.on("Task/Kill", {"errors": [], "tasklist": [task_wire(status="task_cancel")], "result": True})
    assert client.kill("7").status == "task_cancel"
    assert api.bodies("Task/Kill") == [{"taskid": "7"}] and len(api.requests) == 1


def test_a_task_of_another_servers_spelling_reads_alike() -> None:
    from fluxrun.client.models import TaskInfo

    # Numbers as numbers and nulls for empty lists, as a less careful server might send them.
    info = TaskInfo.model_validate({"id": 12, "status": "task_postprocess_end", "pexit": 1, "outputs": None,
                                    "parameters": None, "debugerror": None})
    assert (info.id, info.pexit, info.outputs, info.parameters, info.debugerror) == ("12", "1", [], {}, "")
    assert info.finished and not info.succeeded


def test_a_select_inputs_options_read_as_attributes_or_keys() -> None:
    from fluxrun.client.models import ToolInput

    item = ToolInput.model_validate({"id": "outputFormat", "type": "select", "default": "png",
                                     "options": [{"label": "JPEG", "value": "jpeg"}, {"label": "PNG", "value": "png"}]})
    assert [o.value for o in item.options] == [o["value"] for o in item.options] == ["jpeg", "png"]
    assert item.options[0]["label"] == "JPEG"
