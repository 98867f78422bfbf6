"""Local files under the data directory, served by the API at ``/files/{key}/{name}``.

A file is written whole under ``.partial/`` (never a valid key, so never served) and renamed
into place, so a reader never sees half a file. A writer killed mid-write (SIGKILL, a power
cut) leaves its partial file there, where ``sweep`` finds it without walking every task's
folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from fluxrun.errors import StorageUnavailable
from fluxrun.storage.base import OutputStorage, is_valid_address


PARTIAL = ".partial"
# A live write takes seconds; a partial file this old was left by a writer that died (another
# process's write may be in flight while a worker starts and sweeps).
PARTIAL_MAX_AGE_SECONDS = 3600.0


class LocalStorage(OutputStorage):
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, name: str, data: bytes, content_type: str) -> int:
        if not is_valid_address(key, name):
            raise ValueError(f"invalid output address {key!r}/{name!r}")
        folder, partial = self.root / key, self.root / PARTIAL
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial.mkdir(exist_ok=True)
            # Written whole in .partial, then renamed into place (the same filesystem: atomic).
            fd, temp = tempfile.mkstemp(dir=partial, prefix=f"{key}-{name}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(temp, folder / name)
            except BaseException:
                Path(temp).unlink(missing_ok=True)  # a full disk keeps no half-written file
                raise
        except OSError as exc:  # a full disk, a read-only or vanished folder: the task fails saying so
            reason = exc.strerror or str(exc)
            raise StorageUnavailable(
                f"FLUXRUN_DATA_DIR: cannot write output file {name} under {self.root} ({reason})"
            ) from exc
        return len(data)

    def path(self, key: str, name: str) -> Path | None:
        """The file behind an address, or None when the address is invalid or empty."""
        if not is_valid_address(key, name):
            return None
        candidate = self.root / key / name
        return candidate if candidate.is_file() else None

    def url(self, key: str, name: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/files/{key}/{name}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # A probe of its own: the API's /ready and a worker's start may check at the same time.
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".write-check-")
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                Path(probe).unlink()
        except OSError as exc:
            raise StorageUnavailable(f"FLUXRUN_DATA_DIR: cannot write output files under {self.root} ({exc})") from exc

    def describe(self) -> str:
        return f"local files under {self.root.resolve()}, served at /files"

    def sweep(self, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - PARTIAL_MAX_AGE_SECONDS
        removed = 0
        # Best effort: what cannot be listed or removed now (gone, another worker's sweep got
        # there first, permissions) is left for the next start.
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root / PARTIAL):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed
