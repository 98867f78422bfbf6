"""desertPixel/Flat-Pixel-Art-FLUX: FLUX.1-dev with the Flat Pixel Art LoRA.

Inputs exactly as the seed page lists them (fluxrun.tools.flux1_inputs). Its LoRA has no
public default source: the operator names it with FLUXRUN_LORA_FLAT_PIXEL_ART; without
one the tool runs on the base model and says so.
"""

from __future__ import annotations

from decimal import Decimal

from fluxrun.tools.flux1_inputs import flux1_lora_inputs
from fluxrun.tools.spec import ToolSpec

DEFAULT_PROMPT = (
    "Frozen tundra with ice crystals and northern lights in sky., magical psychedelic detailed "
    "nature landscape scene, dpixeBw style, flat 2d pixel art, retro 16bit game art, pixel "
    "halftone effect, dramatic, pixelated effect,vibrant game art color pallette"
)

TOOL = ToolSpec(
    id="1",
    slugowner="desertPixel",
    slugproject="Flat-Pixel-Art-FLUX",
    title="Flat Pixel Art FLUX",
    description="Flat Pixel Art FLUX",
    categories=("model", "text-to-image", "checkpoint-file", "lora-flux", "bf16", "persistent"),
    tags=("pixel art", "minimal", "game art", "pixel", "style", "flat 2d"),
    image="https://cdn.wiro.ai/uploads/models/desertPixel-Flat-Pixel-Art-FLUX-cover.jpeg",
    cps=Decimal("0.000585"),
    backend="flux1",
    lora="flat-pixel-art",
    trigger_words="dpixeBw style",
    inputs=flux1_lora_inputs(DEFAULT_PROMPT),
)
