"""bench/gpu_flux.py end to end on the tiny configurations (CPU), and its FLOP count on the
full-size FLUX.1-dev architecture (meta device: shapes only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"device", "model", "width", "height", "steps", "baseline_s", "fluxrun_s", "speedup", "lora_swap_s",
          "recompiles_after_swap", "floor_fraction", "date", "versions"}


def test_the_harness_writes_every_field_and_the_lora_swap_does_not_recompile(tmp_path: Path) -> None:
    # Compile forced on (auto is off on a CPU) with the "eager" backend: dynamo guards and
    # recompiles as with inductor, so the count after the swap means what it means on the GPU.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLUXRUN_COMPILE": "on"}
    done = subprocess.run(
        [sys.executable, "bench/gpu_flux.py", "--tiny", "--steps", "2", "--size", "64x64", "--runs", "1",
         "--compile-backend", "eager", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [written] = list(tmp_path.glob("*.json"))
    result = json.loads(written.read_text())
    assert FIELDS <= set(result), FIELDS - set(result)
    assert (result["model"], result["width"], result["height"], result["steps"]) == ("flux1-tiny", 64, 64, 2)
    assert result["recompiles_after_swap"] == 0
    assert result["baseline_s"] > 0 and result["fluxrun_s"] > 0 and result["lora_swap_s"] > 0
    assert result["speedup"] == round(result["baseline_s"] / result["fluxrun_s"], 3) or abs(
        result["speedup"] - result["baseline_s"] / result["fluxrun_s"]) < 0.01
    assert 0 < result["floor_fraction"] < 1
    assert result["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "transformer compiled (eager" in result["fluxrun_options"] and "LoRA hotswap" in result["fluxrun_options"]
    assert "flux1" in done.stdout and "speedup" in done.stdout  # the printed table


def test_the_flop_count_of_flux1_dev_at_1024_is_the_hand_count() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_flux
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**gpu_flux.FLUX1_TRANSFORMER)
    flops = gpu_flux.transformer_flops(transformer, image_tokens=4096, text_tokens=512)
    d, image, text = 3072, 4096, 512
    tokens = image + text
    # Double blocks: q, k, v, out (4 d^2) + MLP 4x (8 d^2) per stream, image and text; single blocks:
    # q, k, v (3 d^2) + MLP in (4 d^2) + fused out (5 d^2) over all tokens; QK^T and AV over all tokens.
    matrices = 2 * (19 * 12 * tokens * d * d + 38 * 12 * tokens * d * d)
    attention = 57 * 2 * (2 * tokens * tokens * d)
    assert flops.attention == attention
    assert abs(flops.linear - matrices) / matrices < 0.005  # the rest: embedders, modulations, proj_out
    assert 74e12 < flops.total < 75e12
