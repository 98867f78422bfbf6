"""What each "auto" speed setting becomes on each GPU family (fluxrun.backends.speed.choose_speed),
with made-up devices: no GPU needed. And the settings that feed it."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from fluxrun.backends.speed import (
    ATTENTION_CHOICES,
    COMPILE_MODES,
    QUANTIZE,
    SWITCHES,
    DeviceFacts,
    SpeedRequest,
    choose_speed,
)
from fluxrun.config import Attention, CompileMode, Quantize, Settings, Switch
from fluxrun.errors import BackendUnavailable

SDPA = frozenset({"native", "math", "efficient", "cudnn"})
H100 = DeviceFacts("cuda", (9, 0), "NVIDIA H100 80GB HBM3", SDPA, torchao=True)
H100_FA3 = DeviceFacts("cuda", (9, 0), "NVIDIA H100 80GB HBM3", SDPA | {"flash3", "flash"}, torchao=True)
L40S = DeviceFacts("cuda", (8, 9), "NVIDIA L40S", SDPA, torchao=True)
A100 = DeviceFacts("cuda", (8, 0), "NVIDIA A100-SXM4-80GB", SDPA | {"flash"}, torchao=True)
V100 = DeviceFacts("cuda", (7, 0), "Tesla V100", frozenset({"native", "math", "efficient"}), torchao=True)
B200 = DeviceFacts("cuda", (10, 0), "NVIDIA B200", SDPA, torchao=True)
CPU = DeviceFacts("cpu", name="cpu", torchao=True)
AUTO = SpeedRequest()


@pytest.mark.parametrize(
    ("facts", "compile_", "quantize", "attention"),
    [
        (H100_FA3, True, "fp8", "flash3"),
        (H100, True, "fp8", "cudnn"),  # no FA3 kernel installed: cuDNN attention
        (L40S, True, "fp8", "native"),  # Ada has fp8; no flash-attn installed: torch SDPA
        (A100, True, "none", "flash"),  # Ampere: no fp8 tensor cores
        (B200, True, "fp8", "native"),  # FA3 is Hopper's; torch SDPA
        (V100, False, "none", "native"),
        (CPU, False, "none", "native"),
    ],
)
def test_auto_per_gpu_family(facts: DeviceFacts, compile_: bool, quantize: str, attention: str) -> None:
    choice = choose_speed(AUTO, facts)
    assert (choice.compile, choice.quantize, choice.attention, choice.compile_vae) == (
        compile_, quantize, attention, compile_)
    assert choice.compile_mode == "default"
    assert len(choice.reasons) == 4  # one per decision (the mode's only when it changes)


def test_the_start_line_says_what_and_why() -> None:
    line = choose_speed(AUTO, H100).report(H100)
    assert line == (
        "speed on NVIDIA H100 80GB HBM3 (capability 9.0): compile on (default), fp8 weights+activations, "
        "attention cudnn, VAE compiled. Why: compile on: auto, CUDA capability >= 8.0; fp8: auto, CUDA capability "
        ">= 8.9 has fp8 tensor cores; attention cudnn: auto, Hopper without Flash-Attention 3: cuDNN attention; "
        "VAE compiled: auto, as compile"
    )


def test_each_part_can_be_turned_off_on_the_fastest_gpu() -> None:
    choice = choose_speed(SpeedRequest(compile="off", quantize="none", attention="native", compile_vae="off"), H100_FA3)
    assert (choice.compile, choice.quantize, choice.attention, choice.compile_vae) == (False, "none", "native", False)
    only_vae = choose_speed(SpeedRequest(compile="off", compile_vae="on"), H100)
    assert (only_vae.compile, only_vae.compile_vae) == (False, True)
    assert choose_speed(SpeedRequest(compile="off"), H100).compile_vae is False  # auto follows compile


def test_compile_can_be_forced_on_a_cpu_but_cuda_only_modes_fall_back() -> None:
    choice = choose_speed(SpeedRequest(compile="on", compile_mode="max-autotune"), CPU)
    assert choice.compile and choice.compile_mode == "default"
    assert "compile mode max-autotune needs a CUDA GPU: default used" in choice.reasons
    assert choose_speed(SpeedRequest(compile_mode="max-autotune-no-cudagraphs"), H100).compile_mode == (
        "max-autotune-no-cudagraphs")


def test_fp8_asked_for_where_it_cannot_run_is_an_error_saying_what_to_do() -> None:
    with pytest.raises(BackendUnavailable) as raised:
        choose_speed(SpeedRequest(quantize="fp8"), A100)
    assert str(raised.value) == (
        "FLUXRUN_QUANTIZE=fp8: fp8 matrix multiplication needs an NVIDIA GPU of compute capability 8.9 or newer "
        "(Ada, Hopper, Blackwell); this device is NVIDIA A100-SXM4-80GB (capability 8.0). Set FLUXRUN_QUANTIZE=none "
        "or auto."
    )
    with pytest.raises(BackendUnavailable, match="this device is cpu"):
        choose_speed(SpeedRequest(quantize="fp8"), CPU)
    no_torchao = DeviceFacts("cuda", (9, 0), "H100", SDPA, torchao=False)
    with pytest.raises(BackendUnavailable, match=r"needs torchao: pip install"):
        choose_speed(SpeedRequest(quantize="fp8"), no_torchao)
    auto = choose_speed(AUTO, no_torchao)  # auto: bf16, and the reason says what to install
    assert auto.quantize == "none" and "bf16: auto, but torchao is not installed (pip install torchao for fp8)" in (
        auto.reasons)


def test_an_attention_kernel_that_is_not_here_falls_back_to_sdpa_with_a_note() -> None:
    choice = choose_speed(SpeedRequest(attention="flash3"), H100)
    assert choice.attention == "native" and choice.attention_backend == "native"
    assert any(r.startswith("attention native: FLUXRUN_ATTENTION=flash3 is not usable on NVIDIA H100 80GB HBM3 "
                            "(capability 9.0) (needs Flash-Attention 3") for r in choice.reasons)
    assert choose_speed(SpeedRequest(attention="cudnn"), CPU).attention == "native"
    assert choose_speed(SpeedRequest(attention="math"), CPU).attention_backend == "_native_math"
    assert choose_speed(SpeedRequest(attention="flash3"), H100_FA3).attention_backend == "_flash_3"


def test_unknown_values_are_refused_naming_the_setting() -> None:
    with pytest.raises(BackendUnavailable, match=r"^FLUXRUN_ATTENTION: must be one of auto, native, .* \(got 'fa9'\)$"):
        choose_speed(SpeedRequest(attention="fa9"), H100)


def test_the_settings_offer_exactly_the_choices_the_worker_knows() -> None:
    assert typing.get_args(Switch) == SWITCHES
    assert typing.get_args(CompileMode) == COMPILE_MODES
    assert typing.get_args(Quantize) == QUANTIZE
    assert typing.get_args(Attention) == ATTENTION_CHOICES


def test_speed_settings_parse_old_booleans_and_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXRUN_COMPILE", "true")  # the older boolean form
    monkeypatch.setenv("FLUXRUN_WARMUP", "0")
    monkeypatch.setenv("FLUXRUN_ATTENTION", "cuDNN")
    monkeypatch.setenv("FLUXRUN_WARMUP_SIZES", " 1024x1024, 768X1344,1024x1024")
    settings = Settings()
    assert (settings.compile, settings.warmup, settings.attention) == ("on", "off", "cudnn")
    assert settings.warmup_size_list == ((1024, 1024), (768, 1344))
    assert settings.to_env()["FLUXRUN_COMPILE"] == "on"  # what serve hands its workers parses again
    assert Settings(warmup_sizes="").warmup_size_list == ()
    for name in ("FLUXRUN_COMPILE", "FLUXRUN_WARMUP", "FLUXRUN_ATTENTION", "FLUXRUN_WARMUP_SIZES"):
        monkeypatch.delenv(name)
    defaults = Settings()
    assert (defaults.compile, defaults.quantize, defaults.attention, defaults.warmup) == ("auto",) * 4
    assert defaults.warmup_size_list == ((1024, 1024), (1344, 768))
    for bad, message in [("1024", "'1024' is not a size: write WIDTHxHEIGHT"),
                         ("1000x1024", "1000x1024: each side must be a multiple of 16 from 64 to 4096")]:
        with pytest.raises(ValidationError, match=message):
            Settings(warmup_sizes=bad)
