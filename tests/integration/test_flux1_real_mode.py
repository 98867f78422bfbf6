"""The real-weights code path of the FLUX.1 backend, fed local folders (no hub here)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fluxrun.backends.base import BackendOptions, RecordingJob
from fluxrun.backends.flux1 import Flux1Backend, with_trigger_words
from fluxrun.backends.tiny import ensure_tiny_flux1, ensure_tiny_lora
from fluxrun.errors import BackendUnavailable, TaskStopped
from fluxrun.tools.catalog import find_tool

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    ensure_tiny_lora(folder, "flat-pixel-art")
    return folder


def _request(**inputs):
    return PIXEL.to_request(PIXEL.validate({"prompt": "a cat", "steps": 2, "width": 128, "height": 128,
                                            "seed": 3, **inputs}))


def test_real_mode_loads_a_local_base_and_a_safetensors_lora(models: Path) -> None:
    lora_file = ensure_tiny_lora(models, "flat-pixel-art") / "pytorch_lora_weights.safetensors"
    backend = Flux1Backend(BackendOptions(models="real", models_dir=models, flux1_base=str(ensure_tiny_flux1(models)),
                                          lora_sources={"flat-pixel-art": str(lora_file)}))
    assert "bf16" in backend.description
    job = RecordingJob()
    with_lora = backend.generate(_request(), job)
    assert job.notes == []
    base = backend.generate(replace(_request(), lora=None), RecordingJob())
    assert not np.array_equal(np.asarray(with_lora[0]), np.asarray(base[0]))


def test_real_mode_without_a_configured_lora_runs_the_base_and_says_so(models: Path) -> None:
    backend = Flux1Backend(BackendOptions(models="real", models_dir=models, flux1_base=str(ensure_tiny_flux1(models))))
    job = RecordingJob()
    [image] = backend.generate(_request(), job)
    assert image.size == (128, 128)
    assert job.notes == [
        "LoRA 'flat-pixel-art' is not configured (set FLUXRUN_LORA_FLAT_PIXEL_ART); ran the base model"
    ]


def test_unreachable_weights_give_an_actionable_message(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(models / "empty-hf-home"))
    with pytest.raises(BackendUnavailable) as caught:
        Flux1Backend(BackendOptions(models="real", models_dir=models, flux1_base="black-forest-labs/FLUX.1-dev"))
    message = str(caught.value)
    assert "black-forest-labs/FLUX.1-dev" in message and "FLUXRUN_FLUX1_BASE" in message
    assert "not in the local Hugging Face cache" in message


def test_a_stop_raised_from_the_step_callback_leaves_at_once(models: Path) -> None:
    backend = Flux1Backend(BackendOptions(models="tiny", models_dir=models))
    job = RecordingJob(stop_at=2)
    with pytest.raises(TaskStopped):
        backend.generate(_request(steps=10, samples=2), job)
    assert job.steps == [(1, 20), (2, 20)]


def test_trigger_words_are_added_once() -> None:
    assert with_trigger_words("a cat", "dpixeBw style") == "a cat, dpixeBw style"
    assert with_trigger_words("a cat, DPIXEBW STYLE", "dpixeBw style") == "a cat, DPIXEBW STYLE"
    assert with_trigger_words("a cat,", None) == "a cat,"
