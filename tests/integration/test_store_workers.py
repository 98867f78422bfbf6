"""The worker registry, hand-backs and the numbers behind /metrics, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from fluxrun.errors import LeaseLost
from fluxrun.status import Status
from fluxrun.store.base import DURATION_BUCKETS, DurationHistogram, GpuMemory, TaskStore, WorkerRecord
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

PIXEL = "desertPixel/Flat-Pixel-Art-FLUX"
FLUX2 = "black-forest-labs/flux-2-flex-t2i"
CPS = Decimal("0.000585")


def _worker(worker_id: str = "gpu-1/100", now: float | None = None, state: str = "idle", **fields) -> WorkerRecord:
    now = time.time() if now is None else now
    values = dict(id=worker_id, host=worker_id.split("/")[0], pid=int(worker_id.split("/")[1]), tools=(PIXEL,),
                  models="real", device="cuda", state=state, task_id=None, started_at=now, last_seen=now,
                  alive_until=now + 15)
    return WorkerRecord(**{**values, **fields})


def test_register_heartbeat_gone_and_stopped(store: TaskStore) -> None:
    now = 1_000_000.0
    store.register_worker(_worker(now=now, state="loading", tools=(PIXEL, FLUX2)))
    [loading] = store.live_workers(now)
    assert loading.state == "loading" and loading.tools == (PIXEL, FLUX2) and loading.gpu is None

    gpu = GpuMemory(allocated=3 * 2**30, reserved=4 * 2**30, total=80 * 2**30)
    assert store.worker_seen("gpu-1/100", "busy", 42, gpu, now + 5, alive_until=now + 20)
    [busy] = store.live_workers(now + 19)
    assert (busy.state, busy.task_id, busy.gpu, busy.last_seen) == ("busy", 42, gpu, now + 5)
    assert busy.started_at == now  # a heartbeat keeps the start

    # Not seen by its alive_until: gone, though its row still says busy.
    assert store.live_workers(now + 21) == []
    assert [w.state for w in store.list_workers()] == ["busy"]

    # A heartbeat of a worker with no row says so, so the worker registers again.
    assert not store.worker_seen("gpu-2/7", "idle", None, None, now, alive_until=now + 15)

    store.worker_stopped("gpu-1/100", now + 6)
    assert store.live_workers(now + 6) == []
    [stopped] = store.list_workers()
    assert (stopped.state, stopped.task_id, stopped.live(now + 6)) == ("stopped", None, False)


def test_a_worker_that_comes_back_with_the_same_id_replaces_its_row(store: TaskStore) -> None:
    store.register_worker(_worker(now=100.0, state="busy", task_id=7))
    store.register_worker(_worker(now=200.0, state="loading"))
    [worker] = store.list_workers()
    assert (worker.started_at, worker.state, worker.task_id) == (200.0, "loading", None)


def test_forget_workers_not_seen_for_a_while(store: TaskStore) -> None:
    store.register_worker(_worker("old/1", now=100.0))
    store.register_worker(_worker("new/2", now=5000.0))
    assert store.forget_workers(before=1000.0) == 1
    assert [w.id for w in store.list_workers()] == ["new/2"]


def _running(store: TaskStore, worker_id: str = "w/1"):
    project = store.create_project("p", "apikey")
    task = store.create_task(project.id, PIXEL, {"prompt": "p"}, CPS)
    lease = store.claim(worker_id, 30, time.time())
    store.advance(lease, Status.ASSIGN, time.time())
    store.advance(lease, Status.START, time.time())
    return project, task, lease


def test_hand_back_queues_the_task_at_once_without_counting_an_attempt(store: TaskStore) -> None:
    project, task, lease = _running(store)
    assert store.hand_back(lease, time.time(), "worker w/1 stopped at once (SIGTERM again)")
    queued = store.get_task(project.id, task_id=task.id)
    assert queued.status is Status.QUEUE and queued.lease_owner is None and queued.starttime is None
    assert "attempt 1: worker w/1 stopped at once (SIGTERM again); queued again" in queued.debugoutput

    # The stopping worker is fenced off, before and after another worker claims the task.
    with pytest.raises(LeaseLost):
        store.record_progress(lease, {"percentage": "50"}, time.time())
    assert not store.hand_back(lease, time.time(), "again")
    second = store.claim("w/2", 30, time.time())
    assert second.task_id == task.id and second.attempt == 2
    with pytest.raises(LeaseLost):
        store.advance(lease, Status.END, time.time())

    # With max_attempts=1 a lost attempt fails the task; the handed-back one did not count.
    expired = store.expire_leases(time.time() + 60, max_attempts=1)
    assert [(e.task_id, e.requeued) for e in expired] == [(task.id, False)]
    failed = store.get_task(project.id, task_id=task.id)
    assert failed.pexit == 1 and "stopped responding on each of 1 attempts" in failed.debugerror


def test_a_handed_back_attempt_leaves_the_limit_for_real_losses(store: TaskStore) -> None:
    project, task, lease = _running(store)
    store.hand_back(lease, time.time(), "stopping")
    store.claim("w/2", 30, time.time())
    expired = store.expire_leases(time.time() + 60, max_attempts=2)
    assert [(e.task_id, e.requeued) for e in expired] == [(task.id, True)]  # 1 lost of 2 allowed
    assert store.get_task(project.id, task_id=task.id).status is Status.QUEUE


def test_hand_back_of_a_finished_or_killed_task_changes_nothing(store: TaskStore) -> None:
    project, task, lease = _running(store)
    store.kill(project.id, task.id, time.time())
    assert not store.hand_back(lease, time.time(), "stopping")
    assert store.get_task(project.id, task_id=task.id).status is Status.CANCEL


def test_task_counts_and_duration_histograms(store: TaskStore) -> None:
    project = store.create_project("p", "apikey")
    now = time.time()

    def make(tool: str = PIXEL):
        return store.create_task(project.id, tool, {"prompt": "p"}, CPS)

    for _ in range(3):
        make()
    make(FLUX2)
    # Claims take the oldest first: tasks 1 and 2 get leases.
    succeeded = store.claim("w/1", 30, now)
    failed = store.claim("w/1", 30, now)
    store.advance(succeeded, Status.START, now)
    store.finish_success(succeeded, [], elapsed=1.5, now=now)
    store.advance(failed, Status.START, now - 40)
    store.finish_failure(failed, "boom", now)  # failed 40 s after it started
    running = store.claim("w/1", 30, now)  # the third pixel task, held by a worker
    cancelled = make()
    store.cancel_queued(project.id, cancelled.id, now)  # never started: 0 s

    counts = store.task_counts()
    assert (counts[PIXEL].queued, counts[PIXEL].running) == (0, 1)
    assert (counts[FLUX2].queued, counts[FLUX2].running) == (1, 0)
    assert running.task.tool == PIXEL

    histograms = {(h.tool, h.outcome): h for h in store.duration_histograms()}
    assert set(histograms) == {(PIXEL, "succeeded"), (PIXEL, "failed"), (PIXEL, "cancelled")}

    def at(h: DurationHistogram, *bounds: float) -> tuple[int, ...]:  # cumulative counts at some bounds
        return tuple(dict(h.buckets)[bound] for bound in bounds)

    assert [bound for bound, _ in histograms[PIXEL, "succeeded"].buckets] == list(DURATION_BUCKETS)
    ok = histograms[PIXEL, "succeeded"]
    assert (at(ok, 1.0, 2.5, 60.0), ok.count, ok.total_seconds) == ((0, 1, 1), 1, 1.5)
    bad = histograms[PIXEL, "failed"]
    assert at(bad, 1.0, 2.5, 30.0, 60.0) == (0, 0, 0, 1) and bad.count == 1
    assert bad.total_seconds == pytest.approx(40.0)
    gone = histograms[PIXEL, "cancelled"]
    assert (at(gone, 0.5, 1.0, 60.0), gone.count, gone.total_seconds) == ((1, 1, 1), 1, 0.0)
