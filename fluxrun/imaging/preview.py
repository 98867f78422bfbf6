"""Live previews: a small JPEG, as base64 text, small enough to travel as one event."""

from __future__ import annotations

import base64
import io

from PIL.Image import Image, Resampling

PREVIEW_MAX_SIDE = 128
_QUALITIES = (75, 50, 30)
_SCALES = (1.0, 0.75, 0.5)  # a busy picture (noise compresses badly) is sent smaller


def encode_preview(image: Image, max_chars: int, max_side: int = PREVIEW_MAX_SIDE) -> str | None:
    """Base64 of a JPEG at most ``max_side`` pixels on its longer side: the largest size,
    then the best quality, that fits in ``max_chars``; None when nothing does."""
    rgb = image.convert("RGB")
    for scale in _SCALES:
        side = max(16, int(max_side * scale))
        small = rgb.copy()
        small.thumbnail((side, side), Resampling.BILINEAR)
        for quality in _QUALITIES:
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=quality)
            text = base64.b64encode(buffer.getvalue()).decode("ascii")
            if len(text) <= max_chars:
                return text
    return None
