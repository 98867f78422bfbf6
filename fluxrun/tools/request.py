"""What a backend is asked to make: a tool's validated inputs in backend terms.

Each tool spec maps its own input names (``scale`` for the pixel-art tool, ``guidance``
for FLUX.2) onto this one shape, so backends never read wire field names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

PixelOutput = Literal["upscaled", "sprite"]


@dataclass(frozen=True)
class PixelArtPass:
    """The pixel-perfect pass, asked for: the worker snaps each image to its pixel grid,
    gives every cell one colour and keeps at most ``palette_size`` colours."""

    palette_size: int = 16
    output: PixelOutput = "upscaled"  # "sprite": one image pixel per cell


@dataclass(frozen=True)
class GenerationRequest:
    tool: str  # "owner/project", for messages only
    backend: str  # which backend makes it, e.g. "flux1"
    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int  # image i uses seed + i, so image i does not depend on `samples`
    samples: int = 1
    output_format: str = "png"  # "png" | "jpeg"
    lora: str | None = None  # adapter name over the backend's base model, if the tool has one
    trigger_words: str | None = None  # added to the prompt when absent
    extra: Mapping[str, Any] = field(default_factory=dict)  # tool-specific passthrough
    pixel_pass: PixelArtPass | None = None  # run on the images after generation, if asked

    def image_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.samples)]
