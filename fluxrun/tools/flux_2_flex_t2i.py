"""black-forest-labs/flux-2-flex-t2i: FLUX.2 [flex] text to image.

Inputs exactly as the seed page lists them; ranges from the seed's help texts and the
partner API's limits (SPEC.md section 10: each side at least 64, at most 4 megapixels
in all). Where they differ the seed wins
(safetyTolerance 0..6).
"""

from __future__ import annotations

from decimal import Decimal

from fluxrun.tools.spec import InputSpec, Option, ToolSpec

TOOL = ToolSpec(
    id="2",
    slugowner="black-forest-labs",
    slugproject="flux-2-flex-t2i",
    title="flux-2-flex",
    description="flux-2-flex",
    categories=("tool", "bfl", "text-to-image", "partner", "flux-2-flex"),
    tags=("image generation",),
    image="https://cdn.wiro.ai/uploads/models/black-forest-labs-flux-2-flex-t2i-cover.webp",
    cps=Decimal("0.000585"),
    backend="flux2",
    max_pixels=4 * 1024 * 1024,
    inputs=(
        InputSpec("prompt", "Prompt", "Text prompt for image generation.", "textarea", "", "string",
                  role="prompt", required=True, max_length=10_000),
        InputSpec("width", "Width", "Width in pixels (must be multiple of 16).", "number", "1024", "int",
                  role="width", min=64, max=4096, step=16, multiple_of=16),
        InputSpec("height", "Height", "Height in pixels (must be multiple of 16).", "number", "1024", "int",
                  role="height", min=64, max=4096, step=16, multiple_of=16),
        InputSpec("guidance", "Guidance",
                  "Guidance scale for generation. Controls how closely the output follows the prompt. "
                  "Only for Flux 2 Flex.", "number", "4.5", "float", role="guidance", min=1.5, max=10, step=0.1),
        InputSpec("steps", "Steps", "Number of inference steps. Higher steps may improve quality. "
                  "Only for Flux 2 Flex.", "number", "50", "int", role="steps", min=1, max=50, step=1),
        InputSpec("safetyTolerance", "Safety Tolerance",
                  "Tolerance level for input and output moderation. Between 0 and 6, 0 being most strict, "
                  "6 being least strict.", "number", "2", "int", min=0, max=6, step=1),
        InputSpec("seed", "Seed", "Seed for reproducible results. Use the same seed to get consistent outputs.",
                  "number", "123", "seed", role="seed"),
        InputSpec("outputFormat", "Output Format", "Output format for the generated image.", "select", "png",
                  "choice", role="output_format", options=(Option("jpeg", "JPEG"), Option("png", "PNG"))),
    ),
)
