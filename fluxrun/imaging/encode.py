"""PIL image -> the bytes of an output file, with its content type and extension."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL.Image import Image

_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg")}


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    extension: str


def encode_image(image: Image, output_format: str) -> EncodedImage:
    if output_format not in _FORMATS:
        raise ValueError(f"outputFormat: must be one of {', '.join(_FORMATS)}")
    pil_format, content_type = _FORMATS[output_format]
    buffer = io.BytesIO()
    if pil_format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        # compress_level 1: the GPU should not wait on zlib; files stay lossless.
        image.save(buffer, format="PNG", compress_level=1)
    return EncodedImage(buffer.getvalue(), content_type, output_format)
