"""The latent-to-RGB map of live previews."""

from __future__ import annotations

import torch

from fluxrun.backends.latent_preview import FLUX1_LATENT_RGB, FLUX1_LATENT_RGB_BIAS, latents_to_image


def _expected(values: list[float]) -> tuple[int, ...]:
    return tuple(round(min(1.0, max(0.0, (v + 1) / 2)) * 255) for v in values)


def test_flux1_latents_use_the_published_factors() -> None:
    latents = torch.zeros(16, 2, 3)
    latents[4, 1, 2] = 2.0  # one channel lit in one place
    image = latents_to_image(latents)
    assert image.size == (3, 2) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == _expected(list(FLUX1_LATENT_RGB_BIAS))
    lit = [2.0 * f + b for f, b in zip(FLUX1_LATENT_RGB[4], FLUX1_LATENT_RGB_BIAS)]
    assert image.getpixel((2, 1)) == _expected(lit)


def test_other_channel_counts_average_into_colours() -> None:
    latents = torch.zeros(4, 1, 1)
    latents[0] = latents[3] = 0.5  # both feed red (channel % 3 == 0)
    latents[1] = -1.0
    assert latents_to_image(latents).getpixel((0, 0)) == _expected([0.5, -1.0, 0.0])
