"""The tables, in SQLAlchemy Core. Alembic migrations (``migrations/``) create them;
this module is what queries are written against. Times are unix seconds as floats.

A partial index holds only what its WHERE says; both databases use it only when a query
carries the same condition with the same constant (a bound parameter does not do: SQLite
cannot prove it, and a generic PostgreSQL plan cannot either), so queries that mean to use
the queue's indexes write ``QUEUED_SQL`` / ``RUNNING_SQL`` literally (fluxrun.store.sql
``_QUEUED`` / ``_RUNNING``)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# The conditions of the partial indexes, as SQL text (see the module's docstring): queued,
# and held by a worker (every status between the two, in the seeds' order).
QUEUED_SQL = "status = 'task_queue'"
RUNNING_SQL = (
    "status IN ('task_accept', 'task_assign', 'task_preprocess_start', 'task_preprocess_end', 'task_start', "
    "'task_output', 'task_end')"
)


projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("mode", String(16), nullable=False),  # "signature" | "apikey"
    Column("api_key", String(64), nullable=False, unique=True),
    # The server must know the secret to check HMAC(key, secret + nonce); see SECURITY notes.
    Column("api_secret", String(128), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    # Signs this project's callbacks (Standard Webhooks: "whsec_" + base64 of random bytes).
    Column("webhook_secret", String(128), nullable=False),
    # Queue policy (README "Queueing"): a higher priority's queued tasks are claimed first;
    # at most concurrency_limit tasks queued or running (NULL: FLUXRUN_PROJECT_CONCURRENCY, 0: no limit).
    Column("priority", Integer, nullable=False, default=0, server_default="0"),
    Column("concurrency_limit", Integer, nullable=True),
)

nonces = Table(
    "nonces",
    metadata,
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("nonce", String(128), nullable=False),
    Column("seen_at", Float, nullable=False),
    # Nonces that read as a unix time can be forgotten once outside the window; random ones
    # are kept (NULL), since forgetting them would let a captured request be replayed.
    Column("forget_after", Float, nullable=True),
    PrimaryKeyConstraint("project_id", "nonce"),
    Index("ix_nonces_forget_after", "forget_after"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("token", String(64), nullable=False, unique=True),  # the socketaccesstoken
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("tool", String(200), nullable=False),  # "owner/project"
    Column("parameters", Text, nullable=False),  # JSON of the validated inputs
    Column("callback_url", Text, nullable=False, default=""),
    Column("status", String(32), nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("debugoutput", Text, nullable=False, default=""),
    Column("debugerror", Text, nullable=False, default=""),
    Column("pexit", Integer, nullable=True),
    Column("progress", Text, nullable=True),  # JSON of the latest task_output progress
    Column("output_key", String(64), nullable=False),  # unguessable part of the output URLs
    Column("cps", String(32), nullable=False),
    Column("elapsed", Float, nullable=True),  # generation seconds, what is billed
    Column("createtime", Float, nullable=False),
    Column("accepttime", Float, nullable=True),
    Column("assigntime", Float, nullable=True),
    Column("preprocessstarttime", Float, nullable=True),
    Column("preprocessendtime", Float, nullable=True),
    Column("starttime", Float, nullable=True),
    Column("endtime", Float, nullable=True),
    Column("postprocessstarttime", Float, nullable=True),
    Column("postprocessendtime", Float, nullable=True),
    Column("canceltime", Float, nullable=True),
    Column("kill_requested", Boolean, nullable=False, default=False),
    # Attempts a stopping worker handed back at once (TaskStore.hand_back): they are not
    # failures, so they do not count against max_attempts.
    Column("handed_back", Integer, nullable=False, default=0, server_default="0"),
    # The queue's indexes hold queued (or running) tasks only, so they stay as small as the
    # queue however long the history grows. ix_tasks_queued: a project's oldest queued task
    # (one seek), its queued count (one range), the queue's length (one scan); by tool: a
    # project's oldest queued task of a tool (one seek); ix_tasks_running: a project's tasks
    # in workers' hands (the claim's fair share, the concurrency limit).
    Index("ix_tasks_queued", "project_id", "id", sqlite_where=text(QUEUED_SQL), postgresql_where=text(QUEUED_SQL)),
    Index("ix_tasks_queued_tool", "project_id", "tool", "id",
          sqlite_where=text(QUEUED_SQL), postgresql_where=text(QUEUED_SQL)),
    Index("ix_tasks_running", "project_id", sqlite_where=text(RUNNING_SQL), postgresql_where=text(RUNNING_SQL)),
    Index("ix_tasks_project", "project_id", "id"),
    Index("ix_tasks_lease", "status", "lease_expires_at"),
)

outputs = Table(
    "outputs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("content_type", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("accesskey", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    # Where its file is stored: each attempt of a task has a key of its own (storage.base.attempt_key).
    # NULL: the task's output_key (the rows of releases before 0007).
    Column("storage_key", String(64), nullable=True),
    UniqueConstraint("task_id", "name"),
)

# One row per callback a task owes (SPEC.md section 6): inserted in the transaction that
# ends the task, so a callback is never lost, and claimed for one try at a time.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("webhook_id", String(64), nullable=False, unique=True),  # the same on every try
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False, unique=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | failed | gone
    Column("attempts", Integer, nullable=False),  # tries started (a claim starts one)
    Column("next_attempt_at", Float, nullable=False),
    Column("claimed_by", String(200), nullable=True),
    Column("claimed_until", Float, nullable=True),  # a try in flight; due again after this
    Column("last_status", Integer, nullable=True),  # HTTP status of the last answer
    Column("last_error", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_attempt_at", Float, nullable=True),
    Column("delivered_at", Float, nullable=True),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
)

# The worker registry: one row per worker process, registered at its start, refreshed by its
# presence heartbeat, marked stopped when it exits cleanly. A worker not seen by
# ``alive_until`` (a few heartbeats) is gone: killed, crashed, or cut off from the database.
workers = Table(
    "workers",
    metadata,
    Column("id", String(200), primary_key=True),  # host/pid (worker/loop.py default_worker_id)
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("tools", Text, nullable=False),  # JSON list of the tool slugs it serves
    Column("models", String(16), nullable=False),  # tiny | real
    Column("device", String(32), nullable=False),  # cpu | cuda | cuda:N | mps
    Column("state", String(16), nullable=False),  # loading | idle | busy | stopping | stopped
    Column("task_id", Integer, nullable=True),  # the task in hand (busy, or stopping with one)
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("alive_until", Float, nullable=False),
    # torch.cuda's view of the worker's GPU, in bytes; NULL off CUDA.
    Column("gpu_allocated", BigInteger, nullable=True),
    Column("gpu_reserved", BigInteger, nullable=True),
    Column("gpu_total", BigInteger, nullable=True),
)

# One-time codes of the playground's login link (fluxrun/logincode.py): only a code's SHA-256
# is kept, so reading the database does not give a usable code. A code works once
# (``used_at``), until ``expires_at``; rows are forgotten when a new code is issued.
login_codes = Table(
    "login_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),  # hex SHA-256 of the code
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)

# The duration histogram of finished tasks (metrics: fluxrun_task_duration_seconds), kept as
# tasks end instead of computed from every finished task at each scrape: one row per tool,
# outcome and bucket, counted in the transaction that ends a task (fluxrun.store.stats
# ``count_finished``). Its size is tools x 3 outcomes x 12 buckets, whatever the history.
# ``bucket`` is the index of the first bound of base.DURATION_BUCKETS the duration is within
# (len(DURATION_BUCKETS): above all): changing the bounds needs a migration that rebuilds it.
task_durations = Table(
    "task_durations",
    metadata,
    Column("tool", String(200), nullable=False),
    Column("outcome", String(16), nullable=False),  # succeeded | failed | cancelled
    Column("bucket", Integer, nullable=False),
    Column("finished", BigInteger, nullable=False),  # tasks in this bucket
    Column("seconds", Float, nullable=False),  # their durations added up
    PrimaryKeyConstraint("tool", "outcome", "bucket"),
)
