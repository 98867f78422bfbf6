"""A task's images, each made alone from its own seed, with progress counted across them.

Image i of a task is made from ``seed + i`` in a pipeline call of its own, so it is the same
image whatever ``samples`` is. Both FLUX backends make their images this way; only the
pipeline call differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fluxrun.backends.base import Job
from fluxrun.tools.request import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

# diffusers' callback_on_step_end(pipe, step, timestep, tensors) -> tensors
StepEnd = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
# (pipe, the tensors of callback_on_step_end) -> a picture of the work so far
Previewer = Callable[[Any, dict[str, Any]], "Image"]


def each_seed(
    request: GenerationRequest, job: Job, make: Callable[[int, StepEnd], Image], preview: Previewer | None = None
) -> list[Image]:
    """``make(seed, step_end)`` once per image; ``step_end`` reports each step to the job
    (raising TaskStopped on a kill, which leaves the pipeline at once: no VAE decode) and
    hands the job a preview when one is wanted and the backend can make one."""
    total = request.steps * request.samples
    images: list[Image] = []
    for index, seed in enumerate(request.image_seeds()):
        done_before = index * request.steps

        def step_end(pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            job.step(done_before + step + 1, total)
            if preview is not None and job.wants_preview():  # only when a client watches, and throttled
                job.preview(preview(pipe, tensors))
            return tensors

        images.append(make(seed, step_end))
    return images
