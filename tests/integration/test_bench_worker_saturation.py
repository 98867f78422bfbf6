"""bench/worker_saturation.py with ``--models random`` on the CPU: the path a GPU run takes
where the real weights cannot be downloaded (a pipeline built as bench/gpu_flux.py builds it,
the tool's LoRA random too, handed to the worker), end to end on the tiny configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tool", ["desertPixel/Flat-Pixel-Art-FLUX", "black-forest-labs/flux-2-flex-t2i"])
def test_random_weight_pipelines_run_through_the_worker_and_are_compared_with_the_pipeline(tool: str) -> None:
    done = subprocess.run(
        [sys.executable, "bench/worker_saturation.py", "--models", "random", "--tool", tool, "--tasks", "2",
         "--rounds", "1", "--width", "128", "--height", "128", "--steps", "2", "--upload-delay-ms", "20"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend: FLUX.1 given pipeline" in done.stderr or "backend: FLUX.2 given Flux2KleinPipeline" in done.stderr
    lines = done.stdout.splitlines()
    assert f"2 tasks of {tool}, 128x128, 2 steps" in lines[0]
    assert "random-weight tiny-configuration models on cpu" in lines[0]
    rows = {line[:40].strip(): line[40:].split() for line in lines[2:7]}
    assert set(rows) == {"pipeline (generate only)", "worker, local files, overlap on", "worker, local files, overlap off",
                         "worker, +20 ms uploads, overlap on", "worker, +20 ms uploads, overlap off"}
    assert rows["pipeline (generate only)"][2] == "1.000x"
    assert all(float(row[0]) > 0 for row in rows.values())  # every case made its images
