"""What the benchmarks share: percentiles, and a PostgreSQL schema of their own."""

from __future__ import annotations

import secrets
from urllib.parse import quote


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values`` (pct 50: the median)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def postgres_schema_url(base: str) -> tuple[str, str, str]:
    """(server URL, the URL of a new schema of its own, the schema's name), so a benchmark
    never touches another's tables; the caller creates and drops the schema."""
    if base.startswith(("postgres://", "postgresql://")):
        base = "postgresql+psycopg://" + base.split("://", 1)[1]
    schema = f"fluxrun_bench_{secrets.token_hex(4)}"
    separator = "&" if "?" in base else "?"
    return base, f"{base}{separator}options={quote(f'-csearch_path={schema}')}", schema
