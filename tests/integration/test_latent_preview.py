"""Live previews of the FLUX.1 backend: pictures of its latents, only when asked."""

from __future__ import annotations

from fluxrun.backends.base import RecordingJob
from fluxrun.backends.registry import BackendCache
from fluxrun.tools.catalog import find_tool

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")


def test_the_flux1_backend_pictures_its_latents_when_asked(backends: BackendCache) -> None:
    request = PIXEL.to_request(PIXEL.validate({"prompt": "a cat", "steps": 2, "width": 256, "height": 128}))
    job = RecordingJob(want_previews=True)
    [image] = backends.get("flux1").generate(request, job)
    assert len(job.previews) == 2 and [p.size for p in job.previews] == [(32, 16), (32, 16)]  # latent grid, 1/8
    assert image.size == (256, 128)
    # Not noise-free, but not blank either: the picture follows the latents.
    assert len(set(job.previews[-1].getdata())) > 1


def test_no_preview_is_made_unless_asked(backends: BackendCache) -> None:
    request = PIXEL.to_request(PIXEL.validate({"prompt": "a cat", "steps": 2, "width": 128, "height": 128}))
    job = RecordingJob()
    backends.get("flux1").generate(request, job)
    assert len(job.steps) == 2 and job.previews == []
