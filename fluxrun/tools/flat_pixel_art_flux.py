"""desertPixel/Flat-Pixel-Art-FLUX: FLUX.1-dev with the Flat Pixel Art LoRA.

Inputs exactly as the seed page lists them (fluxrun.tools.flux1_inputs). Its LoRA has no
public default source: the operator names it with FLUXRUN_LORA_FLAT_PIXEL_ART; without
one the tool runs on the base model and says so.
After the seed's seven inputs come ours: the optional pixel-perfect pass (off by
default, so the tool behaves as the hosted one unless asked).
"""

from __future__ import annotations

from decimal import Decimal

from fluxrun.tools.flux1_inputs import flux1_lora_inputs
from fluxrun.tools.spec import InputSpec, Option, ToolSpec

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
    inputs=flux1_lora_inputs(DEFAULT_PROMPT) + (
        InputSpec("pixelPerfect", "Pixel-perfect",
                  "On: find the image's pixel grid, give every pixel one flat colour and keep at most "
                  "the palette size in colours. Off: the model's image as it is.",
                  "select", "off", "choice", role="pixel_perfect",
                  options=(Option("off", "Off"), Option("on", "On"))),
        InputSpec("paletteSize", "Palette size",
                  "With pixel-perfect on: the most colours the image may use (2 to 64). Near-identical "
                  "colours are merged, so it may use fewer.",
                  "number", "16", "int", role="palette_size", min=2, max=64, step=1),
        InputSpec("pixelOutput", "Pixel output",
                  "With pixel-perfect on: Upscaled gives crisp square pixels at about the requested "
                  "size; Sprite gives the art at its own resolution, one image pixel per art pixel.",
                  "select", "upscaled", "choice", role="pixel_output",
                  options=(Option("upscaled", "Upscaled"), Option("sprite", "Sprite"))),
    ),
)
