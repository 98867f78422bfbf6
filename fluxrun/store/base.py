"""The TaskStore interface: the durable queue and its state machine.

Every backend (SQLite, PostgreSQL) passes the same test suite. Guarantees:
- a task is claimed by one worker at a time, under a lease (attempt number + expiry) that
  the worker renews by heartbeat;
- an expired lease sends the task back to the queue, up to ``max_attempts``; after that
  the task ends failed, so no client polls forever;
- every worker write is fenced by the attempt number: a worker whose lease was taken over
  gets ``LeaseLost`` and changes nothing;
- a worker's status write (``advance``, ``finish_success``, ``finish_failure``) made again
  after its COMMIT landed but the answer was lost (DatabaseUnavailable, then the retry) finds
  itself done and succeeds with nothing done twice: no second note, outputs (same access keys),
  callback or event;
- status changes follow ``fluxrun.status.is_legal``; illegal ones raise ``IllegalTransition``;
- a task with a callback URL gets its delivery row in the same transaction that ends it, and
  a delivery is tried by one deliverer at a time, under a claim that expires.
- every change of a task is published on ``events`` (fluxrun.store.events) once committed;
- a stopping worker may hand its task back (``hand_back``): the task is queued again at once,
  without waiting for the lease to expire, and that attempt does not count against
  ``max_attempts`` (the attempt number still grows, so the old attempt stays fenced off);
- a login code is redeemed at most once, before it expires, by whichever process asks first;
- workers register in the worker registry and refresh their row by heartbeat; a row not
  refreshed by its ``alive_until`` is a worker that is gone.
- claims follow the queue policy: a higher project priority first, then the project with the
  fewest tasks running (ties: the one whose oldest queued task is oldest), FIFO within a
  project; a Run that would put a project over its concurrency limit, or the queue over its
  length limit, is refused atomically with the insert (nothing half-accepted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from fluxrun.status import Status
from fluxrun.store.events import EventBus

AuthMode = Literal["signature", "apikey"]
DeliveryState = Literal["pending", "delivered", "failed", "gone"]
WorkerState = Literal["loading", "idle", "busy", "stopping", "stopped"]
#: How a finished task ended, for metrics: succeeded (pexit 0), failed, cancelled (or killed).
Outcome = Literal["succeeded", "failed", "cancelled"]


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    mode: AuthMode
    api_key: str
    api_secret: str | None
    created_at: float
    revoked_at: float | None
    webhook_secret: str  # signs this project's callbacks
    priority: int = 0  # a higher priority's queued tasks are claimed before any lower one's
    concurrency_limit: int | None = None  # tasks queued or running at once; None: the server's default, 0: none

    def effective_concurrency_limit(self, default: int) -> int:
        """This project's limit given the server's default (FLUXRUN_PROJECT_CONCURRENCY); 0: no limit."""
        return default if self.concurrency_limit is None else self.concurrency_limit

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class OutputRecord:
    id: str
    task_id: int
    name: str
    content_type: str
    size: int
    accesskey: str
    created_at: float
    key: str | None = None  # the storage key of its file; None: the task's output_key (rows before 0007)


@dataclass(frozen=True)
class NewOutput:
    """A file a worker has written to storage, under ``key`` (storage.base.attempt_key of its
    attempt; None: the task's output key)."""

    name: str
    content_type: str
    size: int
    key: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    id: int
    uuid: str
    token: str
    project_id: int
    tool: str
    parameters: dict[str, Any]
    callback_url: str
    status: Status
    attempt: int
    lease_owner: str | None
    lease_expires_at: float | None
    debugoutput: str
    debugerror: str
    pexit: int | None
    progress: dict[str, Any] | None
    output_key: str
    cps: Decimal
    elapsed: float | None
    createtime: float
    accepttime: float | None
    assigntime: float | None
    preprocessstarttime: float | None
    preprocessendtime: float | None
    starttime: float | None
    endtime: float | None
    postprocessstarttime: float | None
    postprocessendtime: float | None
    canceltime: float | None
    kill_requested: bool
    outputs: tuple[OutputRecord, ...] = ()
    handed_back: int = 0  # attempts a stopping worker gave back; not failures


@dataclass(frozen=True)
class Lease:
    """A worker's hold on one attempt of one task."""

    task: TaskRecord
    attempt: int
    worker_id: str
    expires_at: float

    @property
    def task_id(self) -> int:
        return self.task.id


@dataclass(frozen=True)
class ExpiredLease:
    task_id: int
    attempt: int
    requeued: bool  # False: the attempt limit was reached and the task ended failed


@dataclass(frozen=True)
class Delivery:
    """One task's callback. ``attempt`` counts tries started; a claimed try is fenced by it."""

    id: int
    webhook_id: str
    task_id: int
    project_id: int
    url: str
    state: DeliveryState
    attempt: int
    next_attempt_at: float
    claimed_by: str | None
    claimed_until: float | None
    last_status: int | None
    last_error: str
    created_at: float
    last_attempt_at: float | None
    delivered_at: float | None


@dataclass(frozen=True)
class GpuMemory:
    """torch.cuda's view of a worker's GPU, in bytes."""

    allocated: int  # held by live tensors
    reserved: int  # held by the caching allocator (what other processes cannot use)
    total: int  # the device's memory


@dataclass(frozen=True)
class WorkerRecord:
    """One worker process in the registry."""

    id: str  # host/pid
    host: str
    pid: int
    tools: tuple[str, ...]  # tool slugs it serves
    models: str  # tiny | real
    device: str
    state: WorkerState
    task_id: int | None
    started_at: float
    last_seen: float
    alive_until: float  # not seen again by then: gone
    gpu: GpuMemory | None = None

    def live(self, now: float) -> bool:
        return self.state != "stopped" and self.alive_until >= now

    def takes_tasks(self, now: float) -> bool:
        """Live and claiming (or about to): not loading its models, not on its way out."""
        return self.live(now) and self.state in ("idle", "busy")


@dataclass(frozen=True)
class LoginRedemption:
    """What redeeming a login code gave: its project, or why not."""

    project_id: int | None
    problem: Literal["unknown", "used", "expired"] | None = None


@dataclass(frozen=True)
class TaskCounts:
    """Unfinished tasks of one tool, for metrics."""

    queued: int
    running: int


# The histogram's upper bounds, in seconds: a tiny model on a CPU takes under a second,
# FLUX.2 [dev] at 50 steps minutes. Finished tasks are counted per bound as they end (the
# task_durations table keeps each bound's index), so changing them needs a migration that
# rebuilds that table.
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class DurationHistogram:
    """Finished tasks of one tool and outcome: cumulative counts per upper bound (seconds).

    The duration is the generation time: ``elapsed`` for a success, start to end for a
    failure or a kill, 0 for a task that ended before it started (cancelled in the queue,
    failed while loading its model)."""

    tool: str
    outcome: Outcome
    buckets: tuple[tuple[float, int], ...]  # (upper bound, tasks at most that long), growing
    count: int
    total_seconds: float


class TaskStore(ABC):
    #: Where every committed change of a task is published, to this and other processes.
    events: EventBus

    # -- set-up ---------------------------------------------------------------------------
    @abstractmethod
    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic)."""

    @abstractmethod
    def schema_lag(self) -> str | None:
        """What keeps this release from using the schema, in words ("no fluxrun schema",
        "at revision 0005; this release needs 0007"), or None when it is at this release's
        newest revision or at one this release does not know (a newer release migrated it:
        migrations only add, so an older process goes on working during a rolling upgrade)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise if the database cannot be reached."""

    @abstractmethod
    def close(self) -> None: ...

    # -- projects and keys ----------------------------------------------------------------
    @abstractmethod
    def create_project(
        self, name: str, mode: AuthMode, priority: int = 0, concurrency_limit: int | None = None
    ) -> Project: ...

    @abstractmethod
    def create_first_project(self, name: str, mode: AuthMode) -> Project | None:
        """Create a project only if the database has none yet (None otherwise), atomically:
        of several processes starting together on an empty database, exactly one creates it."""

    @abstractmethod
    def set_priority(self, api_key: str, priority: int) -> Project | None:
        """Set a project's claim priority; None when no project has that key."""

    @abstractmethod
    def set_concurrency_limit(self, api_key: str, limit: int | None) -> Project | None:
        """Set a project's concurrency limit (None: the server's default, 0: no limit); None
        when no project has that key."""

    @abstractmethod
    def list_projects(self) -> list[Project]: ...

    @abstractmethod
    def revoke_project(self, api_key: str) -> bool:
        """Revoke a key; False when no active key has that value."""

    @abstractmethod
    def project_by_key(self, api_key: str) -> Project | None: ...

    @abstractmethod
    def get_project(self, project_id: int) -> Project | None: ...

    @abstractmethod
    def use_nonce(self, project_id: int, nonce: str, now: float, forget_after: float | None) -> bool:
        """Record a nonce; False when this project used it before (a replay)."""

    # -- tasks: the API's side ------------------------------------------------------------
    @abstractmethod
    def create_task(
        self,
        project_id: int,
        tool: str,
        parameters: dict[str, Any],
        cps: Decimal,
        callback_url: str = "",
        debugoutput: str = "",
        *,
        concurrency_limit: int = 0,
        queue_limit: int = 0,
    ) -> TaskRecord:
        """Queue a task. ``concurrency_limit`` is the server's default limit of a project's tasks
        queued or running (the project's own limit wins when it has one), ``queue_limit`` the
        most tasks queued in all; 0 is no limit. Over a limit, nothing is inserted and it raises
        ConcurrencyLimitError (code 96) or RateLimitError (HTTP 429, Retry-After); the check and
        the insert are one transaction, so concurrent Runs cannot both slip under a project's limit."""

    @abstractmethod
    def get_task(self, project_id: int, *, task_id: int | None = None, token: str | None = None) -> TaskRecord | None:
        """One task of this project, with its outputs; None when absent or another project's."""

    @abstractmethod
    def task_by_token(self, token: str) -> TaskRecord | None:
        """The task whose socketaccesstoken this is, whichever project's (the token alone
        authorises the WebSocket, as on the hosted service)."""

    @abstractmethod
    def list_tasks(
        self, project_id: int, *, start: int, limit: int, descending: bool = True, tool: str | None = None
    ) -> tuple[int, list[TaskRecord]]:
        """(total matching, one page) of this project's tasks, ordered by id."""

    @abstractmethod
    def cancel_queued(self, project_id: int, task_id: int, now: float) -> TaskRecord | None:
        """Cancel a task still in the queue; None when it is not queued (any more)."""

    @abstractmethod
    def kill(self, project_id: int, task_id: int, now: float) -> TaskRecord | None:
        """End a queued or running task as task_cancel at once; its worker stops at its next
        step check and can no longer write. None when the task already ended."""

    @abstractmethod
    def expire_leases(self, now: float, max_attempts: int, settle_seconds: float = 0.0) -> list[ExpiredLease]:
        """Re-queue tasks whose lease expired, or fail them after ``max_attempts``.

        Nothing expires until this process has had the database for ``settle_seconds`` without
        a break (give it the lease length): after an outage or a long wait on a lock, leases
        ran out because nobody could renew them, not because their workers died."""

    @abstractmethod
    def forget_old_nonces(self, now: float) -> int: ...

    # -- tasks: the worker's side ---------------------------------------------------------
    @abstractmethod
    def claim(self, worker_id: str, lease_seconds: float, now: float, tools: list[str] | None = None) -> Lease | None:
        """Take the next queued task (of ``tools``, exact slugs, if given) under a new lease.

        Next: the highest project priority; among equals, the project with the fewest tasks
        running now (ties: the project whose oldest queued task is oldest); within the
        project, the oldest queued task."""

    @abstractmethod
    def heartbeat(self, lease: Lease, lease_seconds: float, now: float) -> Lease:
        """Extend the lease, or raise LeaseLost."""

    @abstractmethod
    def advance(self, lease: Lease, status: Status, now: float, note: str | None = None) -> None:
        """Move to ``status`` (setting its time); ``note`` is appended to debugoutput."""

    @abstractmethod
    def record_progress(self, lease: Lease, progress: dict[str, Any], now: float) -> None:
        """Latest generation progress; moves the task to task_output the first time."""

    @abstractmethod
    def is_current(self, lease: Lease) -> bool:
        """Whether this lease still owns a live task (False after a kill or a take-over)."""

    @abstractmethod
    def finish_success(self, lease: Lease, outputs: list[NewOutput], elapsed: float, now: float) -> TaskRecord: ...

    @abstractmethod
    def finish_failure(self, lease: Lease, error: str, now: float, pexit: int = 1) -> None: ...

    @abstractmethod
    def hand_back(self, lease: Lease, now: float, reason: str) -> bool:
        """Queue the task of this lease again at once, because its worker is stopping now.

        The attempt is not a failure: it does not count against ``max_attempts``, and
        debugoutput says ``attempt N: <reason>; queued again``. The attempt number is kept,
        so the stopping worker can no longer write (LeaseLost) even after another worker
        claims the task. False when this lease no longer holds the task (it ended, was
        killed or was taken over): nothing changes."""

    # -- the worker registry --------------------------------------------------------------
    @abstractmethod
    def register_worker(self, worker: WorkerRecord) -> None:
        """Insert or replace a worker's row (a host/pid can come back after a restart)."""

    @abstractmethod
    def worker_seen(
        self,
        worker_id: str,
        state: WorkerState,
        task_id: int | None,
        gpu: GpuMemory | None,
        now: float,
        alive_until: float,
    ) -> bool:
        """A worker's heartbeat; False when it has no row (forgotten): register it again."""

    @abstractmethod
    def worker_stopped(self, worker_id: str, now: float) -> None:
        """A worker exited cleanly."""

    @abstractmethod
    def list_workers(self) -> list[WorkerRecord]:
        """Every worker in the registry, live, gone or stopped, the newest first."""

    @abstractmethod
    def live_workers(self, now: float) -> list[WorkerRecord]:
        """The workers neither stopped nor gone at ``now`` (one query)."""

    @abstractmethod
    def forget_workers(self, before: float) -> int:
        """Delete the rows of workers not seen since ``before``; how many."""

    # -- the playground's one-time login codes -------------------------------------------
    @abstractmethod
    def add_login_code(self, project_id: int, code_hash: str, now: float, expires_at: float) -> None:
        """Keep a login code's hash for this project until ``expires_at`` (and forget the
        codes that are used or expired)."""

    @abstractmethod
    def redeem_login_code(self, code_hash: str, now: float) -> LoginRedemption:
        """Use the code with this hash: its project the first time, before it expires; after
        that, or for an unknown code, the problem. Atomic: one redemption per code, whichever
        process asks."""

    # -- numbers for metrics --------------------------------------------------------------
    @abstractmethod
    def task_counts(self) -> dict[str, TaskCounts]:
        """Queued and running tasks per tool (tools with none are absent)."""

    @abstractmethod
    def duration_histograms(self) -> list[DurationHistogram]:
        """Finished tasks per tool and outcome, bucketed by DURATION_BUCKETS. Kept as tasks
        end, so it costs the same however many tasks have finished."""

    # -- callbacks: the deliverer's side --------------------------------------------------
    @abstractmethod
    def claim_deliveries(self, deliverer_id: str, claim_seconds: float, now: float, limit: int = 1) -> list[Delivery]:
        """Take pending deliveries that are due and not claimed (or whose claim expired),
        starting one try of each (``attempt`` + 1) under a claim until now + claim_seconds."""

    @abstractmethod
    def retry_delivery(self, delivery: Delivery, next_attempt_at: float, status: int | None, error: str) -> bool:
        """Record a failed try and release the claim until ``next_attempt_at``; False when
        this try no longer holds the delivery (its claim expired and another try began)."""

    @abstractmethod
    def end_delivery(
        self, delivery: Delivery, state: DeliveryState, now: float, status: int | None = None, error: str = ""
    ) -> bool:
        """End a delivery as delivered, failed or gone; False as for ``retry_delivery``."""

    @abstractmethod
    def list_deliveries(self, task_id: int) -> list[Delivery]:
        """A task's deliveries (zero or one today), for operators and tests."""
