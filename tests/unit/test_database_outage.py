"""A database outage as one process sees it: one log line when it goes, one when it is back,
the reaper's grace, and a worker's write that waits for it."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from fluxrun.errors import DatabaseUnavailable, TaskStopped
from fluxrun.store.availability import LONG_WAIT_SECONDS, Availability
from fluxrun.worker.patience import until_written


def test_an_outage_is_said_once_however_many_calls_fail_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    availability = Availability()
    assert availability.settled_for() == float("inf")  # never away: the reaper need not wait
    with caplog.at_level(logging.INFO, logger="fluxrun.store"):
        for _ in range(50):
            availability.failed("OperationalError: connection refused")
        assert availability.settled_for() == 0.0
        for _ in range(5):
            availability.reached(0.001)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("the database is unreachable (OperationalError: connection refused)")
    assert lines[1].startswith("the database is reachable again, after ")
    assert 0.0 <= availability.settled_for() < 1.0


def test_a_long_wait_for_a_lock_counts_as_an_outage_for_the_reaper(caplog: pytest.LogCaptureFixture) -> None:
    availability = Availability()
    availability.reached(0.01)
    assert availability.settled_for() == float("inf")
    with caplog.at_level(logging.INFO, logger="fluxrun.store"):
        availability.reached(LONG_WAIT_SECONDS + 1)
        availability.reached(LONG_WAIT_SECONDS + 1)  # the other threads the same lock held back
    assert availability.settled_for() < 1.0
    assert [r.getMessage() for r in caplog.records] == [
        f"waited {LONG_WAIT_SECONDS + 1:.1f} s for the database (a lock held by another process?)"]


def test_a_write_waits_for_the_database_then_lands() -> None:
    tries: list[float] = []

    def write() -> str:
        tries.append(time.monotonic())
        if len(tries) < 4:
            raise DatabaseUnavailable.unreachable("connection refused")
        return "written"

    assert until_written(write, threading.Event()) == "written"
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert len(tries) == 4 and gaps == sorted(gaps)  # backing off


def test_a_write_stops_waiting_when_its_task_is_stopped() -> None:
    stopped = threading.Event()
    threading.Timer(0.3, stopped.set).start()

    def write() -> None:
        raise DatabaseUnavailable.locked("database is locked")

    with pytest.raises(TaskStopped):
        until_written(write, stopped)


def test_other_errors_are_not_waited_for() -> None:
    def write() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        until_written(write, threading.Event())


def test_the_error_is_section_7s_with_a_retry_after() -> None:
    error = DatabaseUnavailable.unreachable("OperationalError: connection to server at 10.0.0.5 failed")
    assert error.http_status == 503 and error.headers == {"Retry-After": "5"}
    assert error.to_wire() == {"result": False, "errors": [{"code": 0, "message": (
        "The server cannot reach its database right now; try again in 5 seconds.")}]}
    assert "10.0.0.5" not in error.message and "10.0.0.5" in error.cause  # the host is for the log only
