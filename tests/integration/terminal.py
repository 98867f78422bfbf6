"""A command in a pseudo-terminal, as someone at a terminal runs it.

The command's stdin, stdout and stderr are the terminal (so rich draws its live progress
bar), the terminal is its controlling terminal (so Ctrl-C typed as b"\\x03" reaches it as
SIGINT), and everything it writes is kept for the test to read.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# CSI sequences (colours, cursor moves, erase line, cursor show/hide) and OSC sequences (links).
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


def plain(text: str) -> str:
    """Terminal output without its escape sequences, carriage returns read as line ends."""
    return _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


def _take_terminal() -> None:
    # In the child, after setsid (start_new_session): make the terminal on fd 0 its controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, columns: int = 120,
                 rows: int = 40) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.process = subprocess.Popen(
            list(argv), stdin=slave, stdout=slave, stderr=slave, env=dict(env), cwd=cwd,
            start_new_session=True, preexec_fn=_take_terminal,
        )
        os.close(slave)
        self._master = master
        self._received = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the command closed the terminal's last handle
                return
            if not chunk:
                return
            with self._lock:
                self._received += chunk

    @property
    def raw(self) -> str:
        with self._lock:
            return self._received.decode("utf-8", errors="replace")

    @property
    def text(self) -> str:
        return plain(self.raw)

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first match of ``pattern`` in the output so far, waiting for it to appear."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text)
            if found:
                return found
            if self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"{pattern!r} never appeared; exit {self.process.returncode}:\n{self.text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} did not appear within {timeout} s:\n{self.text}")
            time.sleep(0.02)

    def type(self, keys: bytes) -> None:
        os.write(self._master, keys)

    def wait(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout=10)
        os.close(self._master)
