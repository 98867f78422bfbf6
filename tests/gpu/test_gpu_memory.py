"""On a CUDA GPU: the numbers a worker puts in the registry (and /metrics) for its GPU memory.

Skipped without CUDA.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_gpu_memory_follows_what_torch_holds() -> None:
    from fluxrun.backends.memory import gpu_memory

    before = gpu_memory("cuda")
    assert before is not None
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MiB
    allocated, reserved, total = gpu_memory("cuda:0")
    assert allocated >= before[0] + block.numel() and reserved >= allocated
    assert total == torch.cuda.get_device_properties(0).total_memory
    assert gpu_memory("cpu") is None
