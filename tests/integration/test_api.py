"""The HTTP API in-process (no worker): shapes, body forms, auth, errors, scoping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fluxrun.api.app import create_app
from fluxrun.auth import signature_headers
from fluxrun.config import Settings
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from fluxrun.store.base import TaskStore

PIXEL = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "/v1/Run/black-forest-labs/flux-2-flex-t2i"

TASK_FIELDS = {
    "id", "uuid", "name", "socketaccesstoken", "parameters", "debugoutput", "debugerror", "starttime", "endtime",
    "elapsedseconds", "status", "cps", "totalcost", "guestid", "projectid", "modelid", "modelslugowner",
    "modelslugproject", "description", "basemodelid", "runtype", "modelfolderid", "modelfileid", "callbackurl",
    "marketplaceid", "createtime", "canceltime", "assigntime", "accepttime", "preprocessstarttime",
    "preprocessendtime", "postprocessstarttime", "postprocessendtime", "pexit", "categories", "outputs", "size",
}
NOT_STRINGS = {"parameters", "outputs", "guestid", "marketplaceid"}


class Api:
    def __init__(self, client: TestClient, store: TaskStore) -> None:
        self.client = client
        self.store = store
        project = store.create_project("main", "signature")
        self.key, self.secret = project.api_key, project.api_secret

    def headers(self, key: str | None = None, secret: str | None = None) -> dict[str, str]:
        return signature_headers(key or self.key, secret or self.secret, nonce=str(time.time_ns()))

    def post(self, path: str, body: dict | None = None, **kwargs):
        return self.client.post(path, json=body or {}, headers=kwargs.pop("headers", None) or self.headers(), **kwargs)

    def run(self, **inputs) -> dict:
        answer = self.post(PIXEL, {"prompt": "a cat", **inputs}).json()
        assert answer["result"], answer
        return answer

    def detail(self, **body) -> dict:
        return self.post("/v1/Task/Detail", body).json()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path)
    store = open_store(settings.effective_database_url)
    store.migrate()
    app = create_app(settings, store, LocalStorage(settings.outputs_dir), reaper=False)
    with TestClient(app) as client:
        yield Api(client, store)
    store.close()


def test_run_answer_and_detail_shape(api: Api) -> None:
    answer = api.run(seed="71942193", scale="3")
    assert set(answer) == {"errors", "taskid", "socketaccesstoken", "result"}
    assert answer["errors"] == [] and answer["taskid"].isdigit() and len(answer["socketaccesstoken"]) == 30
    detail = api.detail(taskid=answer["taskid"])
    assert set(detail) == {"total", "errors", "tasklist", "result"} and detail["total"] == "1"
    [task] = detail["tasklist"]
    assert set(task) == TASK_FIELDS
    for field in TASK_FIELDS - NOT_STRINGS:
        assert isinstance(task[field], str), field
    assert task["status"] == "task_queue" and task["pexit"] == "0" and task["totalcost"] == "0"
    assert task["parameters"]["seed"] == "71942193" and task["parameters"]["scale"] == "3"
    assert task["categories"] == '["model","text-to-image","checkpoint-file","lora-flux","bf16","persistent"]'
    assert task["modelslugowner"] == "desertPixel" and task["cps"] == "0.000585000000"
    assert api.detail(tasktoken=answer["socketaccesstoken"])["tasklist"][0]["id"] == answer["taskid"]
    assert api.detail(socketaccesstoken=answer["socketaccesstoken"])["tasklist"][0]["id"] == answer["taskid"]


def test_every_body_form(api: Api) -> None:
    fields = {"prompt": "a cat", "steps": "4", "width": "256", "height": "256", "seed": "9"}
    forms = [
        dict(json=fields),
        dict(data=fields),  # application/x-www-form-urlencoded
        dict(files={k: (None, v) for k, v in fields.items()}),  # real multipart with a boundary
        dict(content='{"prompt": "a cat", "steps": 4, "width": 256, "height": "256", "seed": "9"}',
             headers_extra={"Content-Type": "multipart/form-data"}),  # the seeds' curl lines
        dict(content='{"prompt": "a cat", "steps": 4, "width": 256, "height": 256, "seed": 9}',
             headers_extra={"Content-Type": "application/x-www-form-urlencoded"}),  # curl -d without -H
    ]
    for form in forms:
        headers = {**api.headers(), **form.pop("headers_extra", {})}
        answer = api.client.post(PIXEL, headers=headers, **form).json()
        assert answer["result"], (form, answer)
        params = api.detail(taskid=answer["taskid"])["tasklist"][0]["parameters"]
        assert (params["steps"], params["width"], params["height"], params["seed"]) == ("4", "256", "256", "9")


def test_validation_errors_reach_nothing_to_the_queue(api: Api) -> None:
    cases = [
        (PIXEL, {"prompt": "x", "width": 1000}, "width: must be a multiple of 16"),
        (PIXEL, {"prompt": "x", "steps": 500}, "steps: must be between 1 and 50"),
        (PIXEL, {"prompt": "x", "scale": "loud"}, "scale: must be a number"),
        (PIXEL, {"steps": 4}, "prompt: is required"),
        (FLUX2, {"prompt": ""}, "prompt: is required"),
        (FLUX2, {"prompt": "x", "outputFormat": "gif"}, "outputFormat: must be one of jpeg, png"),
    ]
    for path, body, message in cases:
        response = api.post(path, body)
        assert response.status_code == 200
        answer = response.json()
        assert answer["result"] is False and answer["errors"][0]["code"] == 0
        assert answer["errors"][0]["message"].startswith(message), answer
    unknown = api.post("/v1/Run/nobody/nothing", {"prompt": "x"}).json()
    assert unknown["result"] is False and unknown["errors"][0]["code"] == 1
    assert "nobody/nothing" in unknown["errors"][0]["message"]
    assert api.post("/v1/Task/List", {}).json()["total"] == "0"


def test_callback_url(api: Api) -> None:
    kept = api.run(callbackUrl="https://example.test/hook")
    assert api.detail(taskid=kept["taskid"])["tasklist"][0]["callbackurl"] == "https://example.test/hook"
    seed_text = "You can provide a callback URL; Wiro will send a POST request to it when the task is completed."
    ignored = api.detail(taskid=api.run(callbackUrl=seed_text)["taskid"])["tasklist"][0]
    assert ignored["callbackurl"] == "" and "callbackUrl ignored" in ignored["debugoutput"]


def test_list_cancel_kill(api: Api) -> None:
    ids = [api.run()["taskid"] for _ in range(3)]
    listed = api.post("/v1/Task/List", {"start": "0", "limit": "2", "sort": "id", "order": "DESC"}).json()
    assert listed["total"] == "3" and [t["id"] for t in listed["tasklist"]] == ids[::-1][:2]
    only = api.post("/v1/Task/List", {"modelName": "black-forest-labs/flux-2-flex-t2i"}).json()
    assert only["total"] == "0"

    cancelled = api.post("/v1/Task/Cancel", {"taskid": ids[0]}).json()
    assert set(cancelled) == {"errors", "tasklist", "result"}
    assert cancelled["tasklist"][0]["status"] == "task_cancel" and cancelled["tasklist"][0]["canceltime"] != "0"
    again = api.post("/v1/Task/Cancel", {"taskid": ids[0]}).json()
    assert again["errors"][0]["message"] == "Task is not in a cancellable state."

    token = api.detail(taskid=ids[1])["tasklist"][0]["socketaccesstoken"]
    killed = api.post("/v1/Task/Kill", {"socketaccesstoken": token}).json()
    assert killed["tasklist"][0]["status"] == "task_cancel"
    assert "not in a killable state" in api.post("/v1/Task/Kill", {"taskid": ids[1]}).json()["errors"][0]["message"]


def test_task_errors(api: Api) -> None:
    missing = api.detail(taskid="999")
    assert missing == {"result": False, "errors": [{"code": 1, "message": "There is no task yet."}]}
    assert api.detail()["errors"][0]["message"] == "taskid or socketaccesstoken is required"
    assert api.detail(taskid="abc")["errors"][0]["message"].startswith("taskid:")
    assert api.detail(tasktoken="nope")["errors"][0]["code"] == 1


def test_authentication(api: Api) -> None:
    body = {"prompt": "x"}
    none = api.client.post(PIXEL, json=body)
    assert none.status_code == 401 and none.json()["errors"][0]["code"] == 98
    only_key = api.client.post(PIXEL, json=body, headers={"x-api-key": api.key})
    assert only_key.status_code == 401
    assert only_key.json()["errors"][0]["message"].startswith("Project requires signature authentication.")
    wrong = api.client.post(PIXEL, json=body, headers=api.headers(secret="wrong"))
    assert wrong.status_code == 401 and wrong.json()["errors"][0]["message"] == "Project authorization is not valid."
    unknown = api.client.post(PIXEL, json=body, headers=api.headers(key="f" * 32))
    assert unknown.status_code == 401

    captured = api.headers()
    assert api.client.post(PIXEL, json=body, headers=captured).json()["result"]
    replay = api.client.post(PIXEL, json={"prompt": "evil"}, headers=captured)
    assert replay.status_code == 401 and "already used" in replay.json()["errors"][0]["message"]

    stale = signature_headers(api.key, api.secret, nonce=str(int(time.time()) - 3600))
    answer = api.client.post(PIXEL, json=body, headers=stale)
    assert answer.status_code == 401 and "clock" in answer.json()["errors"][0]["message"]
    millis = signature_headers(api.key, api.secret, nonce=str(time.time_ns() // 1_000_000))
    assert api.client.post(PIXEL, json=body, headers=millis).json()["result"]

    keyonly = api.store.create_project("k", "apikey")
    assert api.client.post(PIXEL, json=body, headers={"x-api-key": keyonly.api_key}).json()["result"]
    api.store.revoke_project(keyonly.api_key)
    assert api.client.post(PIXEL, json=body, headers={"x-api-key": keyonly.api_key}).status_code == 401


def test_projects_cannot_see_each_other(api: Api) -> None:
    mine = api.run()
    other = api.store.create_project("other", "signature")
    theirs = api.headers(other.api_key, other.api_secret)
    for path, body in [
        ("/v1/Task/Detail", {"taskid": mine["taskid"]}),
        ("/v1/Task/Detail", {"tasktoken": mine["socketaccesstoken"]}),
        ("/v1/Task/Cancel", {"taskid": mine["taskid"]}),
        ("/v1/Task/Kill", {"taskid": mine["taskid"]}),
    ]:
        answer = api.client.post(path, json=body, headers=api.headers(other.api_key, other.api_secret)).json()
        assert answer["errors"][0]["message"] == "There is no task yet.", path
    assert api.client.post("/v1/Task/List", json={}, headers=theirs).json()["total"] == "0"
    assert api.detail(taskid=mine["taskid"])["tasklist"][0]["status"] == "task_queue"


def test_tools(api: Api) -> None:
    listed = api.post("/v1/Tool/List", {"start": "0", "limit": "10", "search": "", "categories": []}).json()
    assert listed["result"] and listed["total"] == "3"
    tool = listed["tool"][0]
    assert set(tool) == {"id", "title", "slugowner", "slugproject", "cleanslugowner", "cleanslugproject",
                         "description", "categories", "tags", "image", "cps", "parameters"}
    items = {item["id"]: item for item in tool["parameters"][0]["items"]}
    assert items["width"] == {"id": "width", "type": "number", "label": "width", "description": "width-help",
                              "default": "1024", "required": False, "options": [], "min": "64", "max": "2048",
                              "step": "16"}
    assert api.post("/v1/Tool/List", {"search": "pixel"}).json()["total"] == "1"
    assert api.post("/v1/Tool/List", {"categories": ["partner"]}).json()["tool"][0]["slugproject"] == "flux-2-flex-t2i"
    detail = api.post("/v1/Tool/Detail", {"slugowner": "black-forest-labs", "slugproject": "flux-2-flex-t2i"}).json()
    fmt = next(i for i in detail["tool"][0]["parameters"][0]["items"] if i["id"] == "outputFormat")
    assert fmt["options"] == [{"label": "JPEG", "value": "jpeg"}, {"label": "PNG", "value": "png"}]
    assert api.post("/v1/Tool/Detail", {"slugowner": "x", "slugproject": "y"}).json()["errors"][0]["code"] == 1


def test_files_route_refuses_anything_but_real_outputs(api: Api, tmp_path: Path) -> None:
    key = "a" * 40
    LocalStorage(tmp_path / "outputs").put(key, "0.png", b"\x89PNG", "image/png")
    ok = api.client.get(f"/files/{key}/0.png")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png" and ok.content == b"\x89PNG"
    for path in [f"/files/{key}/1.png", f"/files/{'b' * 40}/0.png", "/files/..%2F..%2Fcredentials.json/0.png",
                 f"/files/{key}/..%2F..%2Ffluxrun.db", "/files/../fluxrun.db"]:
        assert api.client.get(path).status_code == 404, path
