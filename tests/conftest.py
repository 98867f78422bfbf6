"""Fixtures shared by every tier: stores on both databases, a data directory."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from fluxrun.store.base import TaskStore


BACKENDS = ["sqlite", "postgres"]


def postgres_url() -> str | None:
    url = os.environ.get("FLUXRUN_TEST_DATABASE_URL")
    if not url:
        return None
    if url.startswith(("postgres://", "postgresql://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


class PostgresSchema:
    """A fresh schema per test, so tests never see each other's rows."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.name = f"fluxrun_test_{secrets.token_hex(6)}"
        self.url = _with_search_path(base_url, self.name)

    @classmethod
    def created_or_skip(cls) -> PostgresSchema:
        """A new schema on the tests' PostgreSQL, created; the test is skipped without one."""
        base = postgres_url()
        if base is None:
            pytest.skip("FLUXRUN_TEST_DATABASE_URL is not set (.ci/run sets it)")
        schema = cls(base)
        schema.create()
        return schema

    def create(self) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.base_url)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))
        engine.dispose()

    def drop(self) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.base_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        engine.dispose()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated-to-nothing database URL of the kind the test is parametrized with."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fluxrun.db'}"
        return
    schema = PostgresSchema.created_or_skip()
    try:
        yield schema.url
    finally:
        schema.drop()


@pytest.fixture
def store(database_url: str) -> Iterator[TaskStore]:
    from fluxrun.store import open_store

    opened = open_store(database_url)
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture
def postgres_schema() -> Iterator[PostgresSchema]:
    """A schema of its own on the tests' PostgreSQL, dropped after the test; skips without one."""
    created = PostgresSchema.created_or_skip()
    yield created
    created.drop()
