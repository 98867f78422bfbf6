"""Preview pictures fit in one event."""

from __future__ import annotations

import base64
import io
import random

from PIL import Image

from fluxrun.imaging.preview import encode_preview


def _noise(size: int) -> Image.Image:
    rng = random.Random(1)
    return Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))


def test_a_preview_is_a_small_jpeg_within_the_limit() -> None:
    for picture in (_noise(1024), Image.new("RGB", (300, 150), "navy")):
        text = encode_preview(picture, max_chars=7700)
        assert text is not None and len(text) <= 7700
        decoded = Image.open(io.BytesIO(base64.b64decode(text)))
        assert decoded.format == "JPEG" and max(decoded.size) <= 128
    assert Image.open(io.BytesIO(base64.b64decode(encode_preview(Image.new("RGB", (300, 150)), 7700)))).size == (
        128, 64)


def test_nothing_when_nothing_fits() -> None:
    assert encode_preview(_noise(64), max_chars=100) is None
