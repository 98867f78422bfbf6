"""Where output files go: one interface, one file per backend."""

from __future__ import annotations

from fluxrun.storage.base import OutputStorage
from fluxrun.storage.local import LocalStorage

__all__ = ["OutputStorage", "LocalStorage"]
