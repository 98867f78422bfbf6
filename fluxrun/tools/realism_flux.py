"""fluxrun/Realism-FLUX: a second LoRA over the same FLUX.1-dev base as the pixel-art tool.

It exists to show (and test) several LoRA tools sharing one resident base: a worker keeps
FLUX.1-dev loaded once and switches adapters per task. Its LoRA defaults to XLabs' public
realism LoRA on the Hugging Face hub (FLUXRUN_LORA_REALISM overrides it). A new LoRA tool is
one file like this one, listed in fluxrun.tools.catalog.
"""

from __future__ import annotations

from decimal import Decimal

from fluxrun.tools.flux1_inputs import flux1_lora_inputs
from fluxrun.tools.spec import ToolSpec

DEFAULT_PROMPT = (
    "A weathered fisherman mending a net on a wooden pier at dawn, soft window light, 50mm photo, "
    "natural skin texture, shallow depth of field"
)

TOOL = ToolSpec(
    id="3",
    slugowner="fluxrun",
    slugproject="Realism-FLUX",
    title="Realism FLUX",
    description="FLUX.1-dev with a photorealism LoRA; shares one resident base with the other FLUX.1 LoRA tools",
    categories=("model", "text-to-image", "lora-flux", "bf16", "persistent"),
    tags=("photo", "realism", "portrait"),
    image="",
    cps=Decimal("0.000585"),
    backend="flux1",
    lora="realism",
    lora_source="XLabs-AI/flux-RealismLora",
    inputs=flux1_lora_inputs(DEFAULT_PROMPT),
)
