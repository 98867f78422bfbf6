"""A database of the first released schema (0001), with the data a server of that release
wrote, upgraded to the newest schema: nothing is lost, and everything still works.

The rows are written with raw SQL against the 0001 tables, as that release's server wrote
them (no code of today's store touches them before the upgrade). After ``store.migrate()``
(what `fluxrun serve`, `fluxrun api` and `fluxrun db upgrade` run) the test reads them back
as a user and as a worker would: Task/Detail and Task/List through the API with the old
keys, the old output files downloading, an old nonce still refused, a revoked key still
refused, the old queued task claimed and run, the old running task's expired lease re-queued.
On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

import fluxrun.store
from fluxrun.api.app import create_app
from fluxrun.auth import signature_headers
from fluxrun.config import Settings
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store
from fluxrun.store.base import NewOutput, TaskStore
from fluxrun.store.stats import scan_duration_histograms
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "black-forest-labs/flux-2-flex-t2i"
T0 = 1_700_000_000.0  # when the old server made its rows
OLD_NONCE = "d3adb33f-old-nonce"  # a random (not a unix time) nonce: kept forever, never usable again
SIGNED = {"name": "app", "mode": "signature", "api_key": "a" * 32, "api_secret": "b" * 48}
KEYONLY = {"name": "scripts", "mode": "apikey", "api_key": "c" * 32, "api_secret": None}
REVOKED = {"name": "gone", "mode": "signature", "api_key": "e" * 32, "api_secret": "f" * 48}
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # an old output file, byte for byte


def _task(n: int, project_id: int, status: str, **columns: Any) -> dict[str, Any]:
    """A tasks row of the 0001 schema: every column, as that release's server filled them."""
    row: dict[str, Any] = {
        "uuid": f"00000000-0000-4000-8000-{n:012d}", "token": f"tok{n:027d}", "project_id": project_id,
        "tool": PIXEL, "parameters": json.dumps({"prompt": f"old task {n}", "steps": 12, "width": 512,
                                                 "height": 512, "seed": str(1000 + n), "samples": 1}),
        "callback_url": "", "status": status, "attempt": 0, "lease_owner": None, "lease_expires_at": None,
        "debugoutput": "", "debugerror": "", "pexit": None, "progress": None, "output_key": f"{n:040x}",
        "cps": "0.000585", "elapsed": None, "createtime": T0 + n, "accepttime": None, "assigntime": None,
        "preprocessstarttime": None, "preprocessendtime": None, "starttime": None, "endtime": None,
        "postprocessstarttime": None, "postprocessendtime": None, "canceltime": None, "kill_requested": False,
    }
    row.update(columns)
    return row


def _walked(n: int, **columns: Any) -> dict[str, Any]:
    """The time columns of a task that went from accept to its end."""
    start = T0 + n
    times = {"accepttime": start + 1, "assigntime": start + 1.1, "preprocessstarttime": start + 1.2,
             "preprocessendtime": start + 1.3, "starttime": start + 1.4, "endtime": start + 5,
             "postprocessstarttime": start + 5, "postprocessendtime": start + 5.5}
    return {**times, "attempt": 1, **columns}


OLD_TASKS = [
    _task(1, 1, "task_postprocess_end", **_walked(1, pexit=0, elapsed=3.6, debugoutput="attempt 1: worker gpu0/11\n")),
    _task(2, 1, "task_postprocess_end", **_walked(2, pexit=1, debugerror="CUDA out of memory on this task")),
    _task(3, 1, "task_cancel", canceltime=T0 + 4),
    _task(4, 1, "task_cancel", **_walked(4, kill_requested=True, canceltime=T0 + 6, endtime=None,
                                         postprocessstarttime=None, postprocessendtime=None)),
    _task(5, 1, "task_output", **_walked(5, endtime=None, postprocessstarttime=None, postprocessendtime=None,
                                         lease_owner="gpu0/11", lease_expires_at=T0 + 30,
                                         progress=json.dumps({"step": 3, "total": 12}))),
    _task(6, 1, "task_queue", tool=FLUX2, callback_url="https://hooks.example/fluxrun",
          parameters=json.dumps({"prompt": "old task 6", "width": 64, "height": 64, "steps": 2,
                                 "outputFormat": "jpeg"})),
    _task(7, 2, "task_queue"),
]
OLD_OUTPUTS = [
    {"id": "1" * 32, "task_id": 1, "name": "0.png", "content_type": "image/png", "size": len(PNG_BYTES),
     "accesskey": "k" * 30, "created_at": T0 + 5.5},
]


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(fluxrun.store.__file__).parent / "migrations"))
    return config


def _write_first_release(database_url: str) -> None:
    config = _config()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        for project in (SIGNED, KEYONLY, REVOKED):
            conn.execute(text("INSERT INTO projects (name, mode, api_key, api_secret, created_at, revoked_at) "
                              "VALUES (:name, :mode, :api_key, :api_secret, :created_at, :revoked_at)"),
                         {**project, "created_at": T0, "revoked_at": T0 + 9 if project is REVOKED else None})
        conn.execute(text("INSERT INTO nonces (project_id, nonce, seen_at, forget_after) VALUES (1, :n, :t, NULL)"),
                     {"n": OLD_NONCE, "t": T0})
        conn.execute(text("INSERT INTO nonces (project_id, nonce, seen_at, forget_after) VALUES (1, :n, :t, :f)"),
                     {"n": str(int(T0)), "t": T0, "f": T0 + 300})
        for row in OLD_TASKS:
            columns = ", ".join(row)
            conn.execute(text(f"INSERT INTO tasks ({columns}) VALUES ({', '.join(':' + c for c in row)})"), row)
        for row in OLD_OUTPUTS:
            conn.execute(text("INSERT INTO outputs (id, task_id, name, content_type, size, accesskey, created_at) "
                              "VALUES (:id, :task_id, :name, :content_type, :size, :accesskey, :created_at)"), row)
    engine.dispose()


@pytest.fixture
def upgraded(database_url: str) -> Iterator[TaskStore]:
    _write_first_release(database_url)
    store = open_store(database_url)
    store.migrate()  # what every fluxrun process runs at start
    yield store
    store.close()


def _headers(project: dict[str, Any], nonce: str | None = None) -> dict[str, str]:
    if project["api_secret"] is None:
        return {"x-api-key": project["api_key"]}
    return signature_headers(project["api_key"], project["api_secret"], nonce=nonce or str(time.time_ns()))


def test_every_old_row_reads_back_as_it_was_written(upgraded: TaskStore) -> None:
    projects = {p.api_key: p for p in upgraded.list_projects()}
    assert len(projects) == 3
    for old in (SIGNED, KEYONLY, REVOKED):
        project = projects[old["api_key"]]
        assert (project.name, project.mode, project.api_secret, project.created_at) == (
            old["name"], old["mode"], old["api_secret"], T0)
        # What later releases added, with the values that keep the old behaviour.
        assert project.priority == 0 and project.concurrency_limit is None
        assert project.webhook_secret.startswith("whsec_")
    assert projects[REVOKED["api_key"]].revoked_at == T0 + 9 and projects[SIGNED["api_key"]].revoked_at is None
    assert len({p.webhook_secret for p in projects.values()}) == 3

    for old in OLD_TASKS:
        task = upgraded.get_task(old["project_id"], task_id=OLD_TASKS.index(old) + 1)
        assert task is not None
        read = {column: getattr(task, column) for column in old}
        expected = {**old, "parameters": json.loads(old["parameters"]), "status": Status(old["status"]),
                    "progress": json.loads(old["progress"]) if old["progress"] else None}
        read["cps"] = str(read["cps"])
        assert read == expected
        assert task.handed_back == 0
    [output] = upgraded.get_task(1, task_id=1).outputs
    assert (output.id, output.name, output.content_type, output.size, output.accesskey, output.created_at) == (
        "1" * 32, "0.png", "image/png", len(PNG_BYTES), "k" * 30, T0 + 5.5)


def test_the_api_serves_the_old_tasks_to_the_old_keys(upgraded: TaskStore, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    storage = LocalStorage(settings.outputs_dir)
    storage.put(OLD_TASKS[0]["output_key"], "0.png", PNG_BYTES, "image/png")  # the old release's file
    app = create_app(settings, upgraded, storage, reaper=False)
    with TestClient(app) as client:
        detail = client.post("/v1/Task/Detail", json={"taskid": "1"}, headers=_headers(SIGNED)).json()
        assert detail["result"] is True, detail
        [task] = detail["tasklist"]
        assert (task["status"], task["pexit"], task["uuid"], task["socketaccesstoken"]) == (
            "task_postprocess_end", "0", OLD_TASKS[0]["uuid"], OLD_TASKS[0]["token"])
        assert task["parameters"]["prompt"] == "old task 1" and task["elapsedseconds"] == "3.6000"
        [output] = task["outputs"]
        assert output["name"] == "0.png" and output["size"] == str(len(PNG_BYTES))
        assert client.get(output["url"].replace("http://testserver", "")).content == PNG_BYTES

        failed = client.post("/v1/Task/Detail", json={"tasktoken": OLD_TASKS[1]["token"]},
                             headers=_headers(SIGNED)).json()["tasklist"][0]
        assert failed["pexit"] == "1" and failed["debugerror"] == "CUDA out of memory on this task"
        listed = client.post("/v1/Task/List", json={"limit": 20}, headers=_headers(SIGNED)).json()
        assert listed["total"] == "6"
        assert [t["status"] for t in listed["tasklist"]] == [t["status"] for t in reversed(OLD_TASKS[:6])]

        # The apikey-mode project's key alone still works; its task is its own.
        mine = client.post("/v1/Task/List", json={}, headers=_headers(KEYONLY)).json()
        assert mine["total"] == "1" and mine["tasklist"][0]["status"] == "task_queue"
        # The old server's nonce stays used; the revoked key stays refused.
        replay = client.post("/v1/Task/List", json={}, headers=_headers(SIGNED, nonce=OLD_NONCE))
        assert replay.status_code == 401 and "already used" in replay.json()["errors"][0]["message"]
        assert client.post("/v1/Task/List", json={}, headers=_headers(REVOKED)).status_code == 401

        # A new task goes in beside the old ones, numbered after them.
        run = client.post(f"/v1/Run/{PIXEL}", json={"prompt": "new"}, headers=_headers(SIGNED)).json()
        assert run["result"] is True and int(run["taskid"]) == len(OLD_TASKS) + 1
        cancelled = client.post("/v1/Task/Cancel", json={"taskid": "6"}, headers=_headers(SIGNED)).json()
        assert cancelled["result"] is True


def test_workers_pick_up_where_the_old_release_left_off(upgraded: TaskStore) -> None:
    # The old running task's worker is long gone: its lease expired, it is queued again.
    [expired] = upgraded.expire_leases(time.time(), max_attempts=3)
    assert (expired.task_id, expired.requeued) == (5, True)
    requeued = upgraded.get_task(1, task_id=5)
    assert requeued.status is Status.QUEUE and "attempt 1: lost worker gpu0/11" in requeued.debugoutput

    ran: list[int] = []
    while (lease := upgraded.claim("new/1", 30, time.time())) is not None:
        for status in (Status.ASSIGN, Status.PREPROCESS_START, Status.PREPROCESS_END, Status.START, Status.END):
            upgraded.advance(lease, status, time.time())
        upgraded.finish_success(lease, [NewOutput("0.png", "image/png", 10)], 0.5, time.time())
        ran.append(lease.task_id)
    assert sorted(ran) == [5, 6, 7]
    assert upgraded.get_task(1, task_id=5).attempt == 2
    # The old task with a callback URL owes its callback, as tasks made after the upgrade do.
    [delivery] = upgraded.list_deliveries(6)
    assert delivery.url == "https://hooks.example/fluxrun" and delivery.state == "pending"
    # A login link for an old project (a table of a later release).
    upgraded.add_login_code(1, "h" * 64, time.time(), time.time() + 60)
    assert upgraded.redeem_login_code("h" * 64, time.time()).project_id == 1


def test_the_duration_histogram_counts_the_old_finished_tasks(upgraded: TaskStore) -> None:
    # /metrics reads it from a table migration 0006 made and filled: the old release's four
    # finished tasks are in it, as a scan of the tasks table counts them.
    histograms = {(h.tool, h.outcome): h for h in upgraded.duration_histograms()}
    assert {key: h.count for key, h in histograms.items()} == {
        (PIXEL, "succeeded"): 1, (PIXEL, "failed"): 1, (PIXEL, "cancelled"): 2}
    assert histograms[PIXEL, "succeeded"].total_seconds == pytest.approx(3.6)  # its elapsed
    assert histograms[PIXEL, "failed"].total_seconds == pytest.approx(4.1)  # start to end
    cancelled = histograms[PIXEL, "cancelled"]  # in the queue: 0 s; killed: start to the kill, 0.6 s
    assert cancelled.total_seconds == pytest.approx(0.6)
    assert (dict(cancelled.buckets)[0.5], dict(cancelled.buckets)[1.0]) == (1, 2)
    with upgraded.engine.connect() as conn:  # type: ignore[attr-defined]
        scanned = scan_duration_histograms(conn)
    assert [(h.tool, h.outcome, h.buckets, h.count) for h in scanned] == [
        (h.tool, h.outcome, h.buckets, h.count) for h in upgraded.duration_histograms()]


def test_the_schema_lag_says_what_a_worker_waits_for(database_url: str) -> None:
    store = open_store(database_url)
    try:
        head = ScriptDirectory.from_config(_config()).get_current_head()
        assert store.schema_lag() == f"it has no fluxrun schema yet (this release needs revision {head})"
        _write_first_release(database_url)
        assert store.schema_lag() == f"its schema is at revision 0001; this release needs {head}"
        store.migrate()
        assert store.schema_lag() is None
        # A newer release migrated it further: this one goes on (its migrations only add).
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_a_newer_release'"))
        assert store.schema_lag() is None
    finally:
        store.close()
