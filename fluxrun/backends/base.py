"""The contract between the worker and a way of making images.

A backend is loaded once per worker process and serves many tasks. ``generate`` calls
``on_step(done, total)`` after every denoising step, counting across all images of the
task; the worker uses it for progress and raises ``fluxrun.errors.TaskStopped`` from it
when the task was killed. A backend must let that exception propagate untouched, so a
kill stops the work within one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from fluxrun.tools.request import GenerationRequest

if TYPE_CHECKING:  # PIL is a worker-side dependency
    from PIL.Image import Image

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class BackendOptions:
    """Plain values a backend needs from the settings (backends never read settings)."""

    models: str  # "tiny" | "real"
    models_dir: Path  # where tiny models are built and kept
    device: str = "cpu"  # "cuda" | "cpu"
    flux1_base: str = "black-forest-labs/FLUX.1-dev"  # hub repo id or local folder
    lora_sources: dict[str, str] = field(default_factory=dict)  # adapter name -> hub repo or local path
    cpu_offload: bool = False


class Backend(Protocol):
    #: One line saying what this backend really runs, shown in each task's debugoutput.
    description: str

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image]:
        """Make ``request.samples`` images, in seed order."""
        ...
