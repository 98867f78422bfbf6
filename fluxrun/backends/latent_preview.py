"""Cheap pictures of latents in progress: a fixed linear map from latent channels to RGB.

Decoding with the VAE at every step would cost as much as a step; a 16x3 matrix product
over the latent grid (already 1/8 of the image's size) costs next to nothing and shows
the composition and colours well enough to watch an image form. The FLUX.1 factors are
the published approximation of its VAE (ComfyUI's ``latent_formats.Flux``: fitted on
latents in the pipeline's scaled space, which is what the denoising loop holds). Other
channel counts (the tiny test VAE has 4) get a plain average of channels into R, G and B.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

# Rows: the 16 latent channels of the FLUX.1 VAE; columns: R, G, B.
FLUX1_LATENT_RGB = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX1_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)


def _factors(channels: int) -> tuple[list[list[float]], list[float]]:
    if channels == len(FLUX1_LATENT_RGB):
        return [list(row) for row in FLUX1_LATENT_RGB], list(FLUX1_LATENT_RGB_BIAS)
    # No fitted map: channel c feeds colour c % 3, averaged.
    counts = [sum(1 for c in range(channels) if c % 3 == k) or 1 for k in range(3)]
    rows = [[(1.0 / counts[k]) if c % 3 == k else 0.0 for k in range(3)] for c in range(channels)]
    return rows, [0.0, 0.0, 0.0]


def latents_to_image(latents: torch.Tensor) -> Image:
    """``latents`` of one image, (channels, height, width), as an RGB picture of that size."""
    import torch
    from PIL import Image as PILImage

    rows, bias = _factors(latents.shape[0])
    factors = torch.tensor(rows, dtype=torch.float32, device=latents.device)
    offset = torch.tensor(bias, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("chw,cr->hwr", latents.float(), factors) + offset
    pixels = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255).round().to(torch.uint8).cpu().numpy()
    return PILImage.fromarray(pixels)  # uint8, height x width x 3: RGB


def flux1_preview(packed: torch.Tensor, height: int, width: int, vae_scale_factor: int) -> Image:
    """A preview of FLUX.1's packed latents (batch, tokens, channels x 2 x 2) of the first image."""
    from diffusers import FluxPipeline

    unpacked = FluxPipeline._unpack_latents(packed[:1], height, width, vae_scale_factor)
    return latents_to_image(unpacked[0])
