"""On a CUDA GPU: the worker's own speed choice for this GPU, applied to the tiny FLUX.1
architecture, run through inductor (Triton kernels), with a LoRA swap.

Skipped without CUDA. On capability 8.9 and newer with torchao installed this is the fp8 path
that the CPU tests (tests/integration/test_speed_paths.py) can reach only with torchao's hardware
check lifted; here nothing is lifted. Speed is bench/gpu_flux.py's job, this is correctness.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_the_auto_speed_path_on_this_gpu_swaps_loras_without_recompiling(tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np

    from fluxrun.backends import speed
    from fluxrun.backends.base import BackendOptions, RecordingJob
    from fluxrun.backends.flux1 import Flux1Backend
    from fluxrun.backends.tiny import ensure_tiny_flux1, ensure_tiny_lora
    from fluxrun.config import Settings
    from fluxrun.tools.catalog import find_tool
    from fluxrun.worker.startup import choose_worker_speed

    pixel, realism = find_tool("desertPixel", "Flat-Pixel-Art-FLUX"), find_tool("fluxrun", "Realism-FLUX")
    loras = {name: str(ensure_tiny_lora(tmp_path, name)) for name in ("flat-pixel-art", "realism")}
    plain = BackendOptions(models="real", models_dir=tmp_path, device="cuda",
                           flux1_base=str(ensure_tiny_flux1(tmp_path)), lora_sources=loras)
    choice = choose_worker_speed(Settings(), "cuda")  # every setting "auto", as a worker starts
    fast = replace(plain, compile=choice.compile, compile_mode=choice.compile_mode, quantize=choice.quantize,
                   attention=choice.attention, compile_vae=choice.compile_vae)
    if torch.cuda.get_device_capability() >= speed.FP8_CAPABILITY and choice.quantize != "fp8":
        pytest.fail(f"fp8 hardware, but auto chose {choice.summary()}: {choice.reasons}")
    reference, backend = Flux1Backend(plain), Flux1Backend(fast)

    def pixels(b: Flux1Backend, tool, seed: int = 3) -> np.ndarray:
        request = tool.to_request(tool.validate({"prompt": "a cat", "steps": 4, "width": 256, "height": 256,
                                                 "seed": seed}))
        [image] = b.generate(request, RecordingJob())
        return np.asarray(image).astype(int)

    seeds_apart = np.abs(pixels(reference, pixel) - pixels(reference, pixel, seed=4)).mean()
    first = [pixels(backend, tool) for tool in (pixel, realism)]
    for tool, image in zip((pixel, realism), first):
        assert np.abs(image - pixels(reference, tool)).mean() < seeds_apart / 10, tool.slug
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = [pixels(backend, tool) for tool in (realism, pixel)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
