"""Generation that survives a GPU out-of-memory error.

A CUDA OOM fails the task that caused it, not the worker: the memory the failed call held
is released and the next task runs. The release happens outside the ``except`` block on
purpose: inside it, the exception's traceback still references the frames of the failed
call and every tensor they hold, so emptying the cache there frees nothing.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from fluxrun.backends.base import Backend, Job
from fluxrun.errors import OutOfMemory
from fluxrun.tools.request import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from fluxrun.imaging.encode import EncodedImage


def generate(backend: Backend, request: GenerationRequest, job: Job) -> list[Image | EncodedImage]:
    """``backend.generate``, with an out-of-memory error turned into OutOfMemory after the
    memory was given back."""
    import torch

    reason: str | None = None
    try:
        return backend.generate(request, job)
    except torch.cuda.OutOfMemoryError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "CUDA out of memory"
    release_memory()
    raise OutOfMemory(
        f"The GPU ran out of memory making {request.samples} image(s) of {request.width}x{request.height} "
        f"({reason}). Try a smaller size or fewer samples; on a small GPU the operator can set "
        "FLUXRUN_CPU_OFFLOAD=true."
    )


def release_memory() -> None:
    import torch

    gc.collect()  # the failed call's frames and tensors sit in reference cycles with its traceback
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_memory(device: str) -> tuple[int, int, int] | None:
    """(allocated, reserved, total) bytes of a CUDA device as torch sees it; None off CUDA.

    Cheap (no synchronisation), so the worker's registry heartbeat reads it every beat."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    _free, total = torch.cuda.mem_get_info(index)
    return int(torch.cuda.memory_allocated(index)), int(torch.cuda.memory_reserved(index)), int(total)
