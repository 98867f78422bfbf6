"""A handle on one task: refresh, wait (WebSocket, else polling), cancel, kill, download."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from websockets.exceptions import WebSocketException

from fluxrun.client import protocol
from fluxrun.client.errors import (
    RateLimited,
    TaskCancelled,
    TaskFailed,
    TaskNotFinished,
    TransportError,
    WaitTimeout,
)
from fluxrun.client.models import TERMINAL_STATUSES, Event, Output, TaskInfo

if TYPE_CHECKING:
    from fluxrun.client.client import Client

log = logging.getLogger("fluxrun.client")

EventCallback = Callable[[Event], None]

#: Polling backoff: the first look after half a second, then 1.5 times longer each time up to
#: 5 s, about as often as the official clients poll (every few seconds) once a task runs long.
POLL_FIRST_S = 0.5
POLL_FACTOR = 1.5
POLL_MAX_S = 5.0
#: The server sends a task's current status as soon as a socket registers (SPEC.md section 5);
#: a socket silent this long after registering is not serving, and wait() polls instead.
FIRST_MESSAGE_S = 10.0
#: A quiet socket is normal (a task waits in the queue), but after this long without a message
#: wait() asks Task/Detail once, so an event lost on the way cannot leave it waiting forever.
QUIET_CHECK_S = 30.0
#: Consecutive failed polls (connection refused, 429/503) wait() sits out before it gives up.
POLL_FAILURES_TOLERATED = 5


class Task:
    """A task on the server. Made by ``client.run()`` or ``client.task(taskid)``.

    ``info`` is the task as last seen (None until something was read); ``refresh()`` reads it
    again. Nothing here runs in the background.
    """

    def __init__(self, client: Client, id: str, socket_token: str | None = None, info: TaskInfo | None = None) -> None:
        self._client = client
        self.id = str(id)
        self.socket_token = socket_token or (info.socketaccesstoken if info else None) or None
        self.info = info

    def __repr__(self) -> str:
        status = self.info.status if self.info else "not read yet"
        return f"<Task {self.id} {status}>"

    def refresh(self) -> TaskInfo:
        """Task/Detail: the task now."""
        return self._remember(self._client._detail(self.id))

    @property
    def outputs(self) -> list[Output]:
        """The task's output files (reads the task unless it was last seen ended)."""
        info = self.info if self.info is not None and self.info.finished else self.refresh()
        return info.outputs

    def cancel(self) -> TaskInfo:
        """Task/Cancel: a task still queued ends task_cancel; a running one cannot be cancelled
        (an APIError says so): kill() it."""
        return self._remember(self._client._task_command(protocol.TASK_CANCEL, self.id))

    def kill(self) -> TaskInfo:
        """Task/Kill: a running (or queued) task is stopped and ends task_cancel."""
        return self._remember(self._client._task_command(protocol.TASK_KILL, self.id))

    def wait(
        self,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
        *,
        previews: bool = False,
        websocket: bool | None = None,
    ) -> TaskInfo:
        """Follow the task to its end and return it as Task/Detail shows it then.

        By WebSocket when the client may use one (``websocket`` overrides the client's
        setting): every event goes to ``on_event`` as it happens, progress included. When the
        socket cannot connect, refuses the token, stays silent or drops, wait() polls
        Task/Detail instead (0.5 s, then 1.5x longer each time up to 5 s) and reports status
        changes as ``task_status`` events. ``previews`` asks fluxrun for task_preview events.

        Raises TaskFailed (pexit != "0", with debugerror), TaskCancelled, WaitTimeout after
        ``timeout`` seconds (the task goes on), or the errors of Task/Detail.
        """
        clock = self._client._clock
        deadline = clock() + timeout if timeout is not None else None
        seen = _Seen(on_event)
        use_socket = self._client.websocket if websocket is None else websocket
        if use_socket:
            if self.socket_token is None:
                self.refresh()
            if self.info is None or not self.info.finished:
                self._follow_socket(deadline, seen, previews)
        info = self._poll(deadline, seen)
        if info.cancelled:
            raise TaskCancelled(info)
        if not info.succeeded:
            raise TaskFailed(info)
        return info

    def download(self, directory: str | Path) -> list[Path]:
        """Write the outputs of a task that succeeded into ``directory`` (0.png, 1.png, ...),
        each atomically; returns their paths. Raises TaskNotFinished before the end, TaskFailed
        or TaskCancelled for a task that ended without images."""
        info = self.info if self.info is not None and self.info.finished else self.refresh()
        if not info.finished:
            raise TaskNotFinished(info)
        if info.cancelled:
            raise TaskCancelled(info)
        if not info.succeeded:
            raise TaskFailed(info)
        return self._client._download(info.outputs, Path(directory))

    # --- following ---

    def _follow_socket(self, deadline: float | None, seen: _Seen, previews: bool) -> None:
        """Read the socket's events until the task's end; return early (for polling) when the
        socket does not serve. Raises WaitTimeout at the deadline."""
        client = self._client
        assert self.socket_token is not None
        left = _left(deadline, client._clock)
        if left is not None and left <= 0:
            return  # no time left even to connect: polling looks once and says so
        open_timeout = client.timeout if left is None else min(client.timeout, left)
        try:
            socket = client._socket_connect(client.socket_url, open_timeout=open_timeout,
                                            user_agent_header=protocol.USER_AGENT, max_size=2**24)
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.info("task %s: WebSocket %s unavailable (%s); polling Task/Detail", self.id, client.socket_url, exc)
            return
        with socket:
            try:
                socket.send(protocol.register_message(self.socket_token, previews))
                heard = False
                while True:
                    quiet = QUIET_CHECK_S if heard else FIRST_MESSAGE_S
                    left = _left(deadline, client._clock)
                    try:
                        text = socket.recv(timeout=max(0.0, min(quiet, left)) if left is not None else quiet)
                    except TimeoutError:
                        if left is not None and left <= quiet:
                            raise self._timeout(deadline) from None
                        if not heard:
                            log.info("task %s: the WebSocket sent nothing in %.0f s; polling", self.id, quiet)
                            return
                        try:
                            if self.refresh().finished:  # an end the socket did not tell: polling reports it
                                return
                        except (TransportError, RateLimited):
                            return  # polling sits out a few failures; this look need not end the wait
                        continue
                    heard = True
                    event = protocol.parse_event(text)
                    if event is None or (event.task_id and event.task_id != self.id):
                        continue
                    seen.report(event)
                    if event.type in TERMINAL_STATUSES:
                        return
            except protocol.SocketRefused as exc:
                log.info("task %s: the WebSocket refused the token (%s); polling", self.id, exc)
            except (WebSocketException, OSError) as exc:  # ConnectionClosed among them
                log.info("task %s: the WebSocket closed (%s); polling", self.id, exc)

    def _poll(self, deadline: float | None, seen: _Seen) -> TaskInfo:
        """Task/Detail until the task has ended, with backoff; WaitTimeout at the deadline."""
        client = self._client
        interval = POLL_FIRST_S
        failures = 0
        while True:
            delay = interval
            try:
                info = self.refresh()
            except (TransportError, RateLimited) as exc:
                failures += 1
                if failures > POLL_FAILURES_TOLERATED:
                    raise
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                log.info("task %s: polling failed (%s); trying again in %.1f s", self.id, exc, delay)
            else:
                failures = 0
                if info.status != seen.status:
                    seen.report(protocol.status_event(info))
                if info.finished:
                    return info
            left = _left(deadline, client._clock)
            if left is not None:
                if left <= 0:
                    raise self._timeout(deadline)
                delay = min(delay, left)
            client._sleep(delay)
            interval = min(interval * POLL_FACTOR, POLL_MAX_S)

    def _timeout(self, deadline: float | None) -> WaitTimeout:
        status = self.info.status if self.info else "unknown"
        return WaitTimeout(f"task {self.id} had not ended when the wait ran out (last seen: {status})", self.info)

    def _remember(self, info: TaskInfo) -> TaskInfo:
        self.info = info
        if info.socketaccesstoken:
            self.socket_token = info.socketaccesstoken
        return info


class _Seen:
    """The last status wait() reported, so polling after the socket repeats nothing."""

    def __init__(self, on_event: EventCallback | None) -> None:
        self.on_event = on_event
        self.status: str | None = None

    def report(self, event: Event) -> None:
        if event.status is not None:
            self.status = event.status
        if self.on_event is not None:
            self.on_event(event)


def _left(deadline: float | None, clock: Callable[[], float]) -> float | None:
    return None if deadline is None else deadline - clock()


