"""FLUX.1 (+ LoRA adapters over one resident base): the backend of the FLUX.1 LoRA tools.

One pipeline per worker process, loaded once; every tool whose spec names a LoRA over it
shares it, and each task activates exactly its own adapter (or none): named adapters when
the transformer runs eagerly, one hotswapped slot when it is compiled (fluxrun.backends.lora).
Image i of a task is made alone from ``seed + i``, so it is the same whatever ``samples`` is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxrun.backends import speed
from fluxrun.backends.base import BackendOptions, Job
from fluxrun.backends.hub import hub_error_message
from fluxrun.backends.latent_preview import flux1_preview
from fluxrun.backends.lora import HotswapSlot, LoraSwitch, NamedAdapters, configured_sources
from fluxrun.backends.seeded import StepEnd, each_seed
from fluxrun.backends.tiny import ensure_tiny_flux1, ensure_tiny_lora
from fluxrun.errors import BackendUnavailable
from fluxrun.tools.request import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

# T5 tokens: 512 is FLUX.1-dev's own limit; the tiny T5 is given less for speed.
REAL_MAX_SEQUENCE = 512
TINY_MAX_SEQUENCE = 64
BACKEND_NAME = "flux1"  # as tool specs name it


class Flux1Backend:
    def __init__(self, options: BackendOptions, pipe: Any | None = None) -> None:
        """Load the pipeline ``options`` name, or take ``pipe`` as it is (the GPU benchmark
        builds one with random weights); then make it as fast as ``options`` say."""
        import torch
        from diffusers import FluxPipeline

        self.options = options
        self.tiny = options.models == "tiny"
        self.device = options.device
        if pipe is not None:
            self.pipe = pipe
            what = f"FLUX.1 given pipeline ({pipe.transformer.dtype}) on {self.device}"
        elif self.tiny:
            self.pipe = FluxPipeline.from_pretrained(ensure_tiny_flux1(options.models_dir), torch_dtype=torch.float32)
            self.pipe.to(self.device)
            what = f"FLUX.1 tiny random-weight pipeline on {self.device} (no GPU or --models tiny: images are noise)"
        else:
            try:
                self.pipe = FluxPipeline.from_pretrained(options.flux1_base, torch_dtype=torch.bfloat16)
            except Exception as exc:  # turn hub failures into a message an operator can act on
                raise BackendUnavailable(hub_error_message(options.flux1_base, exc, "FLUXRUN_FLUX1_BASE")) from exc
            if options.cpu_offload:
                self.pipe.enable_model_cpu_offload()
            else:
                self.pipe.to(self.device)
            what = f"FLUX.1 {options.flux1_base} bf16 on {self.device}"
        self.pipe.set_progress_bar_config(disable=True)
        sources = self._lora_sources()
        self.loras: LoraSwitch = NamedAdapters(self.pipe, sources)

        def make_slot() -> None:
            # The slot must wrap the base layers before they are quantized and compiled, so that
            # swapping adapters never changes a graph or meets an fp8 layer peft cannot wrap.
            self.loras = HotswapSlot(self.pipe, sources)

        done = speed.apply(self.pipe, options, make_slot if options.lora_hotswap else None)
        if options.lora_hotswap:
            done.append("LoRA hotswap")
        self.description = ", ".join([what, *done])

    def _lora_sources(self) -> dict[str, str | None]:
        """Adapter name -> source (None: not configured) for every LoRA a FLUX.1 tool names: the
        operator's setting, else the tool spec's default; tiny mode builds a tiny LoRA for each."""
        sources = configured_sources(BACKEND_NAME, self.options.lora_sources)
        if self.tiny:
            return {name: str(ensure_tiny_lora(self.options.models_dir, name)) for name in sources}
        return sources

    # -- generation -----------------------------------------------------------------------
    def generate(self, request: GenerationRequest, job: Job) -> list[Image]:
        import torch

        self.loras.activate(request.lora, job)
        prompt = with_trigger_words(request.prompt, request.trigger_words)

        def make(seed: int, step_end: StepEnd) -> Image:
            with torch.inference_mode():
                return self.pipe(
                    prompt=prompt,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance,
                    generator=torch.Generator(self.device).manual_seed(seed),
                    max_sequence_length=TINY_MAX_SEQUENCE if self.tiny else REAL_MAX_SEQUENCE,
                    callback_on_step_end=step_end,
                    callback_on_step_end_tensor_inputs=["latents"],  # what the preview reads
                ).images[0]

        def preview(pipe: Any, tensors: dict[str, Any]) -> Image:
            return flux1_preview(tensors["latents"], request.height, request.width, pipe.vae_scale_factor)

        return each_seed(request, job, make, preview)


def with_trigger_words(prompt: str, trigger: str | None) -> str:
    """The LoRA's trigger words appended, unless the prompt already has them."""
    if not trigger or trigger.lower() in prompt.lower():
        return prompt
    return f"{prompt.rstrip().rstrip(',')}, {trigger}"
