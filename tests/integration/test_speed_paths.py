"""The worker's optimised paths on the tiny FLUX pipelines, on the CPU: fp8 (torchao), the attention
backend, the compiled VAE, shape handling across sizes, warm-up sizes; each can be turned off.

Compilation uses torch.compile's "eager" backend (dynamo traces and guards exactly as with
inductor, so recompiles are counted the same, without inductor's C++ build time).

fp8 on a CPU: torchao refuses float8 dynamic quantization off CUDA capability >= 8.9 (a check
before it quantizes), but torch's CPU ``_scaled_mm`` runs float8 matrix products, so with that
one check lifted (``fp8_anywhere``) the very code the GPU runs is exercised here: the layer
choice, the LoRA slot over fp8 base layers, hotswap and compile over them. Speed is for the GPU.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fluxrun.backends import speed
from fluxrun.backends.base import BackendOptions, RecordingJob
from fluxrun.backends.flux1 import Flux1Backend
from fluxrun.backends.flux2 import Flux2Backend
from fluxrun.backends.lora import HotswapSlot
from fluxrun.backends.registry import BackendCache
from fluxrun.backends.tiny import ensure_tiny_flux1
from fluxrun.config import Settings
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.startup import choose_worker_speed, wants_warmup, warm_up

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
REALISM = find_tool("fluxrun", "Realism-FLUX")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def fp8_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lift torchao's hardware check (see the module docstring); nothing else is changed."""
    import torchao.quantization.quant_api as quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)


def _request(tool=PIXEL, **inputs):
    return tool.to_request(tool.validate({"prompt": "a cat", "steps": 2, "width": 128, "height": 128, "seed": 3,
                                          **inputs}))


def _pixels(backend, request) -> np.ndarray:
    [image] = backend.generate(request, RecordingJob())
    return np.asarray(image).astype(int)


def _bf16_pipe(models: Path):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(ensure_tiny_flux1(models), torch_dtype=torch.bfloat16)


def test_fp8_picks_the_block_matmuls_of_the_real_flux1_architecture() -> None:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):  # full size, no memory: only the layer shapes matter here
        transformer = FluxTransformer2DModel(guidance_embeds=True)  # FLUX.1-dev's configuration
    names = speed.fp8_layer_names(transformer)
    double = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
              "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
              "ff_context.net.2"]
    single = ["proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v"]
    assert names == ([f"transformer_blocks.{i}.{n}" for i in range(19) for n in double]
                     + [f"single_transformer_blocks.{i}.{n}" for i in range(38) for n in single])
    # Left in bf16: the per-image modulations, the embedders and the final projection (64 outputs, once per step).
    assert not any(".norm" in name for name in names) and "proj_out" not in names and "x_embedder" not in names


def test_fp8_base_layers_under_a_hotswapped_lora_slot_match_bf16_and_never_recompile(
    models: Path, fp8_anywhere: None
) -> None:
    reference = Flux1Backend(BackendOptions(models="tiny", models_dir=models), pipe=_bf16_pipe(models))
    fast = Flux1Backend(BackendOptions(models="tiny", models_dir=models, quantize="fp8", compile=True,
                                       compile_backend="eager"), pipe=_bf16_pipe(models))
    assert isinstance(fast.loras, HotswapSlot) and "fp8 (17 layers)" in fast.description
    to_q = fast.pipe.transformer.transformer_blocks[0].attn.to_q  # a LoRA-wrapped layer
    assert speed.is_fp8(to_q.base_layer)
    assert to_q.lora_A["fluxrun-slot"].weight.dtype == torch.bfloat16  # the slot's own layers are not quantized
    assert not speed.is_fp8(fast.pipe.transformer.transformer_blocks[0].norm1.linear)

    requests = [_request(PIXEL), _request(REALISM), replace(_request(PIXEL), lora=None)]
    seeds_apart = np.abs(_pixels(reference, requests[0]) - _pixels(reference, _request(PIXEL, seed=4))).mean()
    fp8 = [_pixels(fast, r) for r in requests]
    for request, image in zip(requests, fp8):
        # fp8 (e4m3: 3 mantissa bits, <= 6% rounding per value, averaging out over each dot
        # product) moves an image far less than a different seed does: under a tenth of that.
        assert np.abs(image - _pixels(reference, request)).mean() < seeds_apart / 10, request.lora
    assert not np.array_equal(fp8[0], fp8[1]) and not np.array_equal(fp8[0], fp8[2])  # the LoRAs still act
    with torch._dynamo.config.patch(error_on_recompile=True):  # any recompile now raises
        again = [_pixels(fast, r) for r in reversed(requests)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(fp8, again))


def test_the_gpu_default_path_through_inductor_itself(models: Path, fp8_anywhere: None) -> None:
    """The other tests trace with the "eager" backend; this one lets inductor generate and build
    the kernels (C++ on the CPU, Triton on a GPU) for what a Hopper worker runs by default: fp8
    base layers under the LoRA slot, regionally compiled. A lowering inductor cannot do (a
    float8 subclass op, a graph break under fullgraph) fails here, not on the first GPU."""
    reference = Flux1Backend(BackendOptions(models="tiny", models_dir=models), pipe=_bf16_pipe(models))
    fast = Flux1Backend(BackendOptions(models="tiny", models_dir=models, quantize="fp8", compile=True,
                                       compile_backend="inductor"), pipe=_bf16_pipe(models))
    assert "transformer compiled (inductor, default)" in fast.description and "fp8" in fast.description
    requests = [_request(PIXEL), _request(REALISM)]
    seeds_apart = np.abs(_pixels(reference, requests[0]) - _pixels(reference, _request(PIXEL, seed=4))).mean()
    first = [_pixels(fast, r) for r in requests]  # compiles once, then the swap to the second LoRA
    for request, image in zip(requests, first):
        # inductor's fused kernels round differently from eager (about half a level on average
        # here, with or without fp8): still far below what another seed changes.
        assert np.abs(image - _pixels(reference, request)).mean() < seeds_apart / 10, request.lora
    assert not np.array_equal(first[0], first[1])
    with torch._dynamo.config.patch(error_on_recompile=True):  # swapping back and forth compiles nothing
        again = [_pixels(fast, r) for r in reversed(requests)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_quantize_none_leaves_every_layer_in_the_pipelines_dtype(models: Path) -> None:
    backend = Flux1Backend(BackendOptions(models="tiny", models_dir=models, quantize="none", compile=True,
                                          compile_backend="eager"), pipe=_bf16_pipe(models))
    assert not any(speed.is_fp8(m) for m in backend.pipe.transformer.modules())
    assert {p.dtype for p in backend.pipe.transformer.parameters()} == {torch.bfloat16}
    assert "fp8" not in backend.description


def test_the_attention_backend_is_set_on_every_attention_layer(models: Path) -> None:
    native = Flux1Backend(BackendOptions(models="tiny", models_dir=models))
    math = Flux1Backend(BackendOptions(models="tiny", models_dir=models, attention="math"))
    backends = {str(getattr(m.processor._attention_backend, "value", m.processor._attention_backend))
                for m in math.pipe.transformer.modules() if hasattr(getattr(m, "processor", None), "_attention_backend")}
    assert backends == {"_native_math"} and "attention math" in math.description
    assert np.abs(_pixels(native, _request()) - _pixels(math, _request())).max() <= 1


def test_two_warmed_sizes_leave_no_size_to_compile_and_the_vae_compiles_too(models: Path) -> None:
    eager = Flux1Backend(BackendOptions(models="tiny", models_dir=models))
    fast = Flux1Backend(BackendOptions(models="tiny", models_dir=models, compile=True, compile_vae=True,
                                       compile_backend="eager"))
    assert "VAE compiled" in fast.description
    assert hasattr(fast.pipe.vae.decoder, "_compiled_call_impl")  # nn.Module.compile in place
    # Warm-up: two sizes differing in width, height and token count (as the default sizes do).
    graphs = speed.compiled_graphs()
    for width, height in ((128, 128), (192, 96)):
        _pixels(fast, _request(width=width, height=height))
    assert speed.compiled_graphs() > graphs  # compiled during warm-up, not later
    with torch._dynamo.config.patch(error_on_recompile=True):
        later = {size: _pixels(fast, _request(width=size[0], height=size[1]))
                 for size in ((96, 192), (256, 64), (128, 128), (192, 96))}
    for (width, height), image in later.items():
        assert image.shape == (height, width, 3)
        assert np.abs(image - _pixels(eager, _request(width=width, height=height))).max() <= 1


def test_flux2_takes_the_same_options(models: Path) -> None:
    fast = Flux2Backend(BackendOptions(models="tiny", models_dir=models, flux2_model="klein-4b", compile=True,
                                       compile_vae=True, attention="math", compile_backend="eager"))
    assert fast.description.endswith("attention math, transformer compiled (eager, default), VAE compiled")
    plain = Flux2Backend(BackendOptions(models="tiny", models_dir=models, flux2_model="klein-4b"))
    tool = find_tool("black-forest-labs", "flux-2-flex-t2i")
    request = tool.to_request(tool.validate({"prompt": "a cat", "steps": 2, "width": 128, "height": 128, "seed": 1}))
    assert np.abs(_pixels(fast, request) - _pixels(plain, request)).max() <= 1


def test_warm_up_runs_each_size_per_tool_and_skips_a_size_the_tool_refuses(
    models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = BackendCache(BackendOptions(models="tiny", models_dir=models))
    sizes: list[tuple[int, int, int]] = []
    backend = cache.get("flux1")
    original = backend.generate
    backend.generate = lambda request, job: sizes.append((request.width, request.height, request.steps)) or original(
        request, job)
    with caplog.at_level(logging.INFO, logger="fluxrun.worker"):
        warm_up(cache, (PIXEL,), ((128, 128), (192, 96), (4096, 4096)))
    assert sizes == [(128, 128, 2), (192, 96, 2)]
    assert ("warm-up of desertPixel/Flat-Pixel-Art-FLUX at 4096x4096 skipped: width: must be between 64 and 2048 (got 4096)"
            in caplog.messages)


def test_the_worker_says_at_start_what_it_turned_on_and_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fluxrun.worker"):
        choice = choose_worker_speed(Settings(compile="auto", quantize="auto", attention="auto"), "cpu")
    assert caplog.messages == [
        "speed on cpu: compile off, bf16 weights, attention native, VAE eager. Why: compile off: auto, cpu is not a "
        "CUDA GPU of capability >= 8.0; bf16: auto, cpu has no fp8 tensor cores; attention native: auto, torch SDPA "
        "off CUDA; VAE eager: auto, as compile"
    ]
    assert not wants_warmup(Settings(warmup="auto"), choice)  # auto: only when compiled
    assert wants_warmup(Settings(warmup="on"), choice)
    assert wants_warmup(Settings(warmup="auto"), replace(choice, compile=True))
