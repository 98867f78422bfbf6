"""Local files under the data directory, served by the API at ``/files/{key}/{name}``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fluxrun.errors import StorageUnavailable
from fluxrun.storage.base import OutputStorage, is_valid_address


class LocalStorage(OutputStorage):
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, name: str, data: bytes, content_type: str) -> int:
        if not is_valid_address(key, name):
            raise ValueError(f"invalid output address {key!r}/{name!r}")
        folder = self.root / key
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a reader never sees half a file and a crash leaves none.
            fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
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
