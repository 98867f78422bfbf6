"""The queue's limits as a client meets them at Run, on both databases (in-process API)."""

from __future__ import annotations

import threading
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
from fluxrun.store.base import Project, TaskStore
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = "/v1/Run/desertPixel/Flat-Pixel-Art-FLUX"


class Client:
    def __init__(self, http: TestClient, store: TaskStore) -> None:
        self.http = http
        self.store = store

    def project(self, name: str) -> Project:
        return self.store.create_project(name, "signature")

    def post(self, project: Project, path: str, body: dict[str, object]):
        headers = signature_headers(project.api_key, project.api_secret or "", nonce=str(time.time_ns()))
        return self.http.post(path, json=body, headers=headers)

    def run(self, project: Project):
        return self.post(project, PIXEL, {"prompt": "a cat", "steps": 2})


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[Client]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, project_concurrency=2, queue_limit=5)
    store = open_store(settings.effective_database_url)
    store.migrate()
    app = create_app(settings, store, LocalStorage(settings.outputs_dir), reaper=False)
    with TestClient(app) as http:
        yield Client(http, store)
    store.close()


def test_a_run_over_the_projects_limit_gets_code_96(client: Client) -> None:
    project = client.project("p")
    first, second = client.run(project).json(), client.run(project).json()
    assert first["result"] and second["result"]
    refused = client.run(project)
    assert refused.status_code == 200  # as the hosted service answers: result false, not an HTTP error
    assert refused.json() == {"result": False, "errors": [{"code": 96, "message": (
        "Concurrency limit reached: this project has 2 tasks queued or running and may have at most 2 at once. "
        "Run again when one of them has ended.")}]}
    assert client.post(project, "/v1/Task/List", {}).json()["total"] == "2"  # the refused Run left nothing
    # Another project is not held back; cancelling a task frees a place.
    assert client.run(client.project("other")).json()["result"]
    assert client.post(project, "/v1/Task/Cancel", {"taskid": first["taskid"]}).json()["result"]
    assert client.run(project).json()["result"]


def test_concurrent_runs_never_pass_the_limit(client: Client) -> None:
    project = client.project("p")
    client.store.set_concurrency_limit(project.api_key, 5)
    answers: list[dict[str, object]] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def run() -> None:
        start.wait()
        answer = client.run(project).json()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=run) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [a for a in answers if a["result"]]
    assert len(accepted) == 5
    assert all(a["errors"][0]["code"] == 96 for a in answers if not a["result"])
    assert client.post(project, "/v1/Task/List", {}).json()["total"] == "5"


def test_a_full_queue_answers_429_with_retry_after(client: Client) -> None:
    projects = [client.project(f"p{i}") for i in range(3)]
    for project in projects[:2]:
        assert client.run(project).json()["result"] and client.run(project).json()["result"]
    assert client.run(projects[2]).json()["result"]  # 5 queued: the limit
    refused = client.run(projects[2])
    assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
    assert refused.json() == {"result": False, "errors": [{"code": 0, "message": (
        "The queue is full: 5 tasks are waiting for a worker and the server accepts at most 5. "
        "Try again in 30 seconds.")}]}
    assert client.post(projects[2], "/v1/Task/List", {}).json()["total"] == "1"  # the refused Run left nothing
    # A task that leaves the queue (here: claimed by a worker) makes room.
    assert client.store.claim("w", 30, time.time()) is not None
    assert client.run(projects[2]).json()["result"]
