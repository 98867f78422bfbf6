"""What the benchmarks share: percentiles, and a PostgreSQL schema of their own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values`` (pct 50: the median)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


@contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    """The URL of a new PostgreSQL schema of the benchmark's own (so it never touches another's
    tables), dropped with everything in it afterwards."""
    from sqlalchemy import create_engine, text

    if base.startswith(("postgres://", "postgresql://")):
        base = "postgresql+psycopg://" + base.split("://", 1)[1]
    schema = f"fluxrun_bench_{secrets.token_hex(4)}"
    separator = "&" if "?" in base else "?"
    engine = create_engine(base)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
