"""Requests the fuzzers (test_fuzz_api.py, tests/unit/*_properties.py) found answered with a 500
or outside SPEC.md section 7, each kept as a plain regression test: the answer a client now
gets, on SQLite and on PostgreSQL (whose text columns refuse NUL and whose ids are 32-bit)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fluxrun.api.app import create_app
from fluxrun.auth import signature_headers
from fluxrun.config import Settings
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from tests.conftest import BACKENDS

PIXEL = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"


class Api:
    def __init__(self, client: TestClient, key: str, secret: str | None) -> None:
        self.client = client
        self.key, self.secret = key, secret

    def post(self, path: str, body: Any = None, content: bytes | None = None, content_type: str | None = None) -> Any:
        headers = signature_headers(self.key, self.secret, nonce=str(time.time_ns()))
        if content_type:
            headers["Content-Type"] = content_type
        if content is not None:
            return self.client.post(path, content=content, headers=headers)
        return self.client.post(path, json=body, headers=headers)

    def refused(self, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        """The single error of a refused request, which must be HTTP 200 in section 7's shape."""
        response = self.post(path, body, **kwargs)
        assert response.status_code == 200, (response.status_code, response.text)
        answer = response.json()
        assert set(answer) == {"result", "errors"} and answer["result"] is False, answer
        [error] = answer["errors"]
        assert set(error) == {"code", "message"}, answer
        return error


pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    store = open_store(settings.effective_database_url)
    store.migrate()
    project = store.create_project("found", "signature")
    with TestClient(create_app(settings, store, LocalStorage(settings.outputs_dir), reaper=False)) as client:
        yield Api(client, project.api_key, project.api_secret)
    store.close()


@pytest.mark.parametrize("path", ["/v1/Task/Detail", "/v1/Task/Cancel", "/v1/Task/Kill"])
@pytest.mark.parametrize("taskid", [2**31, 2**63, 10**30, "56612780288895729664"])
def test_a_task_id_beyond_the_databases_integers_names_no_task(api: Api, path: str, taskid: Any) -> None:
    # Was a 500: SQLite's OverflowError beyond 2**63, PostgreSQL's "integer out of range" beyond 2**31.
    assert api.refused(path, {"taskid": taskid}) == {"code": 1, "message": "There is no task yet."}


@pytest.mark.parametrize("taskid", ["²", "¹2", "٣"])
def test_a_task_id_of_other_digits_is_refused_by_name(api: Api, taskid: str) -> None:
    # "²".isdigit() is true but int("²") raises: was a 500.
    assert api.refused("/v1/Task/Detail", {"taskid": taskid}) == {"code": 0, "message": "taskid: must be a task id (digits)"}


def test_task_list_offsets_beyond_the_database_are_refused_by_name(api: Api) -> None:
    # start=9223372036854775808 was a 500 on SQLite (OverflowError); "²" a 500 everywhere.
    assert api.refused("/v1/Task/List", {"start": str(2**63)}) == {
        "code": 0, "message": "start: must be between 0 and 9223372036854775807"}
    assert api.refused("/v1/Task/List", {"limit": "²"}) == {"code": 0, "message": "limit: must be an integer"}
    assert api.refused("/v1/Tool/List", {"start": "²"}) == {"code": 0, "message": "start: must be a non-negative integer"}
    listed = api.post("/v1/Task/List", {"start": str(2**63 - 1)}).json()
    assert listed["result"] is True and listed["tasklist"] == []


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/Task/Detail", {"tasktoken": "a\x00b"}, "tasktoken"),
    ("/v1/Task/Kill", {"socketaccesstoken": "\x00"}, "socketaccesstoken"),
    ("/v1/Task/List", {"modelName": "desertPixel/\x00"}, "modelName"),
    (PIXEL, {"prompt": "a cat", "callbackUrl": "https://example.com/\x00"}, "callbackUrl"),
    (PIXEL, {"prompt": "a \x00 cat"}, "prompt"),
    ("/v1/Tool/Detail", {"slugowner": "x", "slugproject": "y", "tags": ["\x00"]}, "tags"),
])
def test_nul_characters_are_refused_by_field(api: Api, path: str, body: dict[str, Any], field: str) -> None:
    # PostgreSQL cannot store or compare text holding NUL: these were 500s there.
    assert api.refused(path, body) == {"code": 0, "message": f"{field}: must not contain the NUL character (U+0000)"}
    assert api.refused(path, content=b"a=%00", content_type="application/x-www-form-urlencoded")["message"] == (
        "a: must not contain the NUL character (U+0000)")


@pytest.mark.parametrize(("body", "message"), [
    (b'{"prompt": "x", "scale": ' + b"9" * 400 + b"}", "scale: must be a finite number (got 9999999999"),
    (b'{"prompt": "x", "steps": ' + b"9" * 400 + b"}", "steps: must be between 1 and 50 (got 9999999999"),
    (b'{"prompt": "x", "steps": ' + b"9" * 5000 + b"}", "steps: must be an integer (got '9999999999"),
    (b'{"prompt": ' + b"[" * 5000, "body: is nested too deeply (at most 64 levels)"),
    (b"{prompt: " + b"[" * 500 + b"}", "body: is not valid JSON: nested more than 64 levels"),
    # Valid JSON that json.loads reads, too deep for the NUL check's walk (found by the raw-body fuzz).
    (b'{"prompt": ' + b"[" * 900 + b"]" * 900 + b"}", "body: is nested too deeply (at most 64 levels)"),
    (b'{"prompt": ' + b"[" * 64 + b"]" * 64 + b"}", "body: is nested too deeply (at most 64 levels)"),
    (b'{"prompt": ' + b"[" * 63 + b"]" * 63 + b"}", "prompt: must be a string"),
])
def test_huge_and_deep_bodies_are_refused_by_name(api: Api, body: bytes, message: str) -> None:
    # Were 500s: float() of a 400-digit int, its range message, json's 4300-digit limit, recursion.
    for content_type in ("application/json", "multipart/form-data"):
        error = api.refused(PIXEL, content=body, content_type=content_type)
        assert error["code"] == 0 and error["message"].startswith(message), error


def test_broken_multipart_is_a_body_error_with_http_200(api: Api) -> None:
    # Starlette's own answer was HTTP 400, outside section 7's convention and the document.
    error = api.refused(PIXEL, content=b"garbage", content_type="multipart/form-data; boundary=xyz")
    assert error == {"code": 0, "message": "body: is not valid multipart/form-data: Invalid multipart data."}
    nameless = b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n"
    error = api.refused(PIXEL, content=nameless, content_type="multipart/form-data; boundary=xyz")
    assert error["message"].startswith("body: is not valid multipart/form-data: ")
