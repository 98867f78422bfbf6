"""Task statuses as data: the seeds' order and the one rule for legal transitions."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    # In the order a successful task walks them (SPEC.md section 3).
    QUEUE = "task_queue"
    ACCEPT = "task_accept"
    ASSIGN = "task_assign"
    PREPROCESS_START = "task_preprocess_start"
    PREPROCESS_END = "task_preprocess_end"
    START = "task_start"
    OUTPUT = "task_output"
    END = "task_end"  # generation finished, post-processing (encode, store) under way
    POSTPROCESS_END = "task_postprocess_end"  # terminal: success, or failure with pexit != "0"
    CANCEL = "task_cancel"  # terminal: cancelled while queued, or killed

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def running(self) -> bool:
        """Held by a worker under a lease."""
        return not self.terminal and self is not Status.QUEUE


ORDER: tuple[Status, ...] = tuple(Status)
TERMINAL = frozenset({Status.POSTPROCESS_END, Status.CANCEL})
RUNNING = frozenset(s for s in Status if s.running)


def is_legal(current: Status, new: Status) -> bool:
    """Whether ``current -> new`` is allowed.

    - nothing leaves a terminal status;
    - any live task may be cancelled or end (``task_postprocess_end`` is also how failures end);
    - a running task may go back to the queue (its lease expired) or move forward;
    - a queued task may only be accepted (claimed), cancelled or ended.
    """
    if current.terminal:
        return False
    if new.terminal:
        return True
    if new is Status.QUEUE:
        return current.running
    if current is Status.QUEUE:
        return new is Status.ACCEPT
    return ORDER.index(new) > ORDER.index(current)
