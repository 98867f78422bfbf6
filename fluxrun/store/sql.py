"""The TaskStore in SQLAlchemy Core, shared by the SQLite and PostgreSQL stores.

Dialect differences live in their own files: how the engine is made, how a write
transaction begins (sqlite.py: BEGIN IMMEDIATE; postgres.py: row locks with SKIP LOCKED)
and how events travel (events_local.py, events_postgres.py). Every write that changes a
task emits its events through ``_emit``; they reach listeners only if it commits. The queue's
policy (claim order, limits at Run) is queue.py.
"""

from __future__ import annotations

import json
import secrets
import string
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, and_, func, insert, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, IntegrityError

from fluxrun.errors import DatabaseUnavailable, IllegalTransition, LeaseLost
from fluxrun.status import RUNNING, TERMINAL, Status, is_legal
from fluxrun.store.availability import Availability
from fluxrun.store.base import (
    AuthMode,
    ExpiredLease,
    Lease,
    NewOutput,
    OutputRecord,
    Project,
    TaskRecord,
    TaskStore,
)
from fluxrun.store.deliveries import DeliveryQueries, new_webhook_secret, queue_callback
from fluxrun.store.events import MAX_ERROR_CHARS, TASK_ERROR, EventBus, TaskEvent
from fluxrun.store.logins import LoginQueries
from fluxrun.store.queue import check_limits, next_task
from fluxrun.store.schema import nonces, outputs, projects, tasks
from fluxrun.store.stats import StatsQueries, count_finished
from fluxrun.store.workers import WorkerQueries

_TOKEN_ALPHABET = string.ascii_letters + string.digits
# The time column each status sets when a task reaches it.
STATUS_TIME: dict[Status, str] = {
    Status.ACCEPT: "accepttime",
    Status.ASSIGN: "assigntime",
    Status.PREPROCESS_START: "preprocessstarttime",
    Status.PREPROCESS_END: "preprocessendtime",
    Status.START: "starttime",
    Status.END: "endtime",
    Status.POSTPROCESS_END: "postprocessendtime",
    Status.CANCEL: "canceltime",
}
_ATTEMPT_TIMES = [c for s, c in STATUS_TIME.items() if s not in TERMINAL] + ["postprocessstarttime"]
_RUNNING_VALUES = [s.value for s in RUNNING]
_MIGRATIONS = Path(__file__).parent / "migrations"
# A task that leaves a worker's hands, whichever way.
_RELEASED: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
# Where a write transaction keeps the events it will publish (on the connection's info).
_PENDING_EVENTS = "fluxrun_pending_events"


def new_token(length: int = 30) -> str:
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(length))


def _sources(new: Status) -> list[str]:
    """The statuses from which ``new`` may be reached."""
    return [s.value for s in Status if is_legal(s, new)]


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


class SqlTaskStore(DeliveryQueries, WorkerQueries, StatsQueries, LoginQueries, TaskStore):
    def __init__(self, engine: Engine, events: EventBus) -> None:
        self.engine = engine
        self.events = events
        self.availability = Availability()

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Connection]:
        # A read that gets through says little: SQLite serves reads while another process holds
        # the write lock. Only a write that began tells the availability the database is back.
        with self._reaching(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        pending: list[TaskEvent] = []
        asked = time.monotonic()
        # Dialects see this option when the transaction begins (SQLite: BEGIN IMMEDIATE).
        with self._reaching(), self.engine.connect() as conn:
            conn.execution_options(fluxrun_write=True)
            conn.info[_PENDING_EVENTS] = pending
            try:
                with conn.begin():
                    self.availability.reached(time.monotonic() - asked)
                    yield conn
                    if pending:
                        self.events.before_commit(conn, pending)
            finally:
                # pop, not del: a connection dropped during the transaction (or its COMMIT) was
                # invalidated, and SQLAlchemy cleared its info; the caller must see the
                # DatabaseUnavailable, not a KeyError.
                conn.info.pop(_PENDING_EVENTS, None)
        if pending:
            self.events.after_commit(pending)

    @contextmanager
    def _reaching(self, quiet: bool = False) -> Iterator[None]:
        """The driver's errors that mean "the database is not there for now" become
        DatabaseUnavailable (HTTP 503 in the API; workers wait and go on); others pass as they are."""
        try:
            yield
        except DBAPIError as exc:
            unavailable = self._unavailable(exc)
            if unavailable is None:
                raise
            if not quiet:
                self.availability.failed(unavailable.cause)
            raise unavailable from exc

    def _unavailable(self, exc: DBAPIError) -> DatabaseUnavailable | None:
        """DatabaseUnavailable when ``exc`` says the database cannot be reached or used for now
        (each dialect knows its driver's errors), else None."""
        return DatabaseUnavailable.unreachable(driver_error(exc)) if exc.connection_invalidated else None

    @staticmethod
    def _emit(conn: Connection, task_id: int, type_: str, attempt: int, message: Any = None) -> None:
        """Publish this change of a task once the transaction of ``conn`` commits."""
        conn.info[_PENDING_EVENTS].append(TaskEvent(task_id, type_, attempt, message))

    def _emit_failure(self, conn: Connection, task_id: int, attempt: int, error: str) -> None:
        self._emit(conn, task_id, TASK_ERROR, attempt, error[:MAX_ERROR_CHARS])
        self._emit(conn, task_id, Status.POSTPROCESS_END.value, attempt)

    # -- set-up ---------------------------------------------------------------------------
    def migrate(self) -> None:
        config = _alembic_config()
        # Processes of a new release may start together, each migrating at start: the first
        # migrates, the others wait for its transaction to commit and find the schema current.
        # A write transaction (SQLite: BEGIN IMMEDIATE) plus the dialect's lock (_lock_setup).
        # At start, a database that cannot be reached is the caller's to say (one line, not a log).
        with self._reaching(quiet=True), self.engine.connect() as conn, self._migrating(conn):
            conn.execution_options(fluxrun_write=True)
            with conn.begin():
                self._lock_setup(conn)
                config.attributes["connection"] = conn
                before = MigrationContext.configure(conn).get_current_revision()
                command.upgrade(config, "head")
                if MigrationContext.configure(conn).get_current_revision() != before:
                    self._check_migrated(conn)  # only then: it reads every row

    def _lock_setup(self, conn: Connection) -> None:
        """Hold the database's set-up lock (migrations, the first project) until ``conn``'s
        transaction ends (SQLite's BEGIN IMMEDIATE already is one)."""

    @contextmanager
    def _migrating(self, conn: Connection) -> Iterator[None]:
        """How ``conn`` is set up around the migration's transaction (SQLite: no foreign keys)."""
        yield

    def _check_migrated(self, conn: Connection) -> None:
        """Refuse to commit a migration that left the data inconsistent (SQLite: dangling references)."""

    def schema_lag(self) -> str | None:
        script = ScriptDirectory.from_config(_alembic_config())
        head = script.get_current_head()
        with self._read() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current == head or (current is not None and current not in {r.revision for r in script.walk_revisions()}):
            return None
        if current is None:
            return f"it has no fluxrun schema yet (this release needs revision {head})"
        return f"its schema is at revision {current}; this release needs {head}"

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.events.close()
        self.engine.dispose()

    # -- projects -------------------------------------------------------------------------
    def create_project(
        self, name: str, mode: AuthMode, priority: int = 0, concurrency_limit: int | None = None
    ) -> Project:
        with self._write() as conn:
            return _insert_project(conn, name, mode, priority, concurrency_limit)

    def create_first_project(self, name: str, mode: AuthMode) -> Project | None:
        # Under the set-up lock: API processes starting together on an empty database would
        # otherwise each see no project and each create one.
        with self._write() as conn:
            self._lock_setup(conn)
            if conn.execute(select(projects.c.id).limit(1)).first() is not None:
                return None
            return _insert_project(conn, name, mode)

    def set_priority(self, api_key: str, priority: int) -> Project | None:
        return self._set_project(api_key, priority=priority)

    def set_concurrency_limit(self, api_key: str, limit: int | None) -> Project | None:
        return self._set_project(api_key, concurrency_limit=limit)

    def _set_project(self, api_key: str, **values: Any) -> Project | None:
        # Revoked projects too: their queued tasks still run, under these settings.
        with self._write() as conn:
            conn.execute(update(projects).where(projects.c.api_key == api_key).values(**values))
            row = conn.execute(select(projects).where(projects.c.api_key == api_key)).first()
        return _project(row) if row else None

    def list_projects(self) -> list[Project]:
        with self._read() as conn:
            rows = conn.execute(select(projects).order_by(projects.c.id)).all()
        return [_project(r) for r in rows]

    def revoke_project(self, api_key: str) -> bool:
        with self._write() as conn:
            result = conn.execute(
                update(projects)
                .where(projects.c.api_key == api_key, projects.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
        return result.rowcount == 1

    def project_by_key(self, api_key: str) -> Project | None:
        with self._read() as conn:
            row = conn.execute(select(projects).where(projects.c.api_key == api_key)).first()
        return _project(row) if row else None

    def get_project(self, project_id: int) -> Project | None:
        with self._read() as conn:
            row = conn.execute(select(projects).where(projects.c.id == project_id)).first()
        return _project(row) if row else None

    def use_nonce(self, project_id: int, nonce: str, now: float, forget_after: float | None) -> bool:
        try:
            with self._write() as conn:
                seen = conn.execute(
                    select(nonces.c.nonce).where(nonces.c.project_id == project_id, nonces.c.nonce == nonce)
                ).first()
                if seen:
                    return False
                conn.execute(
                    insert(nonces).values(project_id=project_id, nonce=nonce, seen_at=now, forget_after=forget_after)
                )
        except IntegrityError:
            # PostgreSQL: a concurrent request with the same nonce inserted it between our read
            # and our insert (the primary key refused ours). It was used: a replay, not an error.
            return False
        return True

    def forget_old_nonces(self, now: float) -> int:
        with self._write() as conn:
            return conn.execute(nonces.delete().where(nonces.c.forget_after < now)).rowcount

    # -- tasks: API side ------------------------------------------------------------------
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
        values = {
            "uuid": str(uuidlib.uuid4()),
            "token": new_token(),
            "project_id": project_id,
            "tool": tool,
            "parameters": json.dumps(parameters),
            "callback_url": callback_url,
            "status": Status.QUEUE.value,
            "attempt": 0,
            "debugoutput": debugoutput,
            "debugerror": "",
            "output_key": secrets.token_hex(20),
            "cps": str(cps),
            "createtime": _now(),
            "kill_requested": False,
        }
        with self._write() as conn:
            check_limits(conn, project_id, concurrency_limit, queue_limit)
            task_id = int(conn.execute(insert(tasks).values(**values)).inserted_primary_key[0])
            self._emit(conn, task_id, Status.QUEUE.value, 0)
            return self._task(conn, task_id)

    def get_task(self, project_id: int, *, task_id: int | None = None, token: str | None = None) -> TaskRecord | None:
        if task_id is None and token is None:
            return None
        query = select(tasks).where(tasks.c.project_id == project_id)
        query = query.where(tasks.c.id == task_id) if task_id is not None else query.where(tasks.c.token == token)
        return self._one(query)

    def task_by_token(self, token: str) -> TaskRecord | None:
        return self._one(select(tasks).where(tasks.c.token == token)) if token else None

    def _one(self, query: Any) -> TaskRecord | None:
        with self._read() as conn:
            row = conn.execute(query).first()
            return self._with_outputs(conn, [row])[0] if row else None

    def list_tasks(
        self, project_id: int, *, start: int, limit: int, descending: bool = True, tool: str | None = None
    ) -> tuple[int, list[TaskRecord]]:
        where = [tasks.c.project_id == project_id]
        if tool:
            where.append(func.lower(tasks.c.tool) == tool.lower())
        order = tasks.c.id.desc() if descending else tasks.c.id.asc()
        with self._read() as conn:
            total = conn.execute(select(func.count()).select_from(tasks).where(*where)).scalar_one()
            rows = conn.execute(select(tasks).where(*where).order_by(order).offset(start).limit(limit)).all()
            return int(total), self._with_outputs(conn, rows)

    def cancel_queued(self, project_id: int, task_id: int, now: float) -> TaskRecord | None:
        with self._write() as conn:
            result = conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.project_id == project_id, tasks.c.status == Status.QUEUE.value)
                .values(status=Status.CANCEL.value, canceltime=now)
            )
            if result.rowcount != 1:
                return None
            queue_callback(conn, task_id, now)
            count_finished(conn, [task_id])
            return self._cancelled(conn, task_id)

    def kill(self, project_id: int, task_id: int, now: float) -> TaskRecord | None:
        with self._write() as conn:
            result = conn.execute(
                update(tasks)
                .where(
                    tasks.c.id == task_id,
                    tasks.c.project_id == project_id,
                    tasks.c.status.in_(_sources(Status.CANCEL)),
                )
                .values(
                    status=Status.CANCEL.value,
                    canceltime=now,
                    kill_requested=True,
                    **_RELEASED,
                )
            )
            if result.rowcount != 1:
                return None
            queue_callback(conn, task_id, now)
            count_finished(conn, [task_id])
            return self._cancelled(conn, task_id)

    def _cancelled(self, conn: Connection, task_id: int) -> TaskRecord:
        task = self._task(conn, task_id)
        self._emit(conn, task_id, Status.CANCEL.value, task.attempt)
        return task

    def expire_leases(self, now: float, max_attempts: int, settle_seconds: float = 0.0) -> list[ExpiredLease]:
        expired: list[ExpiredLease] = []
        failed_ids: list[int] = []
        with self._write() as conn:
            if self.availability.settled_for() < settle_seconds:  # checked once the lock is ours
                return expired
            rows = conn.execute(
                select(tasks.c.id, tasks.c.attempt, tasks.c.lease_owner, tasks.c.handed_back)
                .where(tasks.c.status.in_(_RUNNING_VALUES), tasks.c.lease_expires_at < now)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                owner = row.lease_owner or "unknown"
                fenced = and_(tasks.c.id == row.id, tasks.c.attempt == row.attempt, tasks.c.status.in_(_RUNNING_VALUES))
                lost = row.attempt - row.handed_back  # attempts handed back by stopping workers are not failures
                if lost >= max_attempts:
                    error = (
                        f"The worker running this task stopped responding on each of {lost} "
                        f"attempts (last: {owner}); giving up. The task may crash its worker."
                    )
                    failed = conn.execute(
                        update(tasks)
                        .where(fenced)
                        .values(
                            **_failed(now, error, pexit=1),
                            debugoutput=tasks.c.debugoutput + f"attempt {row.attempt}: lost worker {owner}\n",
                        )
                    )
                    if failed.rowcount == 1:
                        queue_callback(conn, row.id, now)
                        self._emit_failure(conn, row.id, row.attempt, error)
                        failed_ids.append(row.id)
                    expired.append(ExpiredLease(row.id, row.attempt, requeued=False))
                    continue
                conn.execute(
                    update(tasks)
                    .where(fenced)
                    .values(
                        status=Status.QUEUE.value,
                        progress=None,
                        **_RELEASED,
                        debugoutput=tasks.c.debugoutput
                        + f"attempt {row.attempt}: lost worker {owner} (lease expired); queued again\n",
                        **{column: None for column in _ATTEMPT_TIMES},
                    )
                )
                self._emit(conn, row.id, Status.QUEUE.value, row.attempt)
                expired.append(ExpiredLease(row.id, row.attempt, requeued=True))
            count_finished(conn, failed_ids)  # all at once: see its docstring on lock order
        return expired

    # -- tasks: worker side ---------------------------------------------------------------
    def claim(self, worker_id: str, lease_seconds: float, now: float, tools: list[str] | None = None) -> Lease | None:
        wanted = tuple(dict.fromkeys(tools)) if tools is not None else None
        with self._write() as conn:
            task_id = next_task(conn, wanted)
            if task_id is None:
                return None
            expires = now + lease_seconds
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status == Status.QUEUE.value)
                .values(
                    status=Status.ACCEPT.value,
                    attempt=tasks.c.attempt + 1,
                    lease_owner=worker_id,
                    lease_expires_at=expires,
                    accepttime=now,
                )
            )
            task = self._task(conn, task_id)
            self._emit(conn, task_id, Status.ACCEPT.value, task.attempt)
        return Lease(task=task, attempt=task.attempt, worker_id=worker_id, expires_at=expires)

    def heartbeat(self, lease: Lease, lease_seconds: float, now: float) -> Lease:
        expires = now + lease_seconds
        with self._write() as conn:
            self._fenced_update(conn, lease, {"lease_expires_at": expires})
        return Lease(task=lease.task, attempt=lease.attempt, worker_id=lease.worker_id, expires_at=expires)

    def advance(self, lease: Lease, status: Status, now: float, note: str | None = None) -> None:
        values: dict[str, Any] = {"status": status.value}
        if status in STATUS_TIME:
            values[STATUS_TIME[status]] = now
        if status is Status.END:
            values["postprocessstarttime"] = now
        landed = dict(values)  # what the row shows once this very write committed (not the note: appended)
        if note:
            values["debugoutput"] = tasks.c.debugoutput + note.rstrip("\n") + "\n"
        with self._write() as conn:
            written = self._fenced_update(conn, lease, values, allowed_from=_sources(status), landed=landed)
            if written and status.terminal:  # the worker ends tasks with finish_*, but the interface allows it
                count_finished(conn, [lease.task_id])
            if written or not self.events.sent_by_commit:  # see events.EventBus.sent_by_commit
                self._emit(conn, lease.task_id, status.value, lease.attempt)

    def record_progress(self, lease: Lease, progress: dict[str, Any], now: float) -> None:
        values = {"status": Status.OUTPUT.value, "progress": json.dumps(progress)}
        allowed = _sources(Status.OUTPUT) + [Status.OUTPUT.value]
        with self._write() as conn:
            self._fenced_update(conn, lease, values, allowed_from=allowed)
            self._emit(conn, lease.task_id, Status.OUTPUT.value, lease.attempt, progress)

    def is_current(self, lease: Lease) -> bool:
        with self._read() as conn:
            row = conn.execute(select(tasks.c.status, tasks.c.attempt).where(tasks.c.id == lease.task_id)).first()
        return bool(row) and row.attempt == lease.attempt and row.status in _RUNNING_VALUES

    def finish_success(self, lease: Lease, outputs_: list[NewOutput], elapsed: float, now: float) -> TaskRecord:
        landed = {"status": Status.POSTPROCESS_END.value, "postprocessendtime": now, "pexit": 0, "elapsed": elapsed}
        with self._write() as conn:
            if not self._fenced_update(
                conn, lease, {**landed, **_RELEASED}, allowed_from=_sources(Status.POSTPROCESS_END), landed=landed
            ):
                # Made again after its acknowledgement was lost: the outputs, their access keys
                # (so the URLs a client may have read) and the callback are those already written.
                if not self.events.sent_by_commit:
                    self._emit(conn, lease.task_id, Status.POSTPROCESS_END.value, lease.attempt)
                return self._task(conn, lease.task_id)
            queue_callback(conn, lease.task_id, now)
            # A earlier attempt may have recorded some files before it died: replace them.
            conn.execute(outputs.delete().where(outputs.c.task_id == lease.task_id))
            for item in outputs_:
                conn.execute(
                    insert(outputs).values(
                        id=secrets.token_hex(16),
                        task_id=lease.task_id,
                        name=item.name,
                        content_type=item.content_type,
                        size=item.size,
                        accesskey=new_token(),
                        created_at=now,
                        storage_key=item.key,
                    )
                )
            count_finished(conn, [lease.task_id])
            self._emit(conn, lease.task_id, Status.POSTPROCESS_END.value, lease.attempt)
            return self._task(conn, lease.task_id)

    def finish_failure(self, lease: Lease, error: str, now: float, pexit: int = 1) -> None:
        values = _failed(now, error, pexit)
        landed = {k: v for k, v in values.items() if k not in _RELEASED}
        with self._write() as conn:
            if self._fenced_update(conn, lease, values, allowed_from=_sources(Status.POSTPROCESS_END), landed=landed):
                queue_callback(conn, lease.task_id, now)
                count_finished(conn, [lease.task_id])
                self._emit_failure(conn, lease.task_id, lease.attempt, error)
            elif not self.events.sent_by_commit:  # made again after its acknowledgement was lost
                self._emit_failure(conn, lease.task_id, lease.attempt, error)

    def hand_back(self, lease: Lease, now: float, reason: str) -> bool:
        owned = and_(tasks.c.id == lease.task_id, tasks.c.attempt == lease.attempt, tasks.c.status.in_(_RUNNING_VALUES))
        with self._write() as conn:
            result = conn.execute(
                update(tasks)
                .where(owned)
                .values(
                    status=Status.QUEUE.value,
                    progress=None,
                    handed_back=tasks.c.handed_back + 1,
                    **_RELEASED,
                    debugoutput=tasks.c.debugoutput + f"attempt {lease.attempt}: {reason}; queued again\n",
                    **{column: None for column in _ATTEMPT_TIMES},
                )
            )
            if result.rowcount != 1:
                return False
            self._emit(conn, lease.task_id, Status.QUEUE.value, lease.attempt)
        return True

    # -- helpers --------------------------------------------------------------------------
    def _fenced_update(
        self,
        conn: Connection,
        lease: Lease,
        values: dict[str, Any],
        allowed_from: list[str] | None = None,
        landed: dict[str, Any] | None = None,
    ) -> bool:
        """Update the task only while this lease owns it and the move is legal: True.

        False when the row, still this attempt's, already shows all of ``landed`` (columns and
        the values this write sets, its time included, so that no other write can match):
        this very write committed, but its acknowledgement was lost (the connection dropped
        during COMMIT) and the worker made it again (worker/patience.py). The caller then
        does nothing twice (no note appended again, no outputs, callback or event again)."""
        allowed = allowed_from if allowed_from is not None else _RUNNING_VALUES
        owned = and_(tasks.c.id == lease.task_id, tasks.c.attempt == lease.attempt, tasks.c.status.in_(_RUNNING_VALUES))
        result = conn.execute(update(tasks).where(owned, tasks.c.status.in_(allowed)).values(**values))
        if result.rowcount == 1:
            return True
        shown = [tasks.c[column] for column in landed or {} if column not in ("status", "attempt")]
        row = conn.execute(select(tasks.c.status, tasks.c.attempt, *shown).where(tasks.c.id == lease.task_id)).first()
        if landed and row is not None and row.attempt == lease.attempt:
            if all(row._mapping[column] == value for column, value in landed.items()):
                return False
        if row is None or row.attempt != lease.attempt or row.status not in _RUNNING_VALUES:
            raise LeaseLost(f"task {lease.task_id}: attempt {lease.attempt} no longer owns it")
        raise IllegalTransition(f"task {lease.task_id}: {row.status} -> {values.get('status')} is not allowed")

    def _task(self, conn: Connection, task_id: int) -> TaskRecord:
        row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
        return self._with_outputs(conn, [row])[0]

    def _with_outputs(self, conn: Connection, rows: list[Row[Any]] | Any) -> list[TaskRecord]:
        ids = [r.id for r in rows]
        by_task: dict[int, list[OutputRecord]] = {i: [] for i in ids}
        if ids:
            for o in conn.execute(select(outputs).where(outputs.c.task_id.in_(ids)).order_by(outputs.c.name)):
                by_task[o.task_id].append(
                    OutputRecord(o.id, o.task_id, o.name, o.content_type, o.size, o.accesskey, o.created_at,
                                 o.storage_key)
                )
        return [_task_record(r, sorted(by_task[r.id], key=_output_order)) for r in rows]


def _insert_project(
    conn: Connection, name: str, mode: AuthMode, priority: int = 0, concurrency_limit: int | None = None
) -> Project:
    values = {
        "name": name,
        "mode": mode,
        "api_key": secrets.token_hex(16),
        "api_secret": secrets.token_hex(24) if mode == "signature" else None,
        "created_at": _now(),
        "revoked_at": None,
        "webhook_secret": new_webhook_secret(),
        "priority": priority,
        "concurrency_limit": concurrency_limit,
    }
    project_id = conn.execute(insert(projects).values(**values)).inserted_primary_key[0]
    return Project(id=int(project_id), **values)


def _failed(now: float, error: str, pexit: int) -> dict[str, Any]:
    """The columns of a task that ended failed (SPEC.md: task_postprocess_end, pexit != 0)."""
    return {
        "status": Status.POSTPROCESS_END.value,
        "postprocessendtime": now,
        "pexit": pexit,
        "debugerror": error,
        **_RELEASED,
    }


def _output_order(output: OutputRecord) -> tuple[int, str]:
    stem = output.name.split(".", 1)[0]
    return (int(stem) if stem.isdigit() else 1 << 30, output.name)


def _project(row: Row[Any]) -> Project:
    return Project(
        id=row.id,
        name=row.name,
        mode=row.mode,
        api_key=row.api_key,
        api_secret=row.api_secret,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        webhook_secret=row.webhook_secret,
        priority=row.priority,
        concurrency_limit=row.concurrency_limit,
    )



def _task_record(row: Row[Any], outputs_: list[OutputRecord]) -> TaskRecord:
    data = dict(row._mapping)
    data["parameters"] = json.loads(data["parameters"])
    data["progress"] = json.loads(data["progress"]) if data["progress"] else None
    data["status"] = Status(data["status"])
    data["cps"] = Decimal(data["cps"])
    data["kill_requested"] = bool(data["kill_requested"])
    return TaskRecord(outputs=tuple(outputs_), **data)


def _now() -> float:
    return time.time()


def driver_error(exc: DBAPIError) -> str:
    """The driver's error as one line, for the log."""
    original = exc.orig if exc.orig is not None else exc
    text_ = " ".join(str(original).split())
    return f"{type(original).__name__}: {text_}" if text_ else type(original).__name__
