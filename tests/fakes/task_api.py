"""A scripted task API behind an ``httpx.MockTransport``, for the SDK's unit tests.

Each endpoint (``"Run/owner/project"``, ``"Task/Detail"``, any path such as
``"/files/x/0.png"``) answers from a script: a queue of answers, the last one repeating.
An answer is an ``httpx.Response``, a dict (sent as HTTP 200 JSON), or an exception
(raised, as httpx raises a failed connection). Every request is kept in ``requests``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

Answer = httpx.Response | dict[str, Any] | Exception | Callable[[httpx.Request], httpx.Response]


def task_wire(taskid: str = "7", status: str = "task_queue", pexit: str = "0", debugerror: str = "",
              outputs: list[dict[str, Any]] | None = None, token: str = "t" * 30) -> dict[str, Any]:
    """A task as Task/Detail shows it (SPEC.md section 3), the fields the SDK reads and a few more."""
    return {
        "id": taskid, "uuid": "3758c6f1-1f4f-4e98-9f3f-4fe6319b1aac", "socketaccesstoken": token,
        "parameters": {"prompt": "a cat", "steps": "4"}, "debugoutput": "", "debugerror": debugerror,
        "starttime": "0", "endtime": "0", "elapsedseconds": "1.5000", "status": status, "cps": "0.000585000000",
        "totalcost": "0", "projectid": "1", "modelid": "1", "modelslugowner": "desertPixel",
        "modelslugproject": "Flat-Pixel-Art-FLUX", "callbackurl": "", "createtime": "1795471079", "pexit": pexit,
        "categories": "[]", "outputs": outputs or [], "size": "0",
    }


def detail(task: dict[str, Any]) -> dict[str, Any]:
    return {"total": "1", "errors": [], "tasklist": [task], "result": True}


def refusal(code: int, message: str) -> dict[str, Any]:
    return {"result": False, "errors": [{"code": code, "message": message}]}


class FakeTaskApi:
    def __init__(self, base_url: str = "http://fluxrun.test/v1") -> None:
        self.base_url = base_url.rstrip("/")
        self.scripts: dict[str, list[Answer]] = {}
        self.requests: list[httpx.Request] = []

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def on(self, endpoint: str, *answers: Answer) -> FakeTaskApi:
        self.scripts[endpoint] = list(answers)
        return self

    def sent(self, endpoint: str) -> list[httpx.Request]:
        return [r for r in self.requests if self._endpoint(r) == endpoint]

    def bodies(self, endpoint: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.sent(endpoint)]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        endpoint = self._endpoint(request)
        script = self.scripts.get(endpoint)
        if not script:
            return httpx.Response(404, json=refusal(1, f"no script for {endpoint}"))
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        if callable(answer):
            return answer(request)
        return httpx.Response(200, json=answer)

    def _endpoint(self, request: httpx.Request) -> str:
        url = str(request.url)
        return url[len(self.base_url) + 1:] if url.startswith(self.base_url + "/") else request.url.path
