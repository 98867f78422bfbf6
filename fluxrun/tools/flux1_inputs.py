"""The inputs of a FLUX.1 LoRA tool, as the pixel-art seed page lists them.

Every tool that is a LoRA over the shared FLUX.1 base takes the same inputs (name, label,
help, type, default, as the hosted service shows them); only the example prompt differs.
The ranges are ours: the seed gives none.
"""

from __future__ import annotations

from fluxrun.tools.spec import InputSpec


def flux1_lora_inputs(default_prompt: str) -> tuple[InputSpec, ...]:
    return (
        InputSpec("prompt", "prompt", "prompt-help", "textarea", default_prompt, "string", role="prompt",
                  required=True, max_length=10_000),
        InputSpec("samples", "numberofoutputs", "numberofoutputs-help", "number", "1", "int", role="samples",
                  min=1, max=4, step=1),
        InputSpec("steps", "inferencesteps", "inferencesteps-help", "number", "12", "int", role="steps",
                  min=1, max=50, step=1),
        InputSpec("scale", "guidancescale", "guidancescale-help", "float", "3", "float", role="guidance",
                  min=0, max=20, step=0.1),
        InputSpec("seed", "seed", "seed-help", "text", "71942193", "seed", role="seed"),
        InputSpec("width", "width", "width-help", "number", "1024", "int", role="width",
                  min=64, max=2048, step=16, multiple_of=16),
        InputSpec("height", "height", "height-help", "number", "1024", "int", role="height",
                  min=64, max=2048, step=16, multiple_of=16),
    )
