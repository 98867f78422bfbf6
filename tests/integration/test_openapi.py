"""The OpenAPI document (/openapi.json) says what the API really takes and answers.

In process, no worker: the document is valid OpenAPI 3.1; every route is in it with its
three body forms and its authentication; each tool's Run body is that tool's inputs with the
server's own defaults and ranges; and real answers of every kind (success, validation error,
unknown task, 401, concurrency limit code 96, full queue 429, shutting down 503) match the
schemas it gives them, the errors in SPEC.md section 7's exact shape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from fluxrun.api.app import create_app
from fluxrun.api.lifecycle import Lifecycle
from fluxrun.api.openapi import BODY_MEDIA_TYPES, SIGNED
from fluxrun.auth import signature_headers
from fluxrun.config import Settings
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from fluxrun.store.base import NewOutput, Project, TaskStore
from fluxrun.tools.catalog import TOOLS

PIXEL = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"
V1_ROUTES = ["/v1/Run/{owner}/{project}", "/v1/Task/Detail", "/v1/Task/List", "/v1/Task/Cancel", "/v1/Task/Kill",
             "/v1/Tool/List", "/v1/Tool/Detail"]


class Api:
    def __init__(self, client: TestClient, store: TaskStore, lifecycle: Lifecycle) -> None:
        self.client = client
        self.store = store
        self.lifecycle = lifecycle
        self.project = store.create_project("doc", "signature")
        self.document: dict[str, Any] = client.get("/openapi.json").json()

    def post(self, path: str, body: dict[str, Any], project: Project | None = None, **headers: str) -> Any:
        project = project or self.project
        signed = signature_headers(project.api_key, project.api_secret, nonce=str(time.time_ns()))
        return self.client.post(path, json=body, headers={**signed, **headers})

    def conforms(self, response: Any, path: str, method: str = "post") -> dict[str, Any]:
        """The answer is one the document lists for this path and status; returns its JSON."""
        responses = self.document["paths"][path][method]["responses"]
        assert str(response.status_code) in responses, (path, response.status_code, response.text)
        schema = responses[str(response.status_code)]["content"]["application/json"]["schema"]
        answer = response.json()
        jsonschema.validate(answer, {**schema, "components": self.document["components"]})
        return answer


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path, project_concurrency=2, queue_limit=3)
    store = open_store(settings.effective_database_url)
    store.migrate()
    lifecycle = Lifecycle()
    app = create_app(settings, store, LocalStorage(settings.outputs_dir), reaper=False, lifecycle=lifecycle)
    with TestClient(app) as client:
        yield Api(client, store, lifecycle)
    store.close()


def assert_error(answer: dict[str, Any], code: int, starts: str) -> None:
    assert set(answer) == {"result", "errors"} and answer["result"] is False, answer
    [error] = answer["errors"]
    assert set(error) == {"code", "message"} and error["code"] == code, answer
    assert error["message"].startswith(starts), answer


def test_the_document_is_valid_openapi_and_served(api: Api) -> None:
    validate(api.document)
    assert api.document == api.client.app.openapi()  # type: ignore[attr-defined]
    assert api.document["components"]["securitySchemes"]["signature"]["name"] == "x-signature"


def test_every_route_has_its_body_forms_authentication_and_errors(api: Api) -> None:
    paths = api.document["paths"]
    tool_runs = [f"/v1/Run/{tool.slug}" for tool in TOOLS]
    assert set(paths) == {*V1_ROUTES, *tool_runs, "/files/{key}/{name}", "/playground/login"}
    for path in [*V1_ROUTES, *tool_runs, "/playground/login"]:
        operation = paths[path]["post"]
        content = operation["requestBody"]["content"]
        assert list(content) == list(BODY_MEDIA_TYPES), path
        assert all(content[media] == content["application/json"] for media in BODY_MEDIA_TYPES), path
        assert operation["security"] == (SIGNED if path.startswith("/v1/") else []), path
        statuses = set(operation["responses"])
        assert {"200", "401"} <= statuses and "422" not in statuses, path
        # Every POST is rate limited, size-capped and answers 503 while the database is away.
        assert statuses >= {"413", "429", "503"}, path
    assert set(paths["/files/{key}/{name}"]["get"]["responses"]["200"]["content"]) == {"image/png", "image/jpeg"}


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.slug)
def test_a_tools_run_body_is_its_inputs_with_the_servers_own_defaults(api: Api, tool: Any) -> None:
    body = api.document["paths"][f"/v1/Run/{tool.slug}"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert list(schema["properties"]) == [spec.name for spec in tool.inputs] + ["callbackUrl"]
    assert schema["required"] == ["prompt"]
    # What the server fills in for a missing input is the document's default (the seed: random).
    filled = tool.validate({"prompt": "a cat"})
    for spec in tool.inputs:
        described = schema["properties"][spec.name]
        if spec.kind == "seed" or spec.required:
            assert "default" not in described, spec.name
        else:
            assert described["default"] == filled[spec.name], spec.name
        number = described["anyOf"][0] if "anyOf" in described else described
        if spec.options:
            assert described["enum"] == [option.value for option in spec.options]
        if spec.kind in ("int", "float"):
            assert (number.get("minimum"), number.get("maximum")) == (spec.min, spec.max), spec.name
            assert number.get("multipleOf") == spec.multiple_of, spec.name
    # Tool/Detail and the document agree (both come from the spec).
    items = api.post("/v1/Tool/Detail", {"slugowner": tool.slugowner, "slugproject": tool.slugproject}).json()
    assert [item["id"] for item in items["tool"][0]["parameters"][0]["items"]] == list(schema["properties"])[:-1]


def test_answers_match_the_document(api: Api) -> None:
    ran = api.conforms(api.post(PIXEL, {"prompt": "a cat", "width": "512", "height": 512}), PIXEL)
    assert ran["result"] is True
    generic = api.conforms(api.post("/v1/Run/nobody/nothing", {"prompt": "x"}), "/v1/Run/{owner}/{project}")
    assert_error(generic, 1, "Tool nobody/nothing not found")
    assert_error(api.conforms(api.post(PIXEL, {"prompt": "x", "width": 1000}), PIXEL), 0, "width: must be a multiple")
    # A task that ended with an output, so the output's shape is checked too.
    lease = api.store.claim("worker-1", 30.0, time.time())
    assert lease is not None
    api.store.finish_success(lease, [NewOutput("0.png", "image/png", 10)], 1.5, time.time())
    detail = api.conforms(api.post("/v1/Task/Detail", {"taskid": ran["taskid"]}), "/v1/Task/Detail")
    assert detail["tasklist"][0]["outputs"][0]["name"] == "0.png"
    queued = api.conforms(api.post(PIXEL, {"prompt": "a dog"}), PIXEL)
    listed = api.conforms(api.post("/v1/Task/List", {"limit": "5"}), "/v1/Task/List")
    assert listed["total"] == "2"
    assert_error(api.conforms(api.post("/v1/Task/Detail", {"taskid": "99999"}), "/v1/Task/Detail"), 1, "There is no task")
    assert_error(api.conforms(api.post("/v1/Task/Cancel", {"taskid": ran["taskid"]}), "/v1/Task/Cancel"), 0,
                 "Task is not in a cancellable state.")
    cancelled = api.conforms(api.post("/v1/Task/Cancel", {"taskid": queued["taskid"]}), "/v1/Task/Cancel")
    assert cancelled["tasklist"][0]["status"] == "task_cancel"
    assert_error(api.conforms(api.post("/v1/Task/Kill", {"tasktoken": queued["socketaccesstoken"]}), "/v1/Task/Kill"),
                 0, "Task is not in a killable state")
    api.conforms(api.post("/v1/Tool/List", {}), "/v1/Tool/List")
    api.conforms(api.post("/v1/Tool/Detail", {"slugowner": "desertPixel", "slugproject": "Flat-Pixel-Art-FLUX"}),
                 "/v1/Tool/Detail")
    login = api.client.post("/playground/login", json={"code": "not-a-code"})
    assert login.status_code == 401
    assert_error(api.conforms(login, "/playground/login"), 99, "This login link is not valid")
    missing = api.client.get("/files/" + "a" * 40 + "/0.png")
    assert missing.status_code == 404
    assert_error(api.conforms(missing, "/files/{key}/{name}", "get"), 1, "File not found.")


def test_authentication_failures_are_401_in_shape(api: Api) -> None:
    key, secret = api.project.api_key, api.project.api_secret or ""
    for headers, code, starts in [
        ({}, 98, "x-api-key header is required."),
        ({"x-api-key": key}, 98, "Project requires signature authentication."),
        ({"x-api-key": key, "x-nonce": "1", "x-signature": "00"}, 99, "Project authorization is not valid."),
        (signature_headers(key, secret, nonce=str(int(time.time()) - 3600)), 99, "x-nonce reads as a unix time"),
    ]:
        response = api.client.post("/v1/Tool/List", json={}, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert_error(api.conforms(response, "/v1/Tool/List"), code, starts)


def test_limits_are_refused_in_shape(api: Api) -> None:
    """Concurrency limit (code 96, HTTP 200), full queue (429 + Retry-After), draining (503 + Retry-After)."""
    for _ in range(2):
        assert api.post(PIXEL, {"prompt": "a cat"}).json()["result"] is True
    over = api.post(PIXEL, {"prompt": "a cat"})
    assert over.status_code == 200
    assert_error(api.conforms(over, PIXEL), 96, "Concurrency limit reached")
    other = api.store.create_project("other", "signature")
    assert api.post(PIXEL, {"prompt": "a cat"}, project=other).json()["result"] is True  # the third queued task
    full = api.post(PIXEL, {"prompt": "a cat"}, project=other)
    assert full.status_code == 429 and full.headers["retry-after"].isdigit()
    assert_error(api.conforms(full, PIXEL), 0, "The queue is full")
    api.lifecycle.start_draining()
    draining = api.post("/v1/Run/fluxrun/Realism-FLUX", {"prompt": "a cat"}, project=other)
    assert draining.status_code == 503 and draining.headers["retry-after"].isdigit()
    assert_error(api.conforms(draining, "/v1/Run/fluxrun/Realism-FLUX"), 0, "This server is shutting down")
