"""Several LoRA tools over one resident FLUX.1 base: named adapters when eager, one
hotswapped slot when the transformer is compiled (no recompiles on a switch)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fluxrun.backends.base import BackendOptions, RecordingJob
from fluxrun.backends.flux1 import Flux1Backend
from fluxrun.backends.lora import HotswapSlot, NamedAdapters, source_problem
from fluxrun.backends.tiny import ensure_tiny_flux1, ensure_tiny_lora
from fluxrun.errors import BackendUnavailable
from fluxrun.tools.catalog import find_tool

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
REALISM = find_tool("fluxrun", "Realism-FLUX")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _request(tool=PIXEL, **inputs):
    return tool.to_request(tool.validate({"prompt": "a cat", "steps": 2, "width": 128, "height": 128, "seed": 3,
                                          **inputs}))


def _pixels(backend: Flux1Backend, request) -> np.ndarray:
    [image] = backend.generate(request, RecordingJob())
    return np.asarray(image).astype(int)


def _custom_lora(models: Path, name: str, rank: int, alpha: int, targets: list[str]) -> Path:
    """A tiny LoRA unlike the standard ones: its own rank, alpha (kept in its metadata) and layers."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    out = models / f"custom-{name}"
    if out.exists():
        return out
    torch.manual_seed(rank * 100 + alpha)
    transformer = FluxTransformer2DModel.from_pretrained(ensure_tiny_flux1(models) / "transformer")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    transformer.add_adapter(config)
    FluxPipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   transformer_lora_adapter_metadata=config.to_dict())
    return out


@pytest.fixture(scope="module")
def eager(models: Path) -> Flux1Backend:
    return Flux1Backend(BackendOptions(models="tiny", models_dir=models))


def test_two_lora_tools_alternate_on_one_resident_base(eager: Flux1Backend) -> None:
    pipe = eager.pipe
    assert isinstance(eager.loras, NamedAdapters)
    pixel = _pixels(eager, _request(PIXEL))
    realism = _pixels(eager, _request(REALISM))
    base = _pixels(eager, replace(_request(PIXEL), lora=None))
    again = _pixels(eager, _request(PIXEL))
    assert eager.pipe is pipe  # one base, never reloaded
    assert sorted(pipe.get_list_adapters()["transformer"]) == ["flat-pixel-art", "realism"]  # each loaded once
    assert not np.array_equal(pixel, realism) and not np.array_equal(pixel, base)
    assert not np.array_equal(realism, base)
    assert np.array_equal(pixel, again)  # switching back gives the same image


def test_hotswap_under_compile_matches_named_adapters_and_never_recompiles(
    models: Path, eager: Flux1Backend
) -> None:
    compiled = Flux1Backend(BackendOptions(models="tiny", models_dir=models, compile=True, compile_backend="eager"))
    assert isinstance(compiled.loras, HotswapSlot) and "compiled" in compiled.description
    requests = [_request(PIXEL), _request(REALISM), replace(_request(PIXEL), lora=None)]
    first = [_pixels(compiled, r) for r in requests]  # compiles once, for this size
    with torch._dynamo.config.patch(error_on_recompile=True):  # any recompile now raises
        second = [_pixels(compiled, r) for r in reversed(requests)][::-1]
    for eager_image, hot, hot_again in zip((_pixels(eager, r) for r in requests), first, second):
        assert np.abs(eager_image - hot).max() <= 1  # same image, up to float summation order
        assert np.array_equal(hot, hot_again)


def test_hotswap_folds_each_loras_own_scale_and_layers(models: Path) -> None:
    # alpha != rank (scale 2 and 0.5), different ranks, different layers: the slot covers them all.
    sources = {
        "realism": str(ensure_tiny_lora(models, "realism")),  # instead of its hub default: no hub here
        "wide": str(_custom_lora(models, "wide", rank=8, alpha=16, targets=["to_q", "to_k", "to_v", "proj_out"])),
        "narrow": str(_custom_lora(models, "narrow", rank=2, alpha=1, targets=["to_q", "ff.net.2"])),
    }
    eager = Flux1Backend(BackendOptions(models="real", models_dir=models, flux1_base=str(ensure_tiny_flux1(models)),
                                        lora_sources=sources))
    hot = Flux1Backend(BackendOptions(models="real", models_dir=models, flux1_base=str(ensure_tiny_flux1(models)),
                                      lora_sources=sources, compile=True, compile_backend="eager"))
    for name in ("wide", "narrow", None, "wide"):
        request = replace(_request(), lora=name)
        assert np.abs(_pixels(eager, request) - _pixels(hot, request)).max() <= 1, name


def test_a_tool_whose_lora_is_not_configured_runs_the_base_and_says_so(models: Path) -> None:
    backend = Flux1Backend(BackendOptions(models="real", models_dir=models, flux1_base=str(ensure_tiny_flux1(models)),
                                          lora_sources={"realism": str(ensure_tiny_lora(models, "realism"))},
                                          compile=True, compile_backend="eager"))
    job = RecordingJob()
    backend.generate(_request(PIXEL), job)
    assert job.notes == [
        "LoRA 'flat-pixel-art' is not configured (set FLUXRUN_LORA_FLAT_PIXEL_ART); ran the base model"
    ]


def test_a_missing_lora_file_is_named_with_what_to_do(models: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "pixel.safetensors")
    problem = source_problem("flat-pixel-art", missing)
    assert problem == (f"FLUXRUN_LORA_FLAT_PIXEL_ART={missing}: no such file or folder. Point it at the LoRA's "
                       ".safetensors file, a folder holding one, or a hub repo id (owner/name).")
    assert source_problem("flat-pixel-art", "someone/some-lora") is None  # a hub id: checked when loading
    backend = Flux1Backend(BackendOptions(models="real", models_dir=models, flux1_base=str(ensure_tiny_flux1(models)),
                                          lora_sources={"flat-pixel-art": missing}))
    with pytest.raises(BackendUnavailable, match="no such file or folder"):
        backend.generate(_request(PIXEL), RecordingJob())
    # The compiled path reads every LoRA at start: the broken one fails its own tool's tasks only.
    compiled = Flux1Backend(BackendOptions(models="real", models_dir=models, flux1_base=str(ensure_tiny_flux1(models)),
                                           lora_sources={"flat-pixel-art": missing,
                                                         "realism": str(ensure_tiny_lora(models, "realism"))},
                                           compile=True, compile_backend="eager"))
    with pytest.raises(BackendUnavailable, match="no such file or folder"):
        compiled.generate(_request(PIXEL), RecordingJob())
    [image] = compiled.generate(_request(REALISM), RecordingJob())
    assert image.size == (128, 128)
