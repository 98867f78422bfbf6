"""PostgreSQL: the store for many API processes and workers on many machines.

Claims lock the chosen row with FOR UPDATE SKIP LOCKED (rendered by the shared Core
queries), so concurrent workers never wait on each other's rows. Events travel by
LISTEN/NOTIFY (events_postgres.py).
"""

from __future__ import annotations

from sqlalchemy import create_engine

from fluxrun.store.events_postgres import PostgresEventBus
from fluxrun.store.sql import SqlTaskStore


class PostgresTaskStore(SqlTaskStore):
    def __init__(self, url: str) -> None:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        super().__init__(engine, PostgresEventBus(url, engine))
