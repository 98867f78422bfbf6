"""The event bus of one machine (the SQLite store): Unix datagram sockets in a folder.

Each subscriber binds ``<pid>-<random>.sock`` in the folder; a publisher sends each event,
as one datagram, to every socket there once its transaction committed. A socket whose
owner died without cleaning up (SIGKILL) refuses the datagram, and the publisher removes
it. A subscriber waits in ``recv``, so an idle one costs no CPU; a datagram is in the other
process's hands within microseconds.

Linux keeps at most ``net.unix.max_dgram_qlen`` (often 10) unread datagrams per socket:
past that a sender waits for the reader. Each subscription has a thread that only drains
its socket, so the wait is short; a reader stuck for longer than ``SEND_TIMEOUT`` (a
stopped process) loses that event rather than slowing every publisher down.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from pathlib import Path

from fluxrun.store.events import EventBus, Subscription, TaskEvent, reader_thread

log = logging.getLogger("fluxrun.events")

SUFFIX = ".sock"
SEND_TIMEOUT = 0.25
RECEIVE_BYTES = 65536
# sun_path holds 107 bytes and a NUL; longer paths go through the folder's descriptor.
_MAX_SOCKET_PATH = 107


class _Folder:
    """The folder of sockets, and short addresses for paths too long for a socket."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def address(self, name: str) -> str:
        full = str(self.path / name)
        if len(os.fsencode(full)) <= _MAX_SOCKET_PATH:
            return full
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._fd}/{name}"

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class LocalEventBus(EventBus):
    def __init__(self, folder: Path) -> None:
        self.folder = _Folder(folder)

    def after_commit(self, events: list[TaskEvent]) -> None:
        for event in events:
            try:
                self.publish(event)
            except Exception:  # the change is committed; a lost wake-up must not undo the caller
                log.exception("could not publish %s of task %s", event.type, event.task_id)

    def publish(self, event: TaskEvent) -> None:
        data = event.encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.settimeout(SEND_TIMEOUT)
            for entry in os.scandir(self.folder.path):
                if entry.name.endswith(SUFFIX):
                    self._send(sender, data, entry.name)

    def _send(self, sender: socket.socket, data: bytes, name: str) -> None:
        try:
            sender.sendto(data, self.folder.address(name))
        except (ConnectionRefusedError, FileNotFoundError):
            # Its owner is gone (or just closed it): nobody will read this socket again.
            try:
                os.unlink(self.folder.path / name)
            except FileNotFoundError:
                pass
        except TimeoutError:
            log.warning("event listener %s did not read for %.2f s; it misses an event", name, SEND_TIMEOUT)

    def subscribe(self) -> Subscription:
        return LocalSubscription(self.folder)

    def close(self) -> None:
        self.folder.close()


class LocalSubscription(Subscription):
    def __init__(self, folder: _Folder) -> None:
        super().__init__()
        self._path = folder.path / f"{os.getpid()}-{secrets.token_hex(6)}{SUFFIX}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(folder.address(self._path.name))
        self._thread = reader_thread(self._read, f"events-{self._path.name}")

    def _read(self) -> None:
        while not self.closed:
            try:
                data = self._socket.recv(RECEIVE_BYTES)
            except OSError:
                break
            if not data:  # shut down by close(), or an empty datagram: nothing to deliver
                continue
            try:
                event = TaskEvent.decode(data)
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed event datagram (%d bytes)", len(data))
                continue
            self._deliver(event)

    def _stop(self) -> None:
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._socket.close()
