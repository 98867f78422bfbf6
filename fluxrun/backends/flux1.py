"""FLUX.1 (+ LoRA adapters over one resident base): the pixel-art tool's backend.

One pipeline per worker process, loaded once. Adapters are loaded on first use and kept;
each task activates exactly its own (or none). Image i of a task is made alone from
``seed + i``, so it is the same whatever ``samples`` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fluxrun.backends.base import BackendOptions, Job
from fluxrun.backends.hub import hub_error_message
from fluxrun.backends.latent_preview import flux1_preview
from fluxrun.backends.tiny import ensure_tiny_flux1, ensure_tiny_lora
from fluxrun.errors import BackendUnavailable
from fluxrun.tools.request import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

# T5 tokens: 512 is FLUX.1-dev's own limit; the tiny T5 is given less for speed.
REAL_MAX_SEQUENCE = 512
TINY_MAX_SEQUENCE = 64


class Flux1Backend:
    def __init__(self, options: BackendOptions) -> None:
        import torch
        from diffusers import FluxPipeline

        self.options = options
        self.tiny = options.models == "tiny"
        self.device = options.device
        self._adapters: set[str] = set()
        if self.tiny:
            self.pipe = FluxPipeline.from_pretrained(ensure_tiny_flux1(options.models_dir), torch_dtype=torch.float32)
            self.pipe.to(self.device)
            self.description = (
                f"FLUX.1 tiny random-weight pipeline on {self.device} (no GPU or --models tiny: images are noise)"
            )
        else:
            try:
                self.pipe = FluxPipeline.from_pretrained(options.flux1_base, torch_dtype=torch.bfloat16)
            except Exception as exc:  # turn hub failures into a message an operator can act on
                raise BackendUnavailable(hub_error_message(options.flux1_base, exc, "FLUXRUN_FLUX1_BASE")) from exc
            if options.cpu_offload:
                self.pipe.enable_model_cpu_offload()
            else:
                self.pipe.to(self.device)
            self.description = f"FLUX.1 {options.flux1_base} bf16 on {self.device}"
        self.pipe.set_progress_bar_config(disable=True)

    # -- adapters -------------------------------------------------------------------------
    def _use_adapter(self, name: str | None, job: Job) -> None:
        """Activate exactly ``name`` (or no adapter); the job's notes say when one is missing."""
        if name is not None and name not in self._adapters:
            source = self._adapter_source(name)
            if source is None:
                job.note(
                    f"LoRA '{name}' is not configured (set FLUXRUN_LORA_{name.upper().replace('-', '_')}); "
                    "ran the base model"
                )
                name = None
            else:
                self._load_adapter(name, source)
        if name is None:
            if self._adapters:
                self.pipe.disable_lora()
            return
        self.pipe.enable_lora()
        self.pipe.set_adapters([name])

    def _adapter_source(self, name: str) -> str | None:
        if self.tiny:
            return str(ensure_tiny_lora(self.options.models_dir, name))
        return self.options.lora_sources.get(name)

    def _load_adapter(self, name: str, source: str) -> None:
        path = Path(source)
        kwargs: dict[str, Any] = {"adapter_name": name}
        if path.suffix == ".safetensors":  # a single weights file: its folder and name
            source, kwargs["weight_name"] = str(path.parent), path.name
        try:
            self.pipe.load_lora_weights(source, **kwargs)
        except Exception as exc:
            raise BackendUnavailable(hub_error_message(source, exc, f"FLUXRUN_LORA_{name.upper().replace('-', '_')}")) from exc
        self._adapters.add(name)

    # -- generation -----------------------------------------------------------------------
    def generate(self, request: GenerationRequest, job: Job) -> list[Image]:
        import torch

        self._use_adapter(request.lora, job)
        prompt = with_trigger_words(request.prompt, request.trigger_words)
        total = request.steps * request.samples
        images: list[Image] = []
        for index, seed in enumerate(request.image_seeds()):
            done_before = index * request.steps

            def step_end(pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                # Raising here (TaskStopped on a kill) leaves the pipeline at once: no VAE decode.
                job.step(done_before + step + 1, total)
                if job.wants_preview():  # only when a client watches, and throttled
                    job.preview(flux1_preview(kwargs["latents"], request.height, request.width, pipe.vae_scale_factor))
                return kwargs

            with torch.inference_mode():
                result = self.pipe(
                    prompt=prompt,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance,
                    generator=torch.Generator(self.device).manual_seed(seed),
                    max_sequence_length=TINY_MAX_SEQUENCE if self.tiny else REAL_MAX_SEQUENCE,
                    callback_on_step_end=step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                )
            images.append(result.images[0])
        return images


def with_trigger_words(prompt: str, trigger: str | None) -> str:
    """The LoRA's trigger words appended, unless the prompt already has them."""
    if not trigger or trigger.lower() in prompt.lower():
        return prompt
    return f"{prompt.rstrip().rstrip(',')}, {trigger}"
