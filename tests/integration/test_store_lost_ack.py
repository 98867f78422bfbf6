"""A worker's write whose COMMIT landed but whose acknowledgement was lost, on both stores.

The connection drops during COMMIT (tests/fakes/lost_ack.py): the task has moved, the worker
sees DatabaseUnavailable and makes the write again (worker/patience.py). That retry must
find its own write done and succeed with nothing done twice: no second note in debugoutput,
no outputs written again under new access keys (the URLs a client already has would
change), no second callback, no second event. Writes that really are refused still are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fluxrun.backends.registry import BackendCache
from fluxrun.config import Settings
from fluxrun.errors import DatabaseUnavailable, IllegalTransition, LeaseLost
from fluxrun.status import Status
from fluxrun.storage.local import LocalStorage
from fluxrun.store.base import Lease, NewOutput, TaskRecord, TaskStore
from fluxrun.store.events import Subscription
from fluxrun.store.sql import SqlTaskStore
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.loop import Worker
from fluxrun.worker.patience import until_written
from tests.conftest import BACKENDS
from tests.fakes.lost_ack import LostAcks

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
HOOK = "https://hooks.example.com/fluxrun"
NOTE = "attempt 1: worker w"
OUTPUTS = [NewOutput("0.png", "image/png", 10), NewOutput("1.png", "image/png", 20)]
T = TypeVar("T")


@pytest.fixture
def acks(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> LostAcks:
    assert isinstance(store, SqlTaskStore)
    return LostAcks(store, monkeypatch)


@pytest.fixture
def heard(store: TaskStore):
    subscription = store.events.subscribe()
    yield subscription
    subscription.close()


def _heard(subscription: Subscription, task_id: int, until: str) -> list[str]:
    """The event types of ``task_id`` heard until ``until`` and a short quiet after it."""
    types: list[str] = []
    deadline = time.monotonic() + 10
    while until not in types:
        assert time.monotonic() < deadline, f"only {types} arrived"
        event = subscription.get(timeout=0.5)
        if event is not None and event.task_id == task_id:
            types.append(event.type)
    while (event := subscription.get(timeout=0.5)) is not None:
        if event.task_id == task_id:
            types.append(event.type)
    return types


def _unacknowledged(acks: LostAcks, write: Callable[[], T], meanwhile: Callable[[], object] = lambda: None) -> T:
    """``write`` as a worker makes it (again while the database is unavailable), with the
    acknowledgement of its first commit lost; ``meanwhile`` runs between the two."""
    lost = acks.lost
    acks.next_commit()
    with pytest.raises(DatabaseUnavailable):
        write()  # what the worker's first try sees
    assert acks.lost == lost + 1
    meanwhile()
    return until_written(write, threading.Event())


def _claimed(store: TaskStore) -> tuple[int, Lease]:
    project = store.create_project("p", "apikey")
    task = store.create_task(project.id, PIXEL.slug, {"prompt": "p"}, Decimal("0.1"), HOOK)
    lease = store.claim("w", 30, time.time())
    assert lease is not None and lease.task_id == task.id
    return project.id, lease


def test_a_status_and_a_success_made_again_after_a_lost_acknowledgement_are_made_once(
    store: TaskStore, acks: LostAcks, heard: Subscription
) -> None:
    project_id, lease = _claimed(store)
    assigned_at = time.time()
    _unacknowledged(acks, lambda: store.advance(lease, Status.ASSIGN, assigned_at, note=NOTE))
    task = store.get_task(project_id, task_id=lease.task_id)
    assert task.status is Status.ASSIGN and task.assigntime == assigned_at
    assert task.debugoutput.count(NOTE) == 1, task.debugoutput

    for status in (Status.PREPROCESS_START, Status.PREPROCESS_END, Status.START, Status.END):
        store.advance(lease, status, time.time())
    ended_at = time.time()
    landed: list[TaskRecord] = []  # what a client may read between the two tries
    done = _unacknowledged(acks, lambda: store.finish_success(lease, OUTPUTS, 1.5, ended_at),
                           lambda: landed.append(store.get_task(project_id, task_id=lease.task_id)))
    assert landed[0].status is Status.POSTPROCESS_END and len(landed[0].outputs) == 2

    assert done == store.get_task(project_id, task_id=lease.task_id)
    assert done.status is Status.POSTPROCESS_END and done.pexit == 0 and done.elapsed == 1.5
    assert done.outputs == landed[0].outputs  # the same rows: ids, access keys, so the same URLs
    assert [o.name for o in done.outputs] == ["0.png", "1.png"]
    assert len(store.list_deliveries(lease.task_id)) == 1
    assert _heard(heard, lease.task_id, "task_postprocess_end") == [
        "task_queue", "task_accept", "task_assign", "task_preprocess_start", "task_preprocess_end", "task_start",
        "task_end", "task_postprocess_end"]


def test_a_failure_made_again_after_a_lost_acknowledgement_is_made_once(
    store: TaskStore, acks: LostAcks, heard: Subscription
) -> None:
    project_id, lease = _claimed(store)
    store.advance(lease, Status.START, time.time())
    failed_at = time.time()
    assert _unacknowledged(acks, lambda: store.finish_failure(lease, "boom", failed_at)) is None
    failed = store.get_task(project_id, task_id=lease.task_id)
    assert failed.status is Status.POSTPROCESS_END and failed.pexit == 1 and failed.debugerror == "boom"
    assert len(store.list_deliveries(lease.task_id)) == 1
    assert _heard(heard, lease.task_id, "task_postprocess_end") == [
        "task_queue", "task_accept", "task_start", "task_error", "task_postprocess_end"]


def test_a_write_whose_commit_never_landed_is_made_by_its_retry(
    store: TaskStore, acks: LostAcks, heard: Subscription
) -> None:
    # The usual outage: the connection dropped before COMMIT reached the database.
    project_id, lease = _claimed(store)
    acks.next_commit(lands=False)
    with pytest.raises(DatabaseUnavailable):
        store.advance(lease, Status.ASSIGN, time.time(), note=NOTE)
    assert acks.lost == 0 and store.get_task(project_id, task_id=lease.task_id).status is Status.ACCEPT
    until_written(lambda: store.advance(lease, Status.ASSIGN, time.time(), note=NOTE), threading.Event())
    task = store.get_task(project_id, task_id=lease.task_id)
    assert task.status is Status.ASSIGN and task.debugoutput.count(NOTE) == 1
    assert _heard(heard, lease.task_id, "task_assign") == ["task_queue", "task_accept", "task_assign"]


def test_writes_that_did_not_land_are_still_refused(store: TaskStore) -> None:
    project_id, lease = _claimed(store)
    started_at = time.time()
    store.advance(lease, Status.START, started_at)
    # The same status again, but not this write made again (another time): an illegal move.
    with pytest.raises(IllegalTransition):
        store.advance(lease, Status.START, started_at + 1)
    # The reaper ended this attempt (its worker seemed gone): the worker's own end is refused.
    store.heartbeat(lease, 0.01, time.time())
    [expired] = store.expire_leases(time.time() + 1, max_attempts=1)
    assert not expired.requeued
    given_up = store.get_task(project_id, task_id=lease.task_id)
    with pytest.raises(LeaseLost):
        store.finish_success(lease, OUTPUTS, 1.0, time.time())
    with pytest.raises(LeaseLost):
        store.finish_failure(lease, "boom", time.time())
    with pytest.raises(LeaseLost):
        store.advance(lease, Status.END, time.time())
    assert store.get_task(project_id, task_id=lease.task_id) == given_up
    assert len(store.list_deliveries(lease.task_id)) == 1


@pytest.mark.parametrize("lost_on", ["task_assign", "task_end", "task_postprocess_end"])
def test_a_worker_whose_write_landed_unacknowledged_ends_the_task_well_once(
    store: TaskStore, acks: LostAcks, heard: Subscription, backends: BackendCache, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, lost_on: str,
) -> None:
    advance, finish_success = store.advance, store.finish_success

    def advancing(lease: Lease, status: Status, now: float, note: str | None = None) -> None:
        if status.value == lost_on and not acks.lost:
            acks.next_commit()
        advance(lease, status, now, note=note)

    def finishing(*args: Any) -> Any:
        if lost_on == "task_postprocess_end" and not acks.lost:
            acks.next_commit()
        return finish_success(*args)

    monkeypatch.setattr(store, "advance", advancing)
    monkeypatch.setattr(store, "finish_success", finishing)
    settings = Settings(data_dir=tmp_path, lease_seconds=30.0)
    worker = Worker(settings, store, LocalStorage(settings.outputs_dir), backends, worker_id="test/lost-ack")
    project = store.create_project("p", "apikey")
    params = PIXEL.validate({"prompt": "a cat", "steps": 2, "width": 64, "height": 64})
    task = store.create_task(project.id, PIXEL.slug, params, PIXEL.cps, HOOK)

    with caplog.at_level(logging.INFO, logger="fluxrun.worker"):
        assert worker.run_once()
    assert acks.lost == 1
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "fluxrun.worker"]
    assert (logging.INFO, f"task {task.id}: 1 image(s) in ") in [(level, m[:len(f"task {task.id}: 1 image(s) in ")])
                                                              for level, m in said], said  # it saw its success
    assert not [m for level, m in said if level >= logging.WARNING], said  # and nothing went wrong for it
    done = store.get_task(project.id, task_id=task.id)
    assert done.status is Status.POSTPROCESS_END and done.pexit == 0 and done.attempt == 1, done.debugerror
    assert done.debugoutput.count("attempt 1: worker test/lost-ack") == 1, done.debugoutput
    assert done.debugoutput.count("tiny random-weight") == 1, done.debugoutput
    [output] = done.outputs
    assert output.name == "0.png" and worker.storage.path(done.output_key, "0.png").stat().st_size == output.size
    assert len(store.list_deliveries(task.id)) == 1
    assert [t for t in _heard(heard, task.id, "task_postprocess_end") if t != "task_output"] == [
        "task_queue", "task_accept", "task_assign", "task_preprocess_start", "task_preprocess_end", "task_start",
        "task_end", "task_postprocess_end"]
