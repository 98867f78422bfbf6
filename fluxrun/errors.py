"""One documented error tree.

Every error that can reach a client knows its wire code (SPEC.md section 7), its HTTP
status and its message, so routes never format errors by hand:

    FluxrunError                      code 0, HTTP 200
    ├── ValidationError               code 0: names the field and the rule
    │   └── BodyTooLarge              code 0, HTTP 413: the body is over FLUXRUN_MAX_BODY_BYTES
    ├── NotFoundError                 code 1
    ├── ConcurrencyLimitError         code 96: a project's tasks in flight are at its limit
    ├── AuthError                     code 99, HTTP 401
    │   └── SignInRequiredError       code 98, HTTP 401
    ├── RateLimitError                code 0, HTTP 429, with a Retry-After header when it
    │                                 knows when to come back (the queue is full, too many
    │                                 requests from one API key)
    ├── ShuttingDown                  code 0, HTTP 503 + Retry-After: this API process is
    │                                 draining (SIGTERM); a load balancer retries elsewhere
    └── DatabaseUnavailable           code 0, HTTP 503 + Retry-After: the database cannot be
                                      reached (or stays locked) for now; the store raises it,
                                      workers wait for the database and go on

An error may carry HTTP headers (``headers``); the API's error handler sends them with the
error's body, so no route sets a header by hand.

Errors that never reach the wire as such (they end a task or a worker's claim):

    TaskStopped        raised from a backend's step callback when the task was killed
    LeaseLost          a worker's lease was taken over; it must not write its result
    IllegalTransition  a status change the state machine forbids
    CallbackRefused    a callback URL the SSRF guard will not call (fluxrun.netguard)
    TaskFailed         ends one task; its message is the task's debugerror, word for word
    ├── BackendUnavailable  a backend cannot be loaded here (no weights, no token, offline)
    ├── OutOfMemory         the GPU ran out of memory on this task; the worker freed it, goes on
    ├── ImageWithheld       the safety classifier flagged a generated image: nothing is stored,
    │                       the message says which image, its score and the threshold
    ├── StorageUnavailable  the output storage cannot be reached or written (no such bucket,
    │                       access denied, endpoint unreachable); names the setting and the cause
    └── PartnerError        the partner API (the model maker's) could not make the image:
        │                   no credits, a request it rejected, an error on its side, no
        │                   answer before the task's deadline
        └── GenerationRefused  the partner's moderation refused the prompt or the image
"""

from __future__ import annotations

# A process's exit status for a configuration it cannot run with (sysexits' EX_CONFIG): the
# supervisor does not restart a worker that exits with it, as the next start would fail alike.
EXIT_CONFIG = 78


class FluxrunError(Exception):
    code: int = 0
    http_status: int = 200

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}  # HTTP headers the answer carries besides the body

    def to_wire(self) -> dict[str, object]:
        return {"result": False, "errors": [{"code": self.code, "message": self.message}]}


class ValidationError(FluxrunError):
    """A request input broke a rule; ``field`` names the input."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class BodyTooLarge(ValidationError):
    """A request body over the size limit, refused before it is read whole.

    HTTP 413 rather than the 200 of other validation errors: it is what a proxy in front of
    the service answers for the same body, and a client that sent megabytes to an API whose
    requests are a few hundred bytes has a bug it should hear about. The body is section 7's.
    """

    http_status = 413

    def __init__(self, limit: int, size: int | None = None) -> None:
        got = f" (got {size})" if size is not None else ""
        super().__init__("body", f"must be at most {limit} bytes{got}")


class NotFoundError(FluxrunError):
    code = 1


class ConcurrencyLimitError(FluxrunError):
    code = 96

    @classmethod
    def reached(cls, limit: int, in_flight: int) -> ConcurrencyLimitError:
        """A Run refused because its project already has ``limit`` tasks queued or running."""
        return cls(
            f"Concurrency limit reached: this project has {in_flight} tasks queued or running and may have at "
            f"most {limit} at once. Run again when one of them has ended."
        )


class AuthError(FluxrunError):
    code = 99
    http_status = 401


class SignInRequiredError(AuthError):
    code = 98


class RateLimitError(FluxrunError):
    http_status = 429

    def __init__(self, message: str, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        if retry_after_seconds is not None:
            self.headers["Retry-After"] = str(retry_after_seconds)

    @classmethod
    def queue_full(cls, queued: int, limit: int, retry_after_seconds: int) -> RateLimitError:
        """A Run refused because the server's queue holds ``limit`` tasks already."""
        return cls(
            f"The queue is full: {queued} tasks are waiting for a worker and the server accepts at most {limit}. "
            f"Try again in {retry_after_seconds} seconds.",
            retry_after_seconds,
        )


    @classmethod
    def too_many_requests(cls, per_second: float, burst: int, retry_after_seconds: int,
                          by_key: bool) -> RateLimitError:
        """A request over the per-key (or, without a key, per-address) rate."""
        who = "this API key" if by_key else "this address (no x-api-key)"
        return cls(
            f"Too many requests: {who} may send {per_second:g} request{'s' if per_second != 1 else ''} a second, "
            f"{burst} at once. "
            f"Try again in {retry_after_seconds} second{'s' if retry_after_seconds != 1 else ''}.",
            retry_after_seconds,
        )


class ShuttingDown(FluxrunError):
    """This API process stopped taking tasks because it is shutting down."""

    http_status = 503

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.headers["Retry-After"] = str(retry_after_seconds)


class DatabaseUnavailable(FluxrunError):
    """The store could not reach its database: down, cut off, or locked beyond the busy timeout.

    Raised by the store in place of the driver's error, so that every caller can tell "try
    again later" from a bug. The message is for clients (no host names, no driver text);
    ``cause`` is the driver's own line, for the server's log.
    """

    http_status = 503
    RETRY_AFTER_SECONDS = 5

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.headers["Retry-After"] = str(self.RETRY_AFTER_SECONDS)

    @classmethod
    def unreachable(cls, cause: str) -> DatabaseUnavailable:
        return cls(f"The server cannot reach its database right now; try again in {cls.RETRY_AFTER_SECONDS} "
                   "seconds.", cause)

    @classmethod
    def locked(cls, cause: str) -> DatabaseUnavailable:
        return cls(f"The server's database is locked by another process right now; try again in "
                   f"{cls.RETRY_AFTER_SECONDS} seconds.", cause)


class TaskStopped(Exception):
    """The task was killed (or its lease lost) while generating; stop now."""


class LeaseLost(Exception):
    """This worker no longer owns the task: another attempt took it, or it ended."""


class IllegalTransition(Exception):
    """The state machine forbids this status change."""


class TaskFailed(Exception):
    """This task cannot be done; the message says why (and what to do) to the task's owner.

    The worker shows the message as it is, without the class name a stray exception gets.
    """


class BackendUnavailable(TaskFailed):
    """A backend cannot run here; the message says why and what to do."""


class PartnerError(TaskFailed):
    """The partner API could not make this task's image; the message says what it answered."""


class GenerationRefused(PartnerError):
    """The partner's moderation refused the prompt (before) or the image (after generating)."""


class OutOfMemory(TaskFailed):
    """The GPU ran out of memory on this task; the memory was released and the worker goes on."""


class ImageWithheld(TaskFailed):
    """A locally generated image was flagged by the safety classifier; the task's images are not stored.

    The message is what the task's debugerror shows: which image, its score against the
    threshold of the task's safetyTolerance, and what would let it through.
    """


class CallbackRefused(Exception):
    """A callback URL points where fluxrun will not send requests (loopback, private,
    link-local, metadata... or not http(s)); the message names the address and the rule."""


class StorageUnavailable(TaskFailed):
    """The output storage cannot be reached or written: one line naming the setting and the cause.

    Raised by a storage's ``check()`` (the API refuses to start; a worker says so at start) and
    by ``put()``, where it ends the task whose files could not be stored.
    """
