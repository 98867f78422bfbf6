"""Live previews: a small JPEG, as base64 text, small enough to travel as one event."""

from __future__ import annotations

import base64
import io

from PIL.Image import Image, Resampling

PREVIEW_MAX_SIDE = 128
_QUALITIES = (75, 60, 45, 30)


def encode_preview(image: Image, max_chars: int, max_side: int = PREVIEW_MAX_SIDE) -> str | None:
    """Base64 of a JPEG at most ``max_side`` pixels on its longer side; the best quality
    that fits in ``max_chars``, or None when even the lowest does not."""
    small = image.convert("RGB")
    small.thumbnail((max_side, max_side), Resampling.BILINEAR)
    for quality in _QUALITIES:
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=quality)
        text = base64.b64encode(buffer.getvalue()).decode("ascii")
        if len(text) <= max_chars:
            return text
    return None
