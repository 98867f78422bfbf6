"""fluxrun: a self-hosted text-to-image task service for FLUX tools."""

from __future__ import annotations

__version__ = "0.1.0"
