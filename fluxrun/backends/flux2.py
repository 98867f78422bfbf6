"""FLUX.2 on this machine: the local pipeline behind black-forest-labs/flux-2-flex-t2i.

The tool's own model ([flex]) has no public weights, so this backend runs the open FLUX.2
models through diffusers: [dev] (``Flux2Pipeline``, 32B, by default) or one of the smaller
[klein] models (``Flux2KleinPipeline``), chosen by ``FLUXRUN_FLUX2_MODEL``: a shortcut
below, a hub repo id or a local folder (its ``model_index.json`` says which pipeline).
Image i of a task is made alone from ``seed + i``, so it is the same whatever ``samples`` is.
The tool's ``safetyTolerance`` has no meaning here: it belongs to the partner API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fluxrun.backends import speed
from fluxrun.backends.base import BackendOptions, Job
from fluxrun.backends.hub import hub_error_message
from fluxrun.backends.seeded import StepEnd, each_seed
from fluxrun.backends.tiny_flux2 import ensure_tiny_flux2
from fluxrun.errors import BackendUnavailable
from fluxrun.tools.request import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

SETTING = "FLUXRUN_FLUX2_MODEL"


@dataclass(frozen=True)
class Flux2Model:
    repo: str  # hub repo id
    family: str  # "dev" | "klein": which pipeline class
    distilled: bool = False  # step-distilled [klein]: few steps, guidance has no effect


MODELS = {
    "dev": Flux2Model("black-forest-labs/FLUX.2-dev", "dev"),
    "klein-4b": Flux2Model("black-forest-labs/FLUX.2-klein-4B", "klein", distilled=True),
    "klein-9b": Flux2Model("black-forest-labs/FLUX.2-klein-9B", "klein", distilled=True),
    "klein-base-4b": Flux2Model("black-forest-labs/FLUX.2-klein-base-4B", "klein"),
    "klein-base-9b": Flux2Model("black-forest-labs/FLUX.2-klein-base-9B", "klein"),
}
# model_index.json's _class_name -> family; other pipelines are refused with a message.
FAMILY_OF_CLASS = {"Flux2Pipeline": "dev", "Flux2KleinPipeline": "klein"}


class Flux2Backend:
    def __init__(self, options: BackendOptions, pipe: Any | None = None) -> None:
        """Load the pipeline ``options`` name, or take ``pipe`` as it is (the GPU benchmark
        builds one with random weights); then make it as fast as ``options`` say."""
        import torch

        self.options = options
        self.device = options.device
        if pipe is not None:
            self.pipe = pipe
            self.description = f"FLUX.2 given {type(pipe).__name__} ({pipe.transformer.dtype}) on {self.device}"
        elif options.models == "tiny":
            # The setting picks the architecture; anything but a [klein] shortcut gets [dev].
            model = MODELS.get(options.flux2_model, MODELS["dev"])
            self.pipe = self._load(ensure_tiny_flux2(options.models_dir, model.family), model.family, torch.float32,
                                   is_distilled=model.distilled)
            self.pipe.to(self.device)
            self.description = (
                f"FLUX.2 [{model.family}] tiny random-weight pipeline on {self.device}"
                f"{_distilled_note(self.pipe)} (no GPU or --models tiny: images are noise)"
            )
        else:
            source = resolve_source(options.flux2_model)
            family = self._family(source)
            try:
                self.pipe = self._load(source, family, torch.bfloat16)
            except Exception as exc:  # turn hub failures into a message an operator can act on
                raise BackendUnavailable(hub_error_message(source, exc, SETTING)) from exc
            if options.cpu_offload:
                self.pipe.enable_model_cpu_offload()
            else:
                self._move_to_device(source)
            offload = " with model CPU offload" if options.cpu_offload else ""
            self.description = f"FLUX.2 [{family}] {source} bf16 on {self.device}{offload}{_distilled_note(self.pipe)}"
        self.pipe.set_progress_bar_config(disable=True)
        self.description = ", ".join([self.description, *speed.apply(self.pipe, options)])

    def _move_to_device(self, source: str) -> None:
        import torch

        try:
            self.pipe.to(self.device)
        except torch.OutOfMemoryError as exc:  # [dev] alone is a 32B transformer and a 24B text encoder
            del self.pipe
            torch.cuda.empty_cache()
            raise BackendUnavailable(
                f"{source} does not fit in this GPU's memory: set FLUXRUN_CPU_OFFLOAD=true, or choose a smaller "
                f"model with {SETTING} (klein-4b, klein-9b)."
            ) from exc

    @staticmethod
    def _family(source: str) -> str:
        """Which FLUX.2 pipeline ``source`` holds, from its model_index.json (one small file)."""
        from diffusers import DiffusionPipeline

        try:
            index = DiffusionPipeline.load_config(source)
        except Exception as exc:
            raise BackendUnavailable(hub_error_message(source, exc, SETTING)) from exc
        class_name = index.get("_class_name")
        if class_name not in FAMILY_OF_CLASS:
            raise BackendUnavailable(
                f"{source} holds a {class_name}, not a FLUX.2 text-to-image pipeline "
                f"({' or '.join(FAMILY_OF_CLASS)}): check {SETTING}."
            )
        return FAMILY_OF_CLASS[class_name]

    @staticmethod
    def _load(source: str | Path, family: str, dtype: Any, **config: Any) -> Any:
        from diffusers import Flux2KleinPipeline, Flux2Pipeline

        if family == "dev":
            return Flux2Pipeline.from_pretrained(source, torch_dtype=dtype)
        return Flux2KleinPipeline.from_pretrained(source, torch_dtype=dtype, **config)

    def generate(self, request: GenerationRequest, job: Job) -> list[Image]:
        import torch

        def make(seed: int, step_end: StepEnd) -> Image:
            with torch.inference_mode():
                return self.pipe(
                    prompt=request.prompt,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance,
                    generator=torch.Generator(self.device).manual_seed(seed),
                    callback_on_step_end=step_end,
                ).images[0]

        return each_seed(request, job, make)


def resolve_source(value: str) -> str:
    """The hub repo id or local folder ``FLUXRUN_FLUX2_MODEL`` names."""
    if value in MODELS:
        return MODELS[value].repo
    path = Path(value).expanduser()
    if path.is_dir():
        return str(path)
    if value.startswith(("/", "./", "../", "~")):
        raise BackendUnavailable(f"{SETTING}: {value} is not a folder.")
    if value.count("/") != 1:
        raise BackendUnavailable(
            f"{SETTING}: must be one of {', '.join(MODELS)}, a hub repo id (owner/name) or a local folder "
            f"(got {value!r})."
        )
    return value


def _distilled_note(pipe: Any) -> str:
    if getattr(pipe.config, "is_distilled", False):
        return " (step-distilled: guidance has no effect)"
    return ""
