"""One documented error tree.

Every error that can reach a client knows its wire code (SPEC.md section 7), its HTTP
status and its message, so routes never format errors by hand:

    FluxrunError                      code 0, HTTP 200
    ├── ValidationError               code 0: names the field and the rule
    ├── NotFoundError                 code 1
    ├── ConcurrencyLimitError         code 96
    ├── AuthError                     code 99, HTTP 401
    │   └── SignInRequiredError       code 98, HTTP 401
    └── RateLimitError                code 0, HTTP 429

Errors that never reach the wire as such (they end a task or a worker's claim):

    TaskStopped        raised from a backend's step callback when the task was killed
    LeaseLost          a worker's lease was taken over; it must not write its result
    IllegalTransition  a status change the state machine forbids
    BackendUnavailable a backend cannot be loaded here (no weights, no token, offline)
    CallbackRefused    a callback URL the SSRF guard will not call (fluxrun.netguard)
"""

from __future__ import annotations


class FluxrunError(Exception):
    code: int = 0
    http_status: int = 200

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, object]:
        return {"result": False, "errors": [{"code": self.code, "message": self.message}]}


class ValidationError(FluxrunError):
    """A request input broke a rule; ``field`` names the input."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFoundError(FluxrunError):
    code = 1


class ConcurrencyLimitError(FluxrunError):
    code = 96


class AuthError(FluxrunError):
    code = 99
    http_status = 401


class SignInRequiredError(AuthError):
    code = 98


class RateLimitError(FluxrunError):
    http_status = 429


class TaskStopped(Exception):
    """The task was killed (or its lease lost) while generating; stop now."""


class LeaseLost(Exception):
    """This worker no longer owns the task: another attempt took it, or it ended."""


class IllegalTransition(Exception):
    """The state machine forbids this status change."""


class BackendUnavailable(Exception):
    """A backend cannot run here; the message says why and what to do."""


class CallbackRefused(Exception):
    """A callback URL points where fluxrun will not send requests (loopback, private,
    link-local, metadata... or not http(s)); the message names the address and the rule."""
