"""The OutputStorage interface.

Files are addressed by (key, name): ``key`` is the task's unguessable output key, ``name``
the file name (``0.png``). Writing the same (key, name) again replaces the file, so a
second attempt of a task is harmless.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

KEY_PATTERN = re.compile(r"^[0-9a-f]{40}$")
NAME_PATTERN = re.compile(r"^[0-9]{1,4}\.(png|jpeg)$")


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
