"""One store suite, run on SQLite and on PostgreSQL (FLUXRUN_TEST_DATABASE_URL)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from fluxrun.errors import ConcurrencyLimitError, IllegalTransition, LeaseLost, RateLimitError
from fluxrun.status import Status
from fluxrun.store import open_store
from fluxrun.store.base import NewOutput, TaskStore
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

TOOL = "desertPixel/Flat-Pixel-Art-FLUX"
CPS = Decimal("0.000585")


def _task(store: TaskStore, project_id: int, tool: str = TOOL, **params: object):
    return store.create_task(project_id, tool, {"prompt": "p", **params}, CPS)


@pytest.fixture
def project(store: TaskStore):
    return store.create_project("test", "signature")


def test_migrate_twice_is_harmless(store: TaskStore) -> None:
    store.migrate()
    store.ping()


def test_processes_starting_together_on_a_new_database_migrate_it_once(database_url: str, tmp_path: Path) -> None:
    # Several `fluxrun api` processes of a new release may start at the same moment, each
    # migrating at start: one migrates, the others wait for it and find the schema current.
    # Processes, not threads: Alembic's migration context is process-global.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    command = [sys.executable, "-m", "fluxrun", "db", "upgrade", "--database-url", database_url]
    running = [subprocess.Popen([*command, "--data-dir", str(tmp_path / str(n))], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in range(3)]
    outputs = [process.communicate(timeout=120)[0] for process in running]
    assert [process.returncode for process in running] == [0, 0, 0], "\n".join(outputs)
    store = open_store(database_url)
    try:
        store.migrate()  # already current
        assert store.create_project("after", "apikey").name == "after"
    finally:
        store.close()


def test_projects_keys_and_revocation(store: TaskStore) -> None:
    signed = store.create_project("a", "signature")
    keyonly = store.create_project("b", "apikey")
    assert signed.api_secret and len(signed.api_key) == 32
    assert keyonly.api_secret is None
    assert store.project_by_key(signed.api_key) == signed
    assert [p.name for p in store.list_projects()] == ["a", "b"]
    assert store.revoke_project(signed.api_key)
    assert not store.revoke_project(signed.api_key)
    assert not store.project_by_key(signed.api_key).active
    assert store.project_by_key("nope") is None


def test_nonce_is_single_use_per_project(store: TaskStore, project) -> None:
    other = store.create_project("other", "signature")
    now = time.time()
    assert store.use_nonce(project.id, "123", now, None)
    assert not store.use_nonce(project.id, "123", now, None)
    assert store.use_nonce(other.id, "123", now, None)
    # Time-like nonces are forgotten after their window; random ones are kept.
    assert store.use_nonce(project.id, "1700000000", now, forget_after=now - 1)
    assert store.forget_old_nonces(now) == 1
    assert not store.use_nonce(project.id, "123", now, None)


def test_a_nonce_sent_by_many_requests_at_once_is_accepted_once_and_refused_for_the_others(
    store: TaskStore, project
) -> None:
    # A captured request replayed in parallel: every replay must be a plain "used" (the API's
    # 401), not a database error (a 500), and exactly one request may win.
    for round_ in range(10):
        barrier = threading.Barrier(6)
        answers: list[object] = []

        def send(nonce: str = f"race-{round_}") -> None:
            barrier.wait()
            try:
                answers.append(store.use_nonce(project.id, nonce, time.time(), None))
            except Exception as exc:  # what the test is about: none may escape
                answers.append(exc)

        threads = [threading.Thread(target=send) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers, key=repr) == [False] * 5 + [True], answers


def test_create_get_and_scope(store: TaskStore, project) -> None:
    other = store.create_project("other", "apikey")
    task = _task(store, project.id, seed=5)
    assert task.status is Status.QUEUE and task.attempt == 0
    assert len(task.token) == 30 and len(task.output_key) == 40
    assert task.parameters == {"prompt": "p", "seed": 5}
    assert store.get_task(project.id, task_id=task.id) == task
    assert store.get_task(project.id, token=task.token) == task
    assert store.get_task(other.id, task_id=task.id) is None
    assert store.get_task(other.id, token=task.token) is None


def test_list_pages_newest_first_and_filters(store: TaskStore, project) -> None:
    ids = [_task(store, project.id).id for _ in range(5)]
    _task(store, project.id, tool="black-forest-labs/flux-2-flex-t2i")
    total, page = store.list_tasks(project.id, start=0, limit=3, tool=TOOL)
    assert total == 5 and [t.id for t in page] == ids[::-1][:3]
    total, page = store.list_tasks(project.id, start=3, limit=3, descending=False)
    assert total == 6 and len(page) == 3


def test_claim_walk_and_success(store: TaskStore, project) -> None:
    task = _task(store, project.id)
    lease = store.claim("w1", 30, time.time())
    assert lease and lease.task_id == task.id and lease.attempt == 1
    assert lease.task.status is Status.ACCEPT and lease.task.accepttime
    assert store.claim("w2", 30, time.time()) is None
    for status in (Status.ASSIGN, Status.PREPROCESS_START, Status.PREPROCESS_END, Status.START):
        store.advance(lease, status, time.time())
    store.record_progress(lease, {"stepCurrent": "1"}, time.time())
    store.record_progress(lease, {"stepCurrent": "2"}, time.time())
    store.advance(lease, Status.END, time.time(), note="generated")
    done = store.finish_success(lease, [NewOutput("0.png", "image/png", 10), NewOutput("1.png", "image/png", 20)], 1.5, time.time())
    assert done.status is Status.POSTPROCESS_END and done.pexit == 0 and done.elapsed == 1.5
    assert [o.name for o in done.outputs] == ["0.png", "1.png"] and done.outputs[1].size == 20
    assert done.progress == {"stepCurrent": "2"}
    assert "generated" in done.debugoutput
    for column in ("assigntime", "preprocessstarttime", "starttime", "endtime", "postprocessstarttime", "postprocessendtime"):
        assert getattr(done, column), column
    with pytest.raises(LeaseLost):
        store.advance(lease, Status.OUTPUT, time.time())


def test_claims_follow_fifo_and_tool_filter(store: TaskStore, project) -> None:
    first = _task(store, project.id)
    flux2 = _task(store, project.id, tool="black-forest-labs/flux-2-flex-t2i")
    second = _task(store, project.id)
    assert store.claim("w", 30, time.time(), tools=["black-forest-labs/flux-2-flex-t2i"]).task_id == flux2.id
    assert store.claim("w", 30, time.time()).task_id == first.id
    assert store.claim("w", 30, time.time()).task_id == second.id


def test_illegal_transitions_are_refused(store: TaskStore, project) -> None:
    _task(store, project.id)
    lease = store.claim("w", 30, time.time())
    store.advance(lease, Status.START, time.time())
    with pytest.raises(IllegalTransition):
        store.advance(lease, Status.ASSIGN, time.time())
    with pytest.raises(IllegalTransition):
        store.advance(lease, Status.PREPROCESS_END, time.time())


def test_expired_lease_requeues_then_fails_at_the_limit(store: TaskStore, project) -> None:
    task = _task(store, project.id)
    now = time.time()
    first = store.claim("w1", 1, now)
    store.advance(first, Status.START, now)
    assert store.expire_leases(now + 0.5, max_attempts=2) == []
    [expired] = store.expire_leases(now + 2, max_attempts=2)
    assert expired.requeued and expired.task_id == task.id
    requeued = store.get_task(project.id, task_id=task.id)
    assert requeued.status is Status.QUEUE and requeued.starttime is None
    assert "lost worker w1" in requeued.debugoutput

    second = store.claim("w2", 1, now + 3)
    assert second.attempt == 2
    # The first worker comes back from a pause: fenced out, it cannot write anything.
    with pytest.raises(LeaseLost):
        store.advance(first, Status.END, now + 3)
    with pytest.raises(LeaseLost):
        store.finish_success(first, [], 1.0, now + 3)
    with pytest.raises(LeaseLost):
        store.heartbeat(first, 30, now + 3)
    assert not store.is_current(first) and store.is_current(second)

    [final] = store.expire_leases(now + 10, max_attempts=2)
    assert not final.requeued
    failed = store.get_task(project.id, task_id=task.id)
    assert failed.status is Status.POSTPROCESS_END and failed.pexit == 1
    assert "2 attempts" in failed.debugerror


def test_heartbeat_keeps_the_lease(store: TaskStore, project) -> None:
    _task(store, project.id)
    now = time.time()
    lease = store.claim("w", 2, now)
    lease = store.heartbeat(lease, 2, now + 1.5)
    assert store.expire_leases(now + 3, max_attempts=3) == []
    assert len(store.expire_leases(now + 4, max_attempts=3)) == 1


def test_cancel_only_while_queued(store: TaskStore, project) -> None:
    queued = _task(store, project.id)
    cancelled = store.cancel_queued(project.id, queued.id, time.time())
    assert cancelled.status is Status.CANCEL and cancelled.canceltime
    assert store.claim("w", 30, time.time()) is None
    running = _task(store, project.id)
    store.claim("w", 30, time.time())
    assert store.cancel_queued(project.id, running.id, time.time()) is None


def test_kill_ends_a_running_task_and_fences_its_worker(store: TaskStore, project) -> None:
    task = _task(store, project.id)
    lease = store.claim("w", 30, time.time())
    store.advance(lease, Status.START, time.time())
    other = store.create_project("other", "apikey")
    assert store.kill(other.id, task.id, time.time()) is None
    killed = store.kill(project.id, task.id, time.time())
    assert killed.status is Status.CANCEL and killed.kill_requested
    assert not store.is_current(lease)
    with pytest.raises(LeaseLost):
        store.record_progress(lease, {}, time.time())
    with pytest.raises(LeaseLost):
        store.finish_failure(lease, "x", time.time())
    assert store.kill(project.id, task.id, time.time()) is None
    assert store.expire_leases(time.time() + 100, 3) == []


def test_failure_is_terminal_with_error(store: TaskStore, project) -> None:
    task = _task(store, project.id)
    lease = store.claim("w", 30, time.time())
    store.finish_failure(lease, "boom", time.time())
    failed = store.get_task(project.id, task_id=task.id)
    assert failed.status is Status.POSTPROCESS_END and failed.pexit == 1 and failed.debugerror == "boom"
    assert failed.outputs == ()


def test_concurrent_claims_never_share_a_task(store: TaskStore, project, database_url: str) -> None:
    for _ in range(40):
        _task(store, project.id)
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        own = open_store(database_url)
        try:
            while (lease := own.claim(name, 30, time.time())) is not None:
                own.finish_success(lease, [], 0.1, time.time())
                with lock:
                    claimed.append(lease.task_id)
        finally:
            own.close()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40


# -- the queue's policy: claim order, limits ----------------------------------------------
FLUX2 = "black-forest-labs/flux-2-flex-t2i"


def _claim_ids(store: TaskStore, count: int, tools: list[str] | None = None) -> list[int]:
    """Claim ``count`` tasks without finishing them (each claim leaves its task running)."""
    leases = [store.claim("w", 30, time.time(), tools=tools) for _ in range(count)]
    return [lease.task_id if lease else None for lease in leases]


def test_claims_are_fifo_within_a_project(store: TaskStore, project) -> None:
    ids = [_task(store, project.id).id for _ in range(4)]
    assert _claim_ids(store, 5) == ids + [None]


def test_the_project_with_fewer_tasks_running_goes_first(store: TaskStore, project) -> None:
    burst = store.create_project("burst", "apikey")
    first, second = _task(store, burst.id), _task(store, burst.id)
    assert _claim_ids(store, 2) == [first.id, second.id]  # 2 of burst's running now
    queued = [_task(store, burst.id).id for _ in range(20)]
    single = _task(store, project.id)  # the newest task of all, but its project runs nothing
    assert _claim_ids(store, 1) == [single.id]
    assert _claim_ids(store, 1) == [queued[0]]


def test_a_burst_is_shared_turn_by_turn_with_other_projects(store: TaskStore, project) -> None:
    burst = store.create_project("burst", "apikey")
    burst_ids = [_task(store, burst.id).id for _ in range(3)]
    other_ids = [_task(store, project.id).id for _ in range(2)]
    # Ties (as many running) go to the project whose oldest queued task is oldest: burst first.
    assert _claim_ids(store, 6) == [burst_ids[0], other_ids[0], burst_ids[1], other_ids[1], burst_ids[2], None]


def test_fair_share_counts_running_tasks_not_finished_ones(store: TaskStore, project) -> None:
    busy = store.create_project("busy", "apikey")
    done = _task(store, busy.id)
    lease = store.claim("w", 30, time.time())
    store.finish_success(lease, [], 0.1, time.time())
    busy_next, mine = _task(store, busy.id), _task(store, project.id)
    assert done.id < busy_next.id < mine.id
    assert _claim_ids(store, 2) == [busy_next.id, mine.id]  # nothing running on either: oldest first


def test_priority_beats_fair_share(store: TaskStore, project) -> None:
    vip = store.create_project("vip", "apikey", priority=5)
    plain = _task(store, project.id)  # older, and its project runs nothing
    vip_ids = [_task(store, vip.id).id for _ in range(3)]
    assert _claim_ids(store, 4) == vip_ids + [plain.id]

    assert store.set_priority(project.api_key, 9).priority == 9
    assert store.project_by_key(project.api_key).priority == 9
    later_vip, later_plain = _task(store, vip.id), _task(store, project.id)
    assert _claim_ids(store, 2) == [later_plain.id, later_vip.id]
    assert store.set_priority("no-such-key", 1) is None


def test_the_tools_filter_keeps_fair_share_among_its_tools(store: TaskStore, project) -> None:
    other = store.create_project("other", "apikey")
    mine_pixel = _task(store, project.id)
    mine_flux2 = _task(store, project.id, tool=FLUX2)
    other_flux2 = _task(store, other.id, tool=FLUX2)
    assert store.claim("w", 30, time.time(), tools=[]) is None
    assert _claim_ids(store, 1, tools=[TOOL]) == [mine_pixel.id]
    # project now runs one task, other none: other's flux2 task first, though mine is older.
    assert _claim_ids(store, 3, tools=[FLUX2, TOOL]) == [other_flux2.id, mine_flux2.id, None]


def test_many_claimers_claim_every_task_exactly_once(store: TaskStore, database_url: str) -> None:
    projects_ = [store.create_project(f"p{i}", "apikey") for i in range(6)]
    expected = [_task(store, projects_[n % 6].id, tool=TOOL if n % 3 else FLUX2).id for n in range(300)]
    claimed: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer(index: int) -> None:
        own = open_store(database_url)  # its own engine: its own connections on PostgreSQL
        tools = None if index % 3 == 0 else ([TOOL, FLUX2] if index % 3 == 1 else [TOOL])
        try:
            start.wait()
            while (lease := own.claim(f"w{index}", 30, time.time(), tools=tools)) is not None:
                with lock:
                    claimed.append(lease.task_id)
                own.finish_success(lease, [], 0.01, time.time())
        except BaseException as exc:  # a deadlock or a double claim's LeaseLost would land here
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(claimed) == len(set(claimed)) == 300 and sorted(claimed) == sorted(expected)
    assert all(t.status is Status.POSTPROCESS_END for p in projects_ for t in store.list_tasks(p.id, start=0, limit=100)[1])


def test_a_project_over_its_concurrency_limit_is_refused(store: TaskStore, project) -> None:
    def run() -> int:
        return store.create_task(project.id, TOOL, {"prompt": "p"}, CPS, concurrency_limit=3).id

    ids = [run() for _ in range(3)]
    with pytest.raises(ConcurrencyLimitError) as refused:
        run()
    assert refused.value.code == 96 and refused.value.http_status == 200
    assert refused.value.message == (
        "Concurrency limit reached: this project has 3 tasks queued or running and may have at most 3 at once. "
        "Run again when one of them has ended."
    )
    assert store.list_tasks(project.id, start=0, limit=10)[0] == 3  # nothing half-made
    # Running tasks count too; a finished or cancelled one frees its place.
    lease = store.claim("w", 30, time.time())
    with pytest.raises(ConcurrencyLimitError):
        run()
    store.finish_success(lease, [], 0.1, time.time())
    ids.append(run())
    store.cancel_queued(project.id, ids[1], time.time())
    ids.append(run())
    # Other projects have their own count.
    other = store.create_project("other", "apikey")
    assert store.create_task(other.id, TOOL, {"prompt": "p"}, CPS, concurrency_limit=3)


def test_a_projects_own_limit_wins_over_the_default(store: TaskStore, project) -> None:
    def run() -> object:
        return store.create_task(project.id, TOOL, {"prompt": "p"}, CPS, concurrency_limit=1)

    assert store.set_concurrency_limit(project.api_key, 2).concurrency_limit == 2
    run(), run()
    with pytest.raises(ConcurrencyLimitError, match="has 2 tasks queued or running and may have at most 2"):
        run()
    assert store.set_concurrency_limit(project.api_key, 0).concurrency_limit == 0  # no limit at all
    for _ in range(3):
        run()
    assert store.set_concurrency_limit(project.api_key, None).concurrency_limit is None  # the default again
    with pytest.raises(ConcurrencyLimitError, match="has 5 tasks queued or running and may have at most 1"):
        run()
    assert store.set_concurrency_limit("no-such-key", 3) is None
    capped = store.create_project("capped", "apikey", concurrency_limit=0)
    assert store.create_task(capped.id, TOOL, {}, CPS, concurrency_limit=0)  # both off: no limit


def test_concurrent_runs_never_pass_the_limit(store: TaskStore, project) -> None:
    accepted: list[int] = []
    refused: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def run() -> None:
        start.wait()
        try:
            task = store.create_task(project.id, TOOL, {"prompt": "p"}, CPS, concurrency_limit=5)
        except BaseException as exc:
            with lock:
                refused.append(exc)
        else:
            with lock:
                accepted.append(task.id)

    threads = [threading.Thread(target=run) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 5 and len(refused) == 15
    assert all(isinstance(exc, ConcurrencyLimitError) for exc in refused), refused
    assert store.list_tasks(project.id, start=0, limit=50)[0] == 5


def test_a_full_queue_refuses_runs_with_retry_after(store: TaskStore, project) -> None:
    other = store.create_project("other", "apikey")
    store.create_task(project.id, TOOL, {}, CPS, queue_limit=3)
    store.create_task(other.id, TOOL, {}, CPS, queue_limit=3)
    store.create_task(other.id, TOOL, {}, CPS, queue_limit=3)
    with pytest.raises(RateLimitError) as refused:
        store.create_task(project.id, TOOL, {}, CPS, queue_limit=3)
    assert refused.value.http_status == 429 and refused.value.code == 0
    assert refused.value.headers == {"Retry-After": "30"}
    assert refused.value.message == (
        "The queue is full: 3 tasks are waiting for a worker and the server accepts at most 3. "
        "Try again in 30 seconds."
    )
    assert store.list_tasks(project.id, start=0, limit=10)[0] == 1
    store.claim("w", 30, time.time())  # running tasks are not in the queue any more
    assert store.create_task(project.id, TOOL, {}, CPS, queue_limit=3)
    assert store.create_task(project.id, TOOL, {}, CPS, queue_limit=0)  # 0: no limit


def test_of_processes_starting_together_on_an_empty_database_one_creates_the_first_project(
    database_url: str, store: TaskStore
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from fluxrun.store import open_store

    stores = [open_store(database_url) for _ in range(6)]  # six processes' own connections
    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            made = list(pool.map(lambda s: s.create_first_project("default", "signature"), stores))
    finally:
        for opened in stores:
            opened.close()
    assert sum(project is not None for project in made) == 1
    assert [p.name for p in store.list_projects()] == ["default"]
    assert store.create_first_project("default", "signature") is None
