from __future__ import annotations

from fluxrun.status import ORDER, Status, is_legal


def test_order_is_the_seeds() -> None:
    assert [s.value for s in ORDER[:7]] == [
        "task_queue", "task_accept", "task_assign", "task_preprocess_start",
        "task_preprocess_end", "task_start", "task_output",
    ]
    assert Status.POSTPROCESS_END.terminal and Status.CANCEL.terminal
    assert not any(s.terminal for s in ORDER[:8])


def test_transitions() -> None:
    assert is_legal(Status.QUEUE, Status.ACCEPT)
    assert not is_legal(Status.QUEUE, Status.START)
    assert is_legal(Status.QUEUE, Status.CANCEL)
    assert is_legal(Status.START, Status.OUTPUT)
    assert not is_legal(Status.OUTPUT, Status.START)
    assert is_legal(Status.OUTPUT, Status.QUEUE)  # lease expired
    assert not is_legal(Status.QUEUE, Status.QUEUE)
    for terminal in (Status.POSTPROCESS_END, Status.CANCEL):
        assert not any(is_legal(terminal, s) for s in Status)
    assert all(is_legal(s, Status.CANCEL) for s in Status if not s.terminal)
