"""The finisher's thread: in order, bounded, never stopped by one failure, drained on close."""

from __future__ import annotations

import threading

import pytest

from fluxrun.worker.finisher import Finisher


def test_work_runs_in_order_on_another_thread_and_close_runs_all_of_it() -> None:
    done: list[tuple[int, str]] = []
    release = threading.Event()

    def work(index: int) -> None:
        release.wait(10)
        done.append((index, threading.current_thread().name))

    finisher = Finisher(depth=3)
    with finisher:
        for index in range(3):
            finisher.submit(lambda index=index: work(index))
        assert done == []  # submitting does not wait for the work
        release.set()
    assert done == [(0, "worker-finisher"), (1, "worker-finisher"), (2, "worker-finisher")]


def test_submit_waits_while_the_queue_is_full() -> None:
    running, release = threading.Event(), threading.Event()
    third_in = threading.Event()

    def first() -> None:
        running.set()
        release.wait(10)

    with Finisher(depth=1) as finisher:
        finisher.submit(first)
        assert running.wait(10)
        finisher.submit(lambda: None)  # waits in the queue: the one place there is

        def submit_third() -> None:
            finisher.submit(lambda: None)
            third_in.set()

        submitter = threading.Thread(target=submit_third)
        submitter.start()
        assert not third_in.wait(0.3)  # held back until the first is done
        release.set()
        assert third_in.wait(10)
        submitter.join()


def test_a_failing_piece_of_work_does_not_stop_the_next(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug")

    with Finisher() as finisher:
        finisher.submit(broken)
        finisher.submit(lambda: done.append("next"))
    assert done == ["next"]
    assert "finishing a task failed" in caplog.text


def test_the_depth_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="depth: must be at least 1, got 0"):
        Finisher(depth=0)
