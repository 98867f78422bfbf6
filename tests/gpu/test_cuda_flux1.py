"""On a CUDA GPU: the real-weights path (bf16 on cuda, LoRA) with the tiny architecture.

Skipped without CUDA; run wherever a GPU is present (the arithmetic of the full-size
models is the benchmarks' job, under bench/).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_flux1_bf16_on_cuda_with_lora(tmp_path: Path) -> None:
    import numpy as np

    from fluxrun.backends.base import BackendOptions, RecordingJob
    from fluxrun.backends.flux1 import Flux1Backend
    from fluxrun.backends.tiny import ensure_tiny_flux1, ensure_tiny_lora
    from fluxrun.tools.catalog import find_tool

    lora = ensure_tiny_lora(tmp_path, "flat-pixel-art")
    backend = Flux1Backend(BackendOptions(models="real", models_dir=tmp_path, device="cuda",
                                          flux1_base=str(ensure_tiny_flux1(tmp_path)),
                                          lora_sources={"flat-pixel-art": str(lora)}))
    assert backend.pipe.transformer.dtype == torch.bfloat16 and backend.pipe.device.type == "cuda"
    tool = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
    request = tool.to_request(tool.validate({"prompt": "a cat", "samples": 2, "seed": 5}))  # 1024x1024, 12 steps
    job = RecordingJob()
    images = backend.generate(request, job)
    assert [i.size for i in images] == [(1024, 1024)] * 2 and [done for done, _ in job.steps] == list(range(1, 25))
    assert job.notes == []
    again = backend.generate(request, RecordingJob())
    assert np.array_equal(np.asarray(images[1]), np.asarray(again[1]))
