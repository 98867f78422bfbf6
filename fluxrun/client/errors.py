"""Every error the SDK raises, in one tree (catch ``ClientError`` for all of them):

    ClientError
    ├── APIError                the server answered ``result: false``: .code .message .status_code
    │   ├── AuthenticationError     HTTP 401, or codes 98 (sign-in required) / 99 (token problem)
    │   ├── InputError              code 0 naming an input: .field .rule (message "field: rule")
    │   ├── NotFound                code 1: no such task or tool ("There is no task yet.")
    │   ├── ConcurrencyLimited      code 96: the project has as many tasks in flight as it may
    │   ├── InsufficientBalance     code 97 (the hosted service's; fluxrun never sends it)
    │   └── RateLimited             HTTP 429, or 503 while the server drains: .retry_after (s)
    ├── TaskFailed              the task ended with pexit != "0": .task (TaskInfo) .debugerror
    ├── TaskCancelled           the task ended ``task_cancel`` (cancelled or killed): .task
    ├── TaskNotFinished         download() of a task that has not ended yet: .task
    ├── WaitTimeout             wait(timeout=...) ran out before the task ended: .task (last seen)
    ├── TransportError          no usable answer: connection refused, DNS, TLS, timeout, a body
    │                           that is not the JSON the protocol promises, a short download
    └── ConfigurationError      no API key or base URL anywhere (the message says where it looked)

``APIError.status_code`` is the HTTP status of the answer (200 for most: the protocol answers
errors with HTTP 200 and ``result: false``), or None for an input refused before sending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fluxrun.client.models import TaskInfo


class ClientError(Exception):
    """The root of every error fluxrun.client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIError(ClientError):
    """The server refused the request (``{"result": false, "errors": [{code, message}]}``)."""

    def __init__(self, message: str, code: int = 0, status_code: int | None = 200) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status_code

    def __str__(self) -> str:
        return self.message


class AuthenticationError(APIError):
    """The key, secret, nonce or signature was refused (HTTP 401)."""


class InputError(APIError):
    """An input broke a rule; ``field`` names it and ``rule`` says what it must be."""

    def __init__(self, field: str, rule: str, code: int = 0, status_code: int | None = 200) -> None:
        super().__init__(f"{field}: {rule}", code, status_code)
        self.field = field
        self.rule = rule


class NotFound(APIError):
    """No such task (of this project) or tool."""


class ConcurrencyLimited(APIError):
    """Run refused: the project already has its limit of tasks queued or running."""


class InsufficientBalance(APIError):
    """Run refused by the hosted service: the account has no credit left."""


class RateLimited(APIError):
    """The server asks to come back later: the queue is full (429) or it is draining (503).

    ``retry_after`` is the server's Retry-After in seconds, or None when it gave none.
    """

    def __init__(self, message: str, retry_after: float | None, code: int = 0, status_code: int | None = 429) -> None:
        super().__init__(message, code, status_code)
        self.retry_after = retry_after


class TaskFailed(ClientError):
    """The task ended without its images; ``debugerror`` says why, as the server wrote it."""

    def __init__(self, task: TaskInfo) -> None:
        reason = task.debugerror.strip() or "no reason given"
        super().__init__(f"task {task.id} failed (pexit {task.pexit}): {reason}")
        self.task = task
        self.debugerror = task.debugerror


class TaskCancelled(ClientError):
    """The task ended ``task_cancel``: cancelled while queued, or killed."""

    def __init__(self, task: TaskInfo) -> None:
        super().__init__(f"task {task.id} was cancelled")
        self.task = task


class TaskNotFinished(ClientError):
    """The task has not ended yet, so it has no files to download: wait() first."""

    def __init__(self, task: TaskInfo) -> None:
        super().__init__(f"task {task.id} has not ended yet ({task.status}): wait() for it before downloading")
        self.task = task


class WaitTimeout(ClientError):
    """wait() gave up before the task ended; the task itself goes on. ``task``: last seen."""

    def __init__(self, message: str, task: TaskInfo | None = None) -> None:
        super().__init__(message)
        self.task = task


class TransportError(ClientError):
    """No usable answer: the connection failed or timed out, or the body was not the protocol's."""


class ConfigurationError(ClientError):
    """The client cannot start: no API key or base URL was found; the message says where it looked."""
