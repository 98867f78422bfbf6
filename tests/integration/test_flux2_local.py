"""The local FLUX.2 backend on tiny random-weight pipelines of both architectures, on the CPU."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxrun.backends.base import BackendOptions, RecordingJob
from fluxrun.backends.flux2 import Flux2Backend
from fluxrun.backends.registry import load_backend
from fluxrun.backends.tiny_flux2 import ensure_tiny_flux2
from fluxrun.errors import BackendUnavailable, TaskStopped
from fluxrun.imaging.encode import encode_image
from fluxrun.tools.catalog import find_tool

FLUX2 = find_tool("black-forest-labs", "flux-2-flex-t2i")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def dev(models: Path) -> Flux2Backend:
    return Flux2Backend(BackendOptions(models="tiny", models_dir=models))


def _request(**inputs):
    return FLUX2.to_request(FLUX2.validate({"prompt": "a lighthouse", "steps": 2, "width": 128, "height": 128,
                                            "seed": 7, **inputs}))


def _pixels(backend: Flux2Backend, request) -> np.ndarray:
    [image] = backend.generate(request, RecordingJob())
    return np.asarray(image)


def test_the_registry_gives_the_dev_pipeline_by_default(models: Path) -> None:
    backend = load_backend("flux2", BackendOptions(models="tiny", models_dir=models))
    assert isinstance(backend, Flux2Backend)
    assert backend.description == (
        "FLUX.2 [dev] tiny random-weight pipeline on cpu (no GPU or --models tiny: images are noise)"
    )


def test_images_have_the_requested_size_and_encode_as_png_and_jpeg(dev: Flux2Backend) -> None:
    [image] = dev.generate(_request(width=192, height=128), RecordingJob())
    assert image.size == (192, 128)
    for output_format, pil_format in (("png", "PNG"), ("jpeg", "JPEG")):
        encoded = encode_image(image, output_format)
        opened = Image.open(io.BytesIO(encoded.data))
        assert opened.format == pil_format and opened.size == (192, 128)


def test_same_seed_same_image_other_seed_other_image(dev: Flux2Backend) -> None:
    first = _pixels(dev, _request(seed=11))
    assert np.array_equal(first, _pixels(dev, _request(seed=11)))
    assert not np.array_equal(first, _pixels(dev, _request(seed=12)))


def test_image_i_is_made_from_seed_plus_i_whatever_the_number_of_samples(dev: Flux2Backend) -> None:
    job = RecordingJob()
    pair = dev.generate(replace(_request(seed=5), samples=2), job)
    assert job.steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert np.array_equal(np.asarray(pair[1]), _pixels(dev, _request(seed=6)))
    assert not np.array_equal(np.asarray(pair[0]), np.asarray(pair[1]))


def test_steps_and_guidance_are_honoured(dev: Flux2Backend) -> None:
    job = RecordingJob()
    [three_steps] = dev.generate(_request(steps=3), job)
    assert job.steps == [(1, 3), (2, 3), (3, 3)]
    assert not np.array_equal(np.asarray(three_steps), _pixels(dev, _request(steps=2)))
    # [dev] takes guidance as an input of the transformer.
    assert not np.array_equal(_pixels(dev, _request(guidance=2)), _pixels(dev, _request(guidance=8)))


def test_the_prompt_reaches_the_model_through_the_tokenizer(dev: Flux2Backend) -> None:
    assert not np.array_equal(_pixels(dev, _request(prompt="a lighthouse")), _pixels(dev, _request(prompt="a cat")))


def test_a_stop_raised_from_the_step_callback_leaves_at_once(dev: Flux2Backend) -> None:
    job = RecordingJob(stop_at=2)
    with pytest.raises(TaskStopped):
        dev.generate(_request(steps=10), job)
    assert job.steps == [(1, 10), (2, 10)]


def test_klein_is_selectable_and_says_when_guidance_has_no_effect(models: Path) -> None:
    distilled = Flux2Backend(BackendOptions(models="tiny", models_dir=models, flux2_model="klein-4b"))
    assert distilled.description == (
        "FLUX.2 [klein] tiny random-weight pipeline on cpu (step-distilled: guidance has no effect) "
        "(no GPU or --models tiny: images are noise)"
    )
    job = RecordingJob()
    [image] = distilled.generate(_request(width=160, steps=3), job)
    assert image.size == (160, 128) and job.steps == [(1, 3), (2, 3), (3, 3)]
    assert np.array_equal(_pixels(distilled, _request(guidance=2)), _pixels(distilled, _request(guidance=8)))
    assert not np.array_equal(_pixels(distilled, _request(seed=1)), _pixels(distilled, _request(seed=2)))

    # The undistilled [klein] Base runs classifier-free guidance: guidance changes the image.
    base = Flux2Backend(BackendOptions(models="tiny", models_dir=models, flux2_model="klein-base-4b"))
    assert "step-distilled" not in base.description
    assert not np.array_equal(_pixels(base, _request(guidance=2)), _pixels(base, _request(guidance=8)))


@pytest.mark.parametrize("family", ["dev", "klein"])
def test_real_mode_loads_a_local_folder_and_finds_its_pipeline(models: Path, family: str) -> None:
    folder = ensure_tiny_flux2(models, family)
    backend = Flux2Backend(BackendOptions(models="real", models_dir=models, flux2_model=str(folder)))
    assert backend.description == f"FLUX.2 [{family}] {folder} bf16 on cpu"
    job = RecordingJob()
    [image] = backend.generate(_request(), job)
    assert image.size == (128, 128) and job.steps == [(1, 2), (2, 2)]


def test_a_folder_of_another_pipeline_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(BackendUnavailable) as caught:
        Flux2Backend(BackendOptions(models="real", models_dir=tmp_path, flux2_model=str(tmp_path)))
    assert str(caught.value) == (
        f"{tmp_path} holds a FluxPipeline, not a FLUX.2 text-to-image pipeline "
        "(Flux2Pipeline or Flux2KleinPipeline): check FLUXRUN_FLUX2_MODEL."
    )


@pytest.mark.parametrize(("value", "message"), [
    ("klein-5b", "FLUXRUN_FLUX2_MODEL: must be one of dev, klein-4b, klein-9b, klein-base-4b, klein-base-9b, "
                 "a hub repo id (owner/name) or a local folder (got 'klein-5b')."),
    ("/no/such/folder", "FLUXRUN_FLUX2_MODEL: /no/such/folder is not a folder."),
])
def test_a_setting_that_names_nothing_says_what_it_may_be(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        Flux2Backend(BackendOptions(models="real", models_dir=tmp_path, flux2_model=value))
    assert str(caught.value) == message


def test_unreachable_weights_give_an_actionable_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # The hub client reads these at import: set them where it looks, so no request is even tried.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(BackendUnavailable) as caught:
        Flux2Backend(BackendOptions(models="real", models_dir=tmp_path, flux2_model="dev"))
    message = str(caught.value)
    assert "black-forest-labs/FLUX.2-dev" in message and "FLUXRUN_FLUX2_MODEL" in message
    assert "not in the local Hugging Face cache" in message


def test_a_model_too_big_for_the_gpu_says_what_to_do(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from diffusers import DiffusionPipeline

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 120.00 MiB")

    monkeypatch.setattr(DiffusionPipeline, "to", out_of_memory)  # what moving [dev] to an 80 GB GPU does
    folder = ensure_tiny_flux2(models, "dev")
    with pytest.raises(BackendUnavailable) as caught:
        Flux2Backend(BackendOptions(models="real", models_dir=models, device="cuda", flux2_model=str(folder)))
    assert str(caught.value) == (
        f"{folder} does not fit in this GPU's memory: set FLUXRUN_CPU_OFFLOAD=true, or choose a smaller model "
        "with FLUXRUN_FLUX2_MODEL (klein-4b, klein-9b)."
    )
