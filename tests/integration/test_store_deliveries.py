"""Callback deliveries in the store, on SQLite and on PostgreSQL (FLUXRUN_TEST_DATABASE_URL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

import fluxrun.store
from fluxrun.errors import LeaseLost
from fluxrun.status import Status
from fluxrun.store import open_store
from fluxrun.store.base import Project, TaskRecord, TaskStore
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

TOOL = "desertPixel/Flat-Pixel-Art-FLUX"
HOOK = "https://hooks.example.com/fluxrun"


@pytest.fixture
def project(store: TaskStore) -> Project:
    return store.create_project("test", "signature")


def _task(store: TaskStore, project: Project, callback_url: str = HOOK) -> TaskRecord:
    return store.create_task(project.id, TOOL, {"prompt": "p"}, Decimal("0.0001"), callback_url)


def _succeed(store: TaskStore, project: Project, task: TaskRecord) -> None:
    lease = store.claim("w", 30, time.time())
    store.finish_success(lease, [], 1.0, time.time())


def _fail(store: TaskStore, project: Project, task: TaskRecord) -> None:
    store.finish_failure(store.claim("w", 30, time.time()), "boom", time.time())


def _cancel(store: TaskStore, project: Project, task: TaskRecord) -> None:
    assert store.cancel_queued(project.id, task.id, time.time())


def _kill(store: TaskStore, project: Project, task: TaskRecord) -> None:
    store.claim("w", 30, time.time())
    assert store.kill(project.id, task.id, time.time())


def _lose_every_worker(store: TaskStore, project: Project, task: TaskRecord) -> None:
    now = time.time()
    store.claim("w", 1, now)
    [expired] = store.expire_leases(now + 5, max_attempts=1)
    assert not expired.requeued


ENDINGS: list[Callable[[TaskStore, Project, TaskRecord], None]] = [_succeed, _fail, _cancel, _kill, _lose_every_worker]


@pytest.mark.parametrize("end", ENDINGS, ids=lambda f: f.__name__.strip("_"))
def test_each_way_a_task_ends_owes_one_callback(store: TaskStore, project: Project, end) -> None:
    task = _task(store, project)
    assert store.list_deliveries(task.id) == []
    end(store, project, task)
    ended = store.get_task(project.id, task_id=task.id)
    assert ended.status in (Status.POSTPROCESS_END, Status.CANCEL)
    [owed] = store.list_deliveries(task.id)
    assert owed.state == "pending" and owed.attempt == 0 and owed.url == HOOK
    assert owed.task_id == task.id and owed.project_id == project.id
    assert owed.webhook_id.startswith("msg_") and len(owed.webhook_id) > 20
    # Due at once: from the moment the task ended.
    assert owed.next_attempt_at == owed.created_at and owed.claimed_until is None
    assert store.claim_deliveries("d", 30, owed.created_at)[0].webhook_id == owed.webhook_id


@pytest.mark.parametrize("end", ENDINGS, ids=lambda f: f.__name__.strip("_"))
def test_a_task_without_a_callback_owes_nothing(store: TaskStore, project: Project, end) -> None:
    task = _task(store, project, callback_url="")
    end(store, project, task)
    assert store.list_deliveries(task.id) == []
    assert store.claim_deliveries("d", 30, time.time() + 10) == []


def test_a_requeued_task_or_a_fenced_out_worker_owes_nothing_more(store: TaskStore, project: Project) -> None:
    task = _task(store, project)
    now = time.time()
    first = store.claim("w1", 1, now)
    [expired] = store.expire_leases(now + 5, max_attempts=3)
    assert expired.requeued and store.list_deliveries(task.id) == []  # not ended: nothing owed yet
    second = store.claim("w2", 30, now + 6)
    assert store.kill(project.id, task.id, now + 7)
    with pytest.raises(LeaseLost):
        store.finish_success(second, [], 1.0, now + 8)
    with pytest.raises(LeaseLost):
        store.finish_failure(first, "late", now + 8)
    assert len(store.list_deliveries(task.id)) == 1


def test_a_delivery_is_claimed_for_one_try_at_a_time(store: TaskStore, project: Project) -> None:
    task = _task(store, project)
    _cancel(store, project, task)
    now = time.time()
    [first] = store.claim_deliveries("d1", 30, now)
    assert first.attempt == 1 and first.claimed_by == "d1" and first.claimed_until == pytest.approx(now + 30)
    assert store.claim_deliveries("d2", 30, now) == []  # claimed

    assert store.retry_delivery(first, now + 10, 500, "HTTP 500")
    [waiting] = store.list_deliveries(task.id)
    assert waiting.state == "pending" and waiting.last_status == 500 and waiting.last_error == "HTTP 500"
    assert waiting.claimed_until is None and waiting.next_attempt_at == pytest.approx(now + 10)
    assert store.claim_deliveries("d2", 30, now + 5) == []  # not due yet

    [second] = store.claim_deliveries("d2", 30, now + 11)
    assert second.attempt == 2 and second.webhook_id == first.webhook_id
    assert store.end_delivery(second, "delivered", now + 12, 204)
    [done] = store.list_deliveries(task.id)
    assert done.state == "delivered" and done.delivered_at == pytest.approx(now + 12) and done.last_status == 204
    assert store.claim_deliveries("d3", 30, now + 1000) == []
    assert not store.end_delivery(second, "failed", now + 13)  # ended: nothing more to write


def test_a_claim_whose_deliverer_died_becomes_due_again(store: TaskStore, project: Project) -> None:
    task = _task(store, project)
    _cancel(store, project, task)
    now = time.time()
    [lost] = store.claim_deliveries("dead", 5, now)
    assert store.claim_deliveries("alive", 5, now + 4) == []
    [again] = store.claim_deliveries("alive", 5, now + 6)
    assert again.attempt == 2 and again.webhook_id == lost.webhook_id
    # The first deliverer was only paused: its late result is fenced out.
    assert not store.end_delivery(lost, "delivered", now + 7, 200)
    assert not store.retry_delivery(lost, now + 8, 500, "HTTP 500")
    assert store.end_delivery(again, "gone", now + 7, 410, "410 Gone")
    [ended] = store.list_deliveries(task.id)
    assert ended.state == "gone" and ended.attempt == 2 and ended.delivered_at is None


def test_concurrent_deliverers_never_make_the_same_try(store: TaskStore, project: Project, database_url: str) -> None:
    for _ in range(30):
        _cancel(store, project, _task(store, project))
    tries: list[tuple[int, int]] = []
    lock = threading.Lock()

    def deliverer(name: str) -> None:
        own = open_store(database_url)
        try:
            while claimed := own.claim_deliveries(name, 30, time.time(), limit=2):
                for delivery in claimed:
                    assert own.end_delivery(delivery, "delivered", time.time(), 200)
                    with lock:
                        tries.append((delivery.id, delivery.attempt))
        finally:
            own.close()

    threads = [threading.Thread(target=deliverer, args=(f"d{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tries) == 30 and len(set(tries)) == 30 and {attempt for _, attempt in tries} == {1}


def test_projects_made_before_callbacks_get_a_webhook_secret(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(fluxrun.store.__file__).parent / "migrations"))
    engine = create_engine(database_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        for name in ("old", "older"):
            conn.execute(text("INSERT INTO projects (name, mode, api_key, api_secret, created_at) "
                              "VALUES (:name, 'apikey', :name, NULL, 0)"), {"name": name})
    engine.dispose()
    store = open_store(database_url)
    try:
        store.migrate()
        secrets = [p.webhook_secret for p in store.list_projects()]
        assert len(secrets) == 2 and len(set(secrets)) == 2 and all(s.startswith("whsec_") for s in secrets)
        assert store.create_project("new", "apikey").webhook_secret.startswith("whsec_")
    finally:
        store.close()
