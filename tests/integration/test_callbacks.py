"""Callbacks in-process, on both stores: the API takes a task with a callbackUrl, the worker
runs it on the tiny FLUX.1 pipeline, the deliverer POSTs to a real receiver on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from fluxrun.api.app import create_app
from fluxrun.auth import signature_headers
from fluxrun.backends.base import BackendOptions
from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.storage.local import LocalStorage
from fluxrun.store.base import Delivery, Project, TaskStore
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.callbacks import Deliverer
from fluxrun.worker.loop import Worker
from tests.conftest import BACKENDS
from tests.integration.receiver import REDIRECT_TARGET, Receiver

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
TINY = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> BackendCache:
    cache = BackendCache(BackendOptions(models="tiny", models_dir=tmp_path_factory.mktemp("models")))
    cache.get("flux1")
    return cache


@dataclass
class Rig:
    settings: Settings
    store: TaskStore
    project: Project
    client: TestClient
    worker: Worker
    deliverer: Deliverer
    receiver: Receiver

    def post(self, path: str, body: dict) -> dict:
        headers = signature_headers(self.project.api_key, self.project.api_secret, nonce=str(time.time_ns()))
        answer = self.client.post(path, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def run(self, **inputs: object) -> str:
        answer = self.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                           {**TINY, "callbackUrl": self.receiver.url(), **inputs})
        assert answer["result"], answer
        return answer["taskid"]

    def detail_bytes(self, taskid: str) -> bytes:
        headers = signature_headers(self.project.api_key, self.project.api_secret, nonce=str(time.time_ns()))
        return self.client.post("/v1/Task/Detail", json={"taskid": taskid}, headers=headers).content

    def delivery(self, taskid: str) -> Delivery:
        [delivery] = self.store.list_deliveries(int(taskid))
        return delivery

    def deliver_all(self, taskid: str, timeout: float = 60) -> Delivery:
        """Make tries (the deliverer's own loop, driven here) until the delivery ends."""
        deadline = time.monotonic() + timeout
        while (delivery := self.delivery(taskid)).state == "pending":
            assert time.monotonic() < deadline, delivery
            self.deliverer.run_once()
            time.sleep(0.01)
        return delivery

    def verify(self, request) -> dict:
        """The body, after the Standard Webhooks reference library checked its signature."""
        return Webhook(self.project.webhook_secret).verify(request.body, request.headers)


def _rig(store: TaskStore, backends: BackendCache, tmp_path: Path, receiver: Receiver, **settings: object) -> Rig:
    defaults: dict[str, object] = {
        "public_url": "http://fluxrun.test",  # output URLs in bodies: the same for the API and the worker
        "callback_allow": "127.0.0.1",  # the receiver
        "callback_retry_base_seconds": 0.01,
        "callback_retry_max_seconds": 0.02,
        "callback_max_attempts": 3,
        "callback_timeout_seconds": 5,
    }
    config = Settings(data_dir=tmp_path, **{**defaults, **settings})
    storage = LocalStorage(config.outputs_dir)
    deliverer = Deliverer(config, store, storage, deliverer_id="test/deliverer")
    worker = Worker(config, store, storage, backends, worker_id="test/1", on_callback_owed=deliverer.wake)
    client = TestClient(create_app(config, store, storage, reaper=False))
    project = store.create_project("main", "signature")
    return Rig(config, store, project, client, worker, deliverer, receiver)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def rig(store: TaskStore, backends: BackendCache, tmp_path: Path, receiver: Receiver) -> Iterator[Rig]:
    made = _rig(store, backends, tmp_path, receiver)
    yield made
    made.deliverer.stop()


def test_a_finished_task_calls_back_at_once_with_its_detail_signed(
    store: TaskStore, backends: BackendCache, tmp_path: Path, receiver: Receiver
) -> None:
    # The deliverer polls only once a minute here: the callback comes because the worker
    # wakes it when the task ends.
    rig = _rig(store, backends, tmp_path, receiver, callback_poll_seconds=60)
    rig.deliverer.start()
    try:
        taskid = rig.run()
        assert rig.worker.run_once()
        [request] = receiver.wait_for(1, timeout=30)
    finally:
        rig.deliverer.stop()
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    body = rig.verify(request)
    task = body["tasklist"][0]
    assert task["id"] == taskid and task["status"] == "task_postprocess_end" and task["pexit"] == "0"
    assert task["outputs"][0]["url"].startswith("http://fluxrun.test/files/")
    # Byte for byte what Task/Detail answers for the task.
    assert request.body == rig.detail_bytes(taskid)
    delivery = rig.delivery(taskid)
    assert delivery.state == "delivered" and delivery.attempt == 1 and delivery.last_status == 200
    assert request.headers["webhook-id"] == delivery.webhook_id


def test_a_failed_task_calls_back_with_its_error(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(request, job):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(rig.worker.backends.get("flux1"), "generate", broken)
    taskid = rig.run()
    assert rig.worker.run_once()
    assert rig.deliver_all(taskid).state == "delivered"
    [request] = rig.receiver.requests
    task = rig.verify(request)["tasklist"][0]
    assert task["status"] == "task_postprocess_end" and task["pexit"] == "1"
    assert task["debugerror"] == "RuntimeError: CUDA out of memory" and task["outputs"] == []
    assert request.body == rig.detail_bytes(taskid)


def test_a_cancelled_task_calls_back(rig: Rig) -> None:
    taskid = rig.run()
    assert rig.post("/v1/Task/Cancel", {"taskid": taskid})["result"]
    assert rig.deliver_all(taskid).state == "delivered"
    [request] = rig.receiver.requests
    assert rig.verify(request)["tasklist"][0]["status"] == "task_cancel"
    assert request.body == rig.detail_bytes(taskid)


def test_a_cancel_through_the_api_is_called_back_at_once_by_an_idle_worker(
    store: TaskStore, backends: BackendCache, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task ends in the API process; the worker hears it on the bus and wakes its
    # deliverer, which polls only once a minute here.
    rig = _rig(store, backends, tmp_path, receiver, callback_poll_seconds=60, idle_poll_seconds=60)
    monkeypatch.setattr(rig.worker.store, "claim", lambda *_, **__: None)  # it claims nothing: the task stays queued
    stop = threading.Event()
    loop = threading.Thread(target=rig.worker.run_forever, args=(stop,))
    rig.deliverer.start()
    loop.start()
    try:
        time.sleep(1.0)  # it listens
        taskid = rig.run()
        assert rig.post("/v1/Task/Cancel", {"taskid": taskid})["result"]
        [request] = receiver.wait_for(1, timeout=30)
    finally:
        stop.set()
        loop.join(timeout=60)
        rig.deliverer.stop()
    assert rig.verify(request)["tasklist"][0]["status"] == "task_cancel"


def test_failed_tries_are_retried_with_the_same_webhook_id(rig: Rig) -> None:
    rig.receiver.answers.extend([500, 503])
    taskid = rig.run()
    rig.post("/v1/Task/Kill", {"taskid": taskid})
    delivery = rig.deliver_all(taskid)
    assert delivery.state == "delivered" and delivery.attempt == 3 and delivery.last_status == 200
    requests = rig.receiver.requests
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {delivery.webhook_id}
    for request in requests:  # each try is signed on its own
        assert rig.verify(request)["tasklist"][0]["status"] == "task_cancel"


def test_410_gone_stops_at_once(rig: Rig) -> None:
    rig.receiver.answers.append(410)
    taskid = rig.run()
    rig.post("/v1/Task/Cancel", {"taskid": taskid})
    delivery = rig.deliver_all(taskid)
    assert delivery.state == "gone" and delivery.attempt == 1 and delivery.last_status == 410
    assert rig.deliverer.run_once() == 0
    assert len(rig.receiver.requests) == 1


def test_a_redirect_is_a_failed_try_never_followed(rig: Rig) -> None:
    rig.receiver.default = 302
    taskid = rig.run()
    rig.post("/v1/Task/Cancel", {"taskid": taskid})
    delivery = rig.deliver_all(taskid)
    assert delivery.state == "failed" and delivery.attempt == 3 and delivery.last_status == 302
    assert "gave up after 3 tries" in delivery.last_error and "redirects are not followed" in delivery.last_error
    assert [r.path for r in rig.receiver.requests] == ["/hook"] * 3
    assert all(r.path != REDIRECT_TARGET for r in rig.receiver.requests)


def test_a_receiver_that_never_answers_is_given_up(rig: Rig) -> None:
    taskid = rig.run()
    port = rig.receiver.port
    rig.receiver.close()  # nothing listens there any more: every try is refused
    rig.post("/v1/Task/Cancel", {"taskid": taskid})
    delivery = rig.deliver_all(taskid)
    assert delivery.state == "failed" and delivery.attempt == 3 and delivery.last_status is None
    assert "gave up after 3 tries" in delivery.last_error and "ConnectError" in delivery.last_error, port


def test_a_loopback_name_is_refused_and_never_contacted(
    store: TaskStore, backends: BackendCache, tmp_path: Path, receiver: Receiver
) -> None:
    # No allow list this time. The API would refuse the URL at Run; a task accepted under
    # an older setting (made here in the store) meets the worker's guard.
    rig = _rig(store, backends, tmp_path, receiver, callback_allow="")
    task = store.create_task(rig.project.id, PIXEL.slug, PIXEL.validate(TINY), PIXEL.cps,
                             callback_url=receiver.url(host="localhost"))
    store.cancel_queued(rig.project.id, task.id, time.time())
    delivery = rig.deliver_all(str(task.id))
    assert delivery.state == "failed" and delivery.attempt == 1 and delivery.last_status is None
    assert delivery.last_error.startswith("callbackUrl refused: 'localhost' names this machine (loopback)")
    assert "FLUXRUN_CALLBACK_ALLOW" in delivery.last_error
    assert receiver.requests == []
    rig.deliverer.stop()


def test_run_refuses_a_forbidden_callback_address_unless_allowed(rig: Rig) -> None:
    for url in ("http://169.254.169.254/latest/meta-data", "http://[::ffff:10.0.0.1]/", "http://0x7f.2:8080/",
                "http://localhost/hook", "ftp://example.com/x"):
        answer = rig.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX", {**TINY, "callbackUrl": url})
        assert answer["result"] is False, url
        [error] = answer["errors"]
        assert error["code"] == 0 and error["message"].startswith("callbackUrl: "), error
    answer = rig.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX", {**TINY, "callbackUrl": "http://10.0.0.1/"})
    assert "private (RFC 1918)" in answer["errors"][0]["message"]
    assert "FLUXRUN_CALLBACK_ALLOW" in answer["errors"][0]["message"]
    # The allow setting (127.0.0.1 here) lets the operator's own receiver through.
    kept = json.loads(rig.detail_bytes(rig.run()))["tasklist"][0]
    assert kept["callbackurl"] == rig.receiver.url()
