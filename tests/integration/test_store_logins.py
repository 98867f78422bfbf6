"""The playground's one-time login codes, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from fluxrun.store.base import LoginRedemption, TaskStore
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

NOW = 1_800_000_000.0
HASH = "ab" * 32


def test_a_code_works_once_before_it_expires(store: TaskStore) -> None:
    project = store.create_project("p", "signature")
    store.add_login_code(project.id, HASH, NOW, NOW + 900)
    assert store.redeem_login_code(HASH, NOW + 10) == LoginRedemption(project.id, None)
    assert store.redeem_login_code(HASH, NOW + 11) == LoginRedemption(None, "used")
    assert store.redeem_login_code("cd" * 32, NOW) == LoginRedemption(None, "unknown")


def test_an_expired_code_is_refused_and_forgotten_when_the_next_is_issued(store: TaskStore) -> None:
    project = store.create_project("p", "signature")
    store.add_login_code(project.id, HASH, NOW, NOW + 900)
    assert store.redeem_login_code(HASH, NOW + 900) == LoginRedemption(project.id, None)  # the last second counts
    store.add_login_code(project.id, "01" * 32, NOW, NOW + 900)
    assert store.redeem_login_code("01" * 32, NOW + 901) == LoginRedemption(None, "expired")
    store.add_login_code(project.id, "02" * 32, NOW + 1000, NOW + 1900)
    # Issuing a code forgets the used and the expired ones: they read as unknown now.
    assert store.redeem_login_code(HASH, NOW + 1000).problem == "unknown"
    assert store.redeem_login_code("01" * 32, NOW + 1000).problem == "unknown"
    assert store.redeem_login_code("02" * 32, NOW + 1000) == LoginRedemption(project.id, None)


def test_of_simultaneous_redemptions_exactly_one_succeeds(store: TaskStore) -> None:
    project = store.create_project("p", "signature")
    store.add_login_code(project.id, HASH, NOW, NOW + 900)
    results: list[LoginRedemption] = []
    start = threading.Barrier(6)

    def redeem() -> None:
        start.wait()
        results.append(store.redeem_login_code(HASH, NOW + 1))

    threads = [threading.Thread(target=redeem) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.problem or "ok" for r in results) == ["ok"] + ["used"] * 5
    assert [r.project_id for r in results if r.problem is None] == [project.id]
