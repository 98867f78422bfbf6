"""Refused requests take the same time, whatever was wrong with them.

The authentication dependency is timed in-process (no network between, so far finer than
an attacker sees) on a real SQLite store, every kind of refusal interleaved in a shuffled
order each round so that drift and bursts of noise on a shared machine fall on all alike.

The statistic is how separable two kinds are: 0 when a time drawn from one is as likely to
be above as below a time drawn from the other, 1 when every time of one is above every time
of the other (|2·AUC − 1|, from the ranks). A control shows the statistic can see a real
difference at this sample size: a request that is let in does one more database write
(the nonce), and it stands out.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.requests import Request

from fluxrun.api.security import authenticate
from fluxrun.api.state import AppState
from fluxrun.auth import sign
from fluxrun.config import Settings
from fluxrun.errors import AuthError
from fluxrun.storage.local import LocalStorage
from fluxrun.store import open_store

ROUNDS = 300
WARM_UP_ROUNDS = 30


@pytest.fixture
def state(tmp_path: Path) -> Iterator[AppState]:
    settings = Settings(data_dir=tmp_path)
    store = open_store(settings.effective_database_url)
    store.migrate()
    yield AppState(settings=settings, store=store, storage=LocalStorage(settings.outputs_dir))
    store.close()


def separability(xs: list[int], ys: list[int]) -> float:
    """|2·P(X > Y) + P(X = Y) − 1|: 0 for interchangeable samples, 1 for disjoint ones."""
    ranked = sorted([(x, 0) for x in xs] + [(y, 1) for y in ys])
    ranks: list[float] = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):  # ties share their mean rank
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rank_sum_x = sum(rank for rank, (_, group) in zip(ranks, ranked) if group == 0)
    u = rank_sum_x - len(xs) * (len(xs) + 1) / 2
    return abs(2 * u / (len(xs) * len(ys)) - 1)


def test_refusals_are_not_told_apart_by_their_timing(state: AppState) -> None:
    store = state.store
    a = store.create_project("a", "signature")
    b = store.create_project("b", "signature")
    revoked = store.create_project("gone", "signature")
    store.revoke_project(revoked.api_key)
    for i in range(50):  # a table of some size, like a server's
        store.create_project(f"p{i}", "signature")
    counter = iter(range(10**9))

    def nonce() -> str:
        return f"{time.time_ns() // 1000}{next(counter)}"

    def signed(key: str, signer_key: str, secret: str, tamper: Callable[[str], str] = lambda s: s) -> Request:
        n = nonce()
        headers = {"x-api-key": key, "x-nonce": n, "x-signature": tamper(sign(signer_key, secret, n))}
        return Request({"type": "http", "method": "POST", "path": "/v1/Task/List",
                        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})

    def flip(text: str, at: int) -> str:
        return text[:at] + ("1" if text[at] == "0" else "0") + text[at + 1:]

    kinds: dict[str, Callable[[], Request]] = {
        "unknown key": lambda: signed("f" * 32, "f" * 32, a.api_secret),
        "revoked key": lambda: signed(revoked.api_key, revoked.api_key, revoked.api_secret),
        "wrong signature": lambda: signed(a.api_key, a.api_key, "guess"),
        "first character wrong": lambda: signed(a.api_key, a.api_key, a.api_secret, lambda s: flip(s, 0)),
        "last character wrong": lambda: signed(a.api_key, a.api_key, a.api_secret, lambda s: flip(s, 63)),
        "B's signature on A's key": lambda: signed(a.api_key, b.api_key, b.api_secret),
        "let in (control)": lambda: signed(a.api_key, a.api_key, a.api_secret),
    }
    times: dict[str, list[int]] = {kind: [] for kind in kinds}
    gc.collect()
    gc.disable()
    try:
        for round_ in range(WARM_UP_ROUNDS + ROUNDS):
            for kind in random.sample(list(kinds), len(kinds)):
                request = kinds[kind]()
                start = time.perf_counter_ns()
                try:
                    authenticate(request, state)
                    let_in = True
                except AuthError:
                    let_in = False
                elapsed = time.perf_counter_ns() - start
                assert let_in == (kind == "let in (control)"), kind
                if round_ >= WARM_UP_ROUNDS:
                    times[kind].append(elapsed)
    finally:
        gc.enable()

    medians = {kind: statistics.median(values) for kind, values in times.items()}
    report = {kind: f"median {medians[kind] / 1000:.0f} µs, separability from a wrong signature "
                    f"{separability(values, times['wrong signature']):.2f}" for kind, values in times.items()}
    reference = times["wrong signature"]
    # A known key: how much of the signature was right, whose it was, or that the key was
    # revoked, cannot be told apart: the same lookup, one HMAC, one constant-time compare.
    for kind in ("revoked key", "first character wrong", "last character wrong", "B's signature on A's key"):
        assert separability(times[kind], reference) < 0.3, report
    # An unknown key: the same work but for the database finding no row, a few µs here
    # (SECURITY.md, "Timing"); well under a quarter of the time, whatever the noise.
    assert abs(medians["unknown key"] - medians["wrong signature"]) < 0.25 * medians["wrong signature"], report
    # The control: one more write stands out, so the statistic would see a difference.
    assert separability(times["let in (control)"], reference) > 0.6, report
    assert medians["let in (control)"] > 1.5 * medians["wrong signature"], report
