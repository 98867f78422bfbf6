"""What a worker says and does before it takes tasks: devices, LoRA configuration, warm-up."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluxrun.backends.base import BackendOptions
from fluxrun.backends.registry import BackendCache, resolve_models_mode
from fluxrun.config import Settings
from fluxrun.errors import EXIT_CONFIG, BackendUnavailable
from fluxrun.storage.local import PARTIAL, PARTIAL_MAX_AGE_SECONDS
from fluxrun.tools.catalog import find_tool
from fluxrun.worker.startup import load_all, lora_report, warm_up


def test_devices_resolve_as_the_settings_say() -> None:
    assert resolve_models_mode("auto", "auto") == ("tiny", "cpu")  # no GPU on this machine
    assert resolve_models_mode("real", "cpu") == ("real", "cpu")
    assert resolve_models_mode("tiny", "cpu") == ("tiny", "cpu")
    with pytest.raises(BackendUnavailable, match=r"^FLUXRUN_DEVICE=cuda:1: torch .* sees no CUDA GPU .*nvidia-smi"):
        resolve_models_mode("auto", "cuda:1")


def test_an_unknown_device_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fluxrun", "worker", "--device", "gpu0", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "FLUXRUN_DEVICE: unknown device 'gpu0': use auto, cpu, cuda, cuda:N (a GPU index) or mps"
    ]


def test_a_device_that_is_not_there_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fluxrun", "worker", "--device", "cuda", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_CONFIG  # the supervisor does not restart it
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("fluxrun worker: FLUXRUN_DEVICE=cuda: torch") and "FLUXRUN_DEVICE=cpu" in line


def test_real_mode_reports_each_lora_that_will_not_be_used_as_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLUXRUN_LORA_FLAT_PIXEL_ART", raising=False)
    monkeypatch.setenv("FLUXRUN_LORA_REALISM", str(tmp_path / "realism.safetensors"))
    settings = Settings(data_dir=tmp_path)
    assert lora_report(settings, "real") == [
        "LoRA 'flat-pixel-art' is not configured: its tools run on the base model. Set FLUXRUN_LORA_FLAT_PIXEL_ART "
        "to its hub repo id or .safetensors file.",
        f"FLUXRUN_LORA_REALISM={tmp_path / 'realism.safetensors'}: no such file or folder. Point it at the LoRA's "
        ".safetensors file, a folder holding one, or a hub repo id (owner/name).",
    ]
    assert lora_report(settings, "tiny") == []  # tiny mode builds every LoRA itself


def test_warm_up_runs_each_tool_once_and_loading_failures_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BackendCache(BackendOptions(models="tiny", models_dir=tmp_path))
    flux1 = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
    calls: list[tuple[int, int, int]] = []
    backend = cache.get("flux1")
    original = backend.generate

    def counting(request, job):
        calls.append((request.width, request.steps, request.samples))
        return original(request, job)

    monkeypatch.setattr(backend, "generate", counting)
    unknown = type(flux1)(**{**flux1.__dict__, "slugproject": "Nothing", "backend": "no-such-backend"})
    with caplog.at_level(logging.INFO, logger="fluxrun.worker"):
        load_all(cache, (flux1, unknown))
        warm_up(cache, (flux1, unknown))
    assert calls == [(1024, 2, 1)]  # the tool's default size, two steps, one image
    messages = [r.getMessage() for r in caplog.records]
    assert "backend no-such-backend cannot be loaded: No backend named 'no-such-backend' in this fluxrun version." in messages
    assert any(m.startswith("warm-up of desertPixel/Flat-Pixel-Art-FLUX (1024x1024, 2 steps): ") for m in messages)


def test_a_worker_sweeps_partial_files_waits_for_the_schema_then_serves_and_loads_only_its_tools(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log_path = tmp_path / "worker.log"
    # What a worker killed mid-write (SIGKILL) left behind: swept at the next start.
    left = data / "outputs" / PARTIAL / f"{'0' * 40}-0.png.x1y2"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half a file")
    os.utime(left, (time.time() - PARTIAL_MAX_AGE_SECONDS - 60,) * 2)

    def wait_for_line(text: str) -> None:
        deadline = time.monotonic() + 180
        while text not in log_path.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)

    with log_path.open("wb") as log:
        # Started before anything migrated the database (processes of a deployment start in any order).
        worker = subprocess.Popen(
            [sys.executable, "-m", "fluxrun", "worker", "--models", "tiny", "--data-dir", str(data),
             "--tools", " Black-Forest-Labs/FLUX-2-flex-t2i "],  # any case, spaces around
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_line("waiting for the database: it has no fluxrun schema yet")
            assert subprocess.run([sys.executable, "-m", "fluxrun", "db", "upgrade", "--data-dir", str(data)],
                                  capture_output=True, timeout=120).returncode == 0
            wait_for_line(" ready (tiny models on cpu)")
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    text = log_path.read_text()
    # One line while it waited (no traceback each poll), one when the schema was there.
    assert text.count("waiting for the database") == 1 and "Traceback" not in text
    assert "Run `fluxrun db upgrade`" in text and "database schema ready" in text
    assert "serving black-forest-labs/flux-2-flex-t2i\n" in text
    assert "outputs: removed 1 partial file(s) left by writes cut short" in text and not left.exists()
    assert "backend flux2 ready" in text and "backend flux1" not in text  # the FLUX.1 tools' backend stays unloaded


def test_an_unknown_tool_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fluxrun", "worker", "--tools", "desertPixel/Flat-Pixel-Art-FLUX,x/y",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_CONFIG  # the supervisor does not restart it
    assert done.stderr.strip().splitlines() == [
        "fluxrun worker: FLUXRUN_WORKER_TOOLS: unknown tool 'x/y' (known tools: black-forest-labs/flux-2-flex-t2i, "
        "desertPixel/Flat-Pixel-Art-FLUX, fluxrun/Realism-FLUX)"
    ]
