"""What an operator sees of the API in-process: /health, /ready, /metrics, the waiting line,
and draining; on SQLite and PostgreSQL where the store is involved."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fluxrun.api import lifecycle as lifecycle_module
from fluxrun.api.app import create_app
from fluxrun.api.lifecycle import Lifecycle
from fluxrun.auth import signature_headers
from fluxrun.config import Settings
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from fluxrun.store.base import GpuMemory, TaskStore, WorkerRecord
from tests.conftest import BACKENDS, postgres_url
from tests.integration.server import free_port

PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "black-forest-labs/flux-2-flex-t2i"
WAITING_FLUX2 = f"waiting for a worker that serves {FLUX2}"


class Client:
    def __init__(self, client: TestClient, store: TaskStore, key: str, secret: str) -> None:
        self.client, self.store, self.key, self.secret = client, store, key, secret

    def post(self, path: str, body: dict[str, Any]) -> Any:
        headers = signature_headers(self.key, self.secret, nonce=str(time.time_ns()))
        return self.client.post(path, json=body, headers=headers)

    def run(self, tool: str = PIXEL) -> str:
        answer = self.post(f"/v1/Run/{tool}", {"prompt": "a cat", "steps": 2}).json()
        assert answer["result"], answer
        return answer["taskid"]

    def debugoutput(self, taskid: str) -> str:
        return self.post("/v1/Task/Detail", {"taskid": taskid}).json()["tasklist"][0]["debugoutput"]

    def metrics(self) -> dict[str, Any]:
        response = self.client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return {family.name: family for family in text_string_to_metric_families(response.text)}


def _open(url: str, tmp_path: Path, storage: LocalStorage | None = None, **app_options: Any) -> tuple[Any, TaskStore]:
    settings = Settings(data_dir=tmp_path, database_url=url)
    store = open_store(settings.effective_database_url)
    store.migrate()
    app = create_app(settings, store, storage or LocalStorage(settings.outputs_dir), reaper=False, **app_options)
    return app, store


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Client]:
    app, store = _open(database_url, tmp_path)
    project = store.create_project("ops", "signature")
    with TestClient(app) as client:
        yield Client(client, store, project.api_key, project.api_secret)
    store.close()


def _register(store: TaskStore, worker_id: str, tools: tuple[str, ...], state: str = "idle", **fields: Any) -> None:
    now = time.time()
    values = dict(id=worker_id, host=worker_id.split("/")[0], pid=int(worker_id.split("/")[1]), tools=tools,
                  models="tiny", device="cpu", state=state, task_id=None, started_at=now, last_seen=now,
                  alive_until=now + 600)
    store.register_worker(WorkerRecord(**{**values, **fields}))


# -- waiting for a worker -------------------------------------------------------------------
@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_a_queued_task_says_it_waits_until_a_worker_serves_its_tool(api: Client) -> None:
    flux2 = api.run(FLUX2)
    assert api.debugoutput(flux2) == f"{WAITING_FLUX2} (none is running)\n"

    _register(api.store, "a/1", (PIXEL,))
    assert api.debugoutput(flux2) == f"{WAITING_FLUX2} (1 worker is running, serving other tools or stopping)\n"
    pixel = api.run(PIXEL)
    assert api.debugoutput(pixel) == ""  # a/1 takes it

    _register(api.store, "b/2", (PIXEL, FLUX2), state="loading")
    assert api.debugoutput(flux2) == f"{WAITING_FLUX2} (1 worker serving it is still loading models)\n"

    assert api.store.worker_seen("b/2", "idle", None, None, time.time(), alive_until=time.time() + 600)
    assert api.debugoutput(flux2) == ""
    listed = api.post("/v1/Task/List", {}).json()["tasklist"]
    assert [t["debugoutput"] for t in listed] == ["", ""]

    # b/2 stops heartbeating: gone, and the line is back, in Task/List too.
    assert api.store.worker_seen("b/2", "idle", None, None, time.time() - 60, alive_until=time.time() - 1)
    listed = {t["id"]: t["debugoutput"] for t in api.post("/v1/Task/List", {}).json()["tasklist"]}
    assert listed == {flux2: f"{WAITING_FLUX2} (1 worker is running, serving other tools or stopping)\n", pixel: ""}
    # Rendered, never stored.
    assert api.store.get_task(api.store.list_projects()[0].id, task_id=int(flux2)).debugoutput == ""


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_the_waiting_line_follows_the_tasks_own_notes_and_only_queued_tasks_get_it(api: Client) -> None:
    answer = api.post(f"/v1/Run/{FLUX2}", {"prompt": "a cat", "callbackUrl": "later, maybe"}).json()
    lines = api.debugoutput(answer["taskid"]).splitlines()
    assert lines[0].startswith("callbackUrl ignored") and lines[1] == f"{WAITING_FLUX2} (none is running)"
    lease = api.store.claim("w/1", 30, time.time())  # no live worker in the registry, but a worker holds it
    assert lease.task.status is Status.ACCEPT
    assert "waiting for a worker" not in api.debugoutput(answer["taskid"])


# -- /health and /ready ---------------------------------------------------------------------
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_health_and_ready_need_no_key(api: Client) -> None:
    health = api.client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = api.client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "failed": [], "checks": {"process": "ok", "database": "ok", "storage": "ok"}}


def _unreachable_database(kind: str, tmp_path: Path) -> str:
    if kind == "postgres":
        base = postgres_url()
        if base is None:
            pytest.skip("FLUXRUN_TEST_DATABASE_URL is not set")
        return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"  # nothing listens there
    return f"sqlite:///{tmp_path / 'db' / 'fluxrun.db'}"


@pytest.mark.parametrize("kind", BACKENDS)
def test_ready_names_the_database_when_it_is_down_and_health_does_not_care(kind: str, tmp_path: Path) -> None:
    url = _unreachable_database(kind, tmp_path)
    settings = Settings(data_dir=tmp_path, database_url=url)
    store = open_store(settings.effective_database_url)
    if kind == "sqlite":  # the database's folder disappears (a lost volume): no new connection opens
        shutil.rmtree(tmp_path / "db")
        (tmp_path / "db").write_text("not a folder")
    app = create_app(settings, store, LocalStorage(settings.outputs_dir), reaper=False)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False and body["failed"] == ["database"]
        assert body["checks"]["database"].startswith("FLUXRUN_DATABASE_URL: the database cannot be reached (")
        assert body["checks"]["storage"] == "ok"
        # /metrics still answers: the process metrics, and a gauge that says the rest is missing.
        metrics = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert metrics["fluxrun_database_up"].samples[0].value == 0
        assert "process_cpu_seconds" in metrics and "fluxrun_queue_depth" not in metrics
    store.close()


class CountingStorage(LocalStorage):
    """Local files that count their write checks (each is a probe write; on S3 a PUT)."""

    checks = 0

    def check(self) -> None:
        self.checks += 1
        super().check()


def test_ready_names_storage_it_cannot_write_and_checks_it_at_most_every_few_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the outputs folder should be")
    storage = CountingStorage(blocker / "outputs")
    app, store = _open(f"sqlite:///{tmp_path / 'fluxrun.db'}", tmp_path, storage=storage)
    with TestClient(app) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["failed"] == ["storage"] and body["checks"]["database"] == "ok"
        assert body["checks"]["storage"].startswith("FLUXRUN_DATA_DIR: cannot write output files under ")

        blocker.unlink()  # the operator fixes it
        monkeypatch.setattr(lifecycle_module, "STORAGE_CHECK_CACHE_SECONDS", 0.0)
        assert client.get("/ready").status_code == 200

        monkeypatch.setattr(lifecycle_module, "STORAGE_CHECK_CACHE_SECONDS", 3600.0)
        before = storage.checks
        for _ in range(10):
            assert client.get("/ready").status_code == 200
        assert storage.checks == before  # a load balancer's probes do not each write to the storage
    store.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_draining_refuses_runs_with_503_and_retry_after_and_still_serves_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    lifecycle = Lifecycle()
    app, store = _open(database_url, tmp_path, lifecycle=lifecycle)
    project = store.create_project("ops", "signature")
    with TestClient(app) as client:
        api = Client(client, store, project.api_key, project.api_secret)
        taskid = api.run()
        assert lifecycle.start_draining()
        refused = api.post(f"/v1/Run/{PIXEL}", {"prompt": "a cat"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json() == {"result": False, "errors": [{"code": 0, "message": (
            "This server is shutting down and takes no new tasks; retry in a few seconds "
            "(a load balancer sends the retry to another server).")}]}
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["failed"] == ["process"]
        detail = api.post("/v1/Task/Detail", {"taskid": taskid})
        assert detail.status_code == 200 and detail.json()["tasklist"][0]["status"] == "task_queue"
        assert client.get("/health").status_code == 200
        assert api.post("/v1/Task/List", {}).json()["total"] == "1"  # the refused Run queued nothing
    store.close()


# -- /metrics -------------------------------------------------------------------------------
def _shared(families: dict[str, Any]) -> dict[str, list[tuple[str, tuple, float]]]:
    """The metrics every API process must agree on: those read from the database."""
    return {
        name: sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in family.samples)
        for name, family in families.items()
        if name.startswith("fluxrun_") and not name.startswith("fluxrun_http_")
    }


def _sample(families: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    family = families[name]
    for s in family.samples:
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no {sample or name} {labels} in {family.samples}")


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_metrics_are_read_from_the_database_and_every_api_process_reports_the_same(
    database_url: str, tmp_path: Path
) -> None:
    app_a, store_a = _open(database_url, tmp_path / "a")
    app_b, store_b = _open(database_url, tmp_path / "b")  # another API process on the same database
    project = store_a.create_project("ops", "signature")
    with TestClient(app_a) as client_a, TestClient(app_b) as client_b:
        a = Client(client_a, store_a, project.api_key, project.api_secret)
        b = Client(client_b, store_b, project.api_key, project.api_secret)
        for _ in range(4):
            a.run(PIXEL)
        b.run(FLUX2)
        now = time.time()
        done = store_a.claim("w/1", 30, now)  # the first pixel task, 3.2 s of generation
        store_a.advance(done, Status.START, now)
        store_a.finish_success(done, [], elapsed=3.2, now=now)
        store_a.claim("w/1", 30, now)  # the second: running
        _register(store_a, "gpu-1/10", (PIXEL, FLUX2), state="busy", task_id=2,
                  gpu=GpuMemory(allocated=2_000, reserved=3_000, total=80_000), device="cuda")
        _register(store_a, "gpu-2/11", (PIXEL,), state="idle")
        _register(store_a, "gone/12", (FLUX2,), state="idle", alive_until=now - 1)
        _register(store_a, "done/13", (FLUX2,), state="stopped")

        seen_a, seen_b = a.metrics(), b.metrics()
        assert _shared(seen_a) == _shared(seen_b)

        assert _sample(seen_a, "fluxrun_database_up") == 1
        assert _sample(seen_a, "fluxrun_queue_depth", tool=PIXEL) == 2
        assert _sample(seen_a, "fluxrun_queue_depth", tool=FLUX2) == 1
        assert _sample(seen_a, "fluxrun_tasks_running", tool=PIXEL) == 1
        assert _sample(seen_a, "fluxrun_workers", state="busy") == 1
        assert _sample(seen_a, "fluxrun_workers", state="idle") == 1  # gone/12 is gone, done/13 stopped
        assert _sample(seen_a, "fluxrun_tool_workers", tool=FLUX2) == 1
        assert _sample(seen_a, "fluxrun_worker_gpu_memory_allocated_bytes", worker="gpu-1/10", device="cuda") == 2_000
        assert _sample(seen_a, "fluxrun_worker_gpu_memory_total_bytes", worker="gpu-1/10") == 80_000
        assert [s.labels["worker"] for s in seen_a["fluxrun_worker_gpu_memory_reserved_bytes"].samples] == ["gpu-1/10"]

        histogram = "fluxrun_task_duration_seconds"
        ok = {"tool": PIXEL, "outcome": "succeeded"}
        assert _sample(seen_a, histogram, f"{histogram}_bucket", le="2.5", **ok) == 0
        assert _sample(seen_a, histogram, f"{histogram}_bucket", le="5.0", **ok) == 1
        assert _sample(seen_a, histogram, f"{histogram}_bucket", le="+Inf", **ok) == 1
        assert _sample(seen_a, histogram, f"{histogram}_count", **ok) == 1
        assert _sample(seen_a, histogram, f"{histogram}_sum", **ok) == pytest.approx(3.2)

        # Requests are this process's own: 4 Runs on a, 1 on b.
        run_route = "/v1/Run/{owner}/{project}"
        requests = "fluxrun_http_requests"
        assert _sample(seen_a, requests, f"{requests}_total", route=run_route, status="200", method="POST") == 4
        assert _sample(seen_b, requests, f"{requests}_total", route=run_route, status="200", method="POST") == 1
    store_a.close()
    store_b.close()
