"""The OutputStorage interface.

Files are addressed by (key, name): ``key`` is unguessable, ``name`` the file name
(``0.png``, as SPEC.md section 4 names them, whichever attempt made it). Each attempt of a
task writes under a key of its own (``attempt_key``): an attempt that lost its task (its
worker paused, the lease was taken over) may still have an upload in flight, and that
upload must never overwrite a file the attempt that took over stored and recorded.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod

KEY_PATTERN = re.compile(r"^[0-9a-f]{40}$")
NAME_PATTERN = re.compile(r"^[0-9]{1,4}\.(png|jpeg)$")


def attempt_key(output_key: str, attempt: int) -> str:
    """The key attempt ``attempt`` of a task stores its files under: the task's output key
    for the first attempt (the common case, and where releases before this one put every
    file), for each later one a key of its own, as unguessable (a keyed hash of the attempt
    by the task's secret output key) and as valid (40 hex digits)."""
    if attempt <= 1:
        return output_key
    return hashlib.blake2b(f"attempt {attempt}".encode(), key=output_key.encode(), digest_size=20).hexdigest()


def is_valid_address(key: str, name: str) -> bool:
    """Only addresses fluxrun itself makes; anything else (``..``, slashes) is refused."""
    return bool(KEY_PATTERN.match(key) and NAME_PATTERN.match(name))


class OutputStorage(ABC):
    @abstractmethod
    def put(self, key: str, name: str, data: bytes, content_type: str) -> int:
        """Store a file; returns its size in bytes."""

    @abstractmethod
    def url(self, key: str, name: str, base_url: str) -> str:
        """Where a client downloads it, with no headers."""

    @abstractmethod
    def check(self) -> None:
        """Raise errors.StorageUnavailable (one line naming the setting and the cause) if the
        storage cannot be reached or written. The API calls it at start."""

    def describe(self) -> str:
        """Where the files go, for the operator's start-up lines."""
        return type(self).__name__

    def sweep(self) -> int:
        """Remove what writes cut short (a worker killed mid-write) left behind; returns how
        many things went. Workers call it at start. Nothing to do where a write is one request
        that lands whole or not at all (S3's PUT)."""
        return 0
