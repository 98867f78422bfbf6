"""The queue's policy in SQL: which queued task a claim takes, and what a Run may add.

A claim takes the oldest queued task (FIFO) of the project that comes first by
1. its priority, higher first (``projects.priority``): it dominates everything below;
2. its tasks running right now, fewer first (a fair share: one project's burst of a
   thousand tasks does not starve another project's single task);
3. the age of its oldest queued task, older first.
A Run is refused when its project already has its limit of tasks queued or running
(``ConcurrencyLimitError``, code 96), or when the whole queue is at its length limit
(``RateLimitError``, HTTP 429 with Retry-After).

Every statement here reads the queue's partial indexes (schema.py), whose conditions it spells
as constants; they are built once (per tool list) and reused, as a claim runs on every poll.
Functions take the connection of the caller's write transaction (fluxrun.store.sql).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, bindparam, func, literal_column, select

from fluxrun.errors import ConcurrencyLimitError, RateLimitError
from fluxrun.status import ORDER, Status
from fluxrun.store.schema import projects, tasks

# What a client refused for a full queue is told to wait before trying again.
QUEUE_FULL_RETRY_AFTER_SECONDS = 30

# "queued" and "running" as the partial indexes say them: constants, not bound parameters,
# the running statuses in the seeds' order (schema.py QUEUED_SQL / RUNNING_SQL say why).
QUEUED: ColumnElement[bool] = tasks.c.status == literal_column(f"'{Status.QUEUE.value}'")
RUNNING: ColumnElement[bool] = tasks.c.status.in_([literal_column(f"'{s.value}'") for s in ORDER if s.running])

_LOCK_IF_QUEUED = (
    select(tasks.c.id).where(tasks.c.id == bindparam("task_id"), QUEUED).with_for_update(skip_locked=True)
)
_OWN_LIMIT = select(projects.c.concurrency_limit).where(projects.c.id == bindparam("project_id"))
# FOR NO KEY UPDATE: Runs of one project wait for each other, while the key-share locks that
# inserts referencing the project take (its nonces, its callbacks' deliveries) do not wait.
_OWN_LIMIT_LOCKED = _OWN_LIMIT.with_for_update(key_share=True)
_IN_FLIGHT = select(
    select(func.count()).where(QUEUED, tasks.c.project_id == bindparam("project_id")).scalar_subquery()
    + select(func.count()).where(RUNNING, tasks.c.project_id == bindparam("project_id")).scalar_subquery()
)
# Counting stops at the limit: a Run reads at most one full queue's worth of index entries.
_QUEUE_LENGTH = select(func.count()).select_from(
    select(literal_column("1")).where(QUEUED).limit(bindparam("queue_limit")).subquery()
)


def next_task(conn: Connection, tools: tuple[str, ...] | None) -> int | None:
    """The queued task a claim takes, locked (PostgreSQL: FOR UPDATE SKIP LOCKED), or None.

    The projects' order is read without locks; then each project's oldest queued task is
    locked in that order, passing over one another claimer holds: two workers claiming at
    the same instant take the heads of the first two projects, as they would one after the
    other (the first claim makes its project one task busier). SQLite runs claims one at a
    time (BEGIN IMMEDIATE), so there the first head is always free. Only when every head is
    held (as many claimers at once as projects with work) does a claim take the next free
    task of the first project that has one.
    """
    order = claim_order(conn, tools)
    for _, head in order:
        if conn.execute(_LOCK_IF_QUEUED, {"task_id": head}).scalar() is not None:
            return head
    for project_id, _ in order:
        found = conn.execute(_next_of_project(tools), {"project_id": project_id}).scalar()
        if found is not None:
            return int(found)
    return None


def claim_order(conn: Connection, tools: tuple[str, ...] | None) -> list[tuple[int, int]]:
    """(project, its oldest queued task of ``tools``) for each project that has one, best first.

    One statement over the projects (few: one per API key) with one index seek per project
    and tool for the oldest queued task (the minimum over the tools is taken here: a seek
    per tool is exact, where ``tool IN (...)`` would read every queued task of the project)
    and the running counts from the index of running tasks (one per busy worker). Its cost
    grows with the number of projects and tools, not with the queue or the history.
    """
    if tools is not None and not tools:
        return []
    ranked: list[tuple[int, int, int, int]] = []
    for project_id, priority, running, *heads in conn.execute(_order_query(tools)):
        present = [head for head in heads if head is not None]
        if present:
            ranked.append((-priority, running, min(present), project_id))
    ranked.sort()
    return [(project_id, head) for _, _, head, project_id in ranked]


@lru_cache(maxsize=64)
def _order_query(tools: tuple[str, ...] | None) -> Select[Any]:
    running = select(tasks.c.project_id, func.count().label("running")).where(RUNNING).group_by(tasks.c.project_id)
    running_by_project = running.subquery()

    def oldest(tool: str | None) -> Any:
        query = select(tasks.c.id).where(QUEUED, tasks.c.project_id == projects.c.id)
        if tool is not None:
            query = query.where(tasks.c.tool == tool)
        return query.order_by(tasks.c.id).limit(1).correlate(projects).scalar_subquery()

    heads = [oldest(tool) for tool in tools] if tools is not None else [oldest(None)]
    return select(
        projects.c.id, projects.c.priority, func.coalesce(running_by_project.c.running, 0), *heads
    ).select_from(projects.outerjoin(running_by_project, running_by_project.c.project_id == projects.c.id))


@lru_cache(maxsize=64)
def _next_of_project(tools: tuple[str, ...] | None) -> Select[Any]:
    query = select(tasks.c.id).where(QUEUED, tasks.c.project_id == bindparam("project_id"))
    if tools is not None:
        query = query.where(tasks.c.tool.in_(tools))
    return query.order_by(tasks.c.id).limit(1).with_for_update(skip_locked=True)


def check_limits(conn: Connection, project_id: int, default_limit: int, queue_limit: int) -> None:
    """Raise if one more task of this project would break its concurrency limit or the queue's.

    ``default_limit`` is FLUXRUN_PROJECT_CONCURRENCY (the project's own limit wins when it has
    one), ``queue_limit`` FLUXRUN_QUEUE_LIMIT; 0 is no limit.

    Runs in create_task's write transaction, before its insert. On SQLite that transaction
    holds the database's write lock from its BEGIN IMMEDIATE, so nothing changes the counts
    before the insert commits. On PostgreSQL the project's row is locked (FOR NO KEY UPDATE) before
    its tasks are counted: Runs of one project count and insert one at a time, and each count
    (a fresh snapshot per statement under READ COMMITTED) sees the inserts committed before
    it, so concurrent Runs never pass the limit together. The queue limit takes no lock, so
    that Runs of different projects never wait on one another: on PostgreSQL, Runs racing for
    the last places can overshoot it by the number of Runs in flight at that instant.
    """
    params = {"project_id": project_id}
    # Lock at once when the default is on; without a default and an override, no lock at all.
    locked = default_limit > 0
    override = conn.execute(_OWN_LIMIT_LOCKED if locked else _OWN_LIMIT, params).scalar()
    limit = default_limit if override is None else override
    if limit > 0 and not locked:
        override = conn.execute(_OWN_LIMIT_LOCKED, params).scalar()
        limit = default_limit if override is None else override
    if limit > 0:
        in_flight = int(conn.execute(_IN_FLIGHT, params).scalar_one())
        if in_flight >= limit:
            raise ConcurrencyLimitError.reached(limit, in_flight)
    if queue_limit > 0:
        queued = int(conn.execute(_QUEUE_LENGTH, {"queue_limit": queue_limit}).scalar_one())
        if queued >= queue_limit:
            raise RateLimitError.queue_full(queued, queue_limit, QUEUE_FULL_RETRY_AFTER_SECONDS)
