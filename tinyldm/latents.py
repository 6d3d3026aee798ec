"""The latent transform between the two stages: the autoencoder's z and the diffusion's data z0.

A diffusion schedule assumes data of about unit variance (x_t = α_t z0 + σ_t ε with ε ~ N(0, I)), and an autoencoder's
latents have whatever scale its training gave them. So stage 2 trains on latents rescaled by one number, 1/σ̂ with σ̂
their standard deviation over the data (Rombach et al. 2022, Sec. 4.3.2; Stable Diffusion's 0.18215 is that
number for its VAE), optionally shifted first (the SD3 and FLUX VAEs state a shift_factor):

    to the diffusion:      z0 = (z − shift)·scale          `scale_latents`   (train_ldm.py, before noising)
    back to the decoder:   z  = z0/scale + shift           `unscale_latents` (tinyldm.generate, before decoding)

train_vae.py measures scale = 1/std(z) once, over posterior samples z = μ + σ·ε of training images
(`measure_scale`), and writes it into the autoencoder's config.json as `scaling_factor`; train_ldm.py copies the
pair it trained with into its own config.json, which sampling and export read.
"""

import math

import torch

# A latent standard deviation outside this range is not an autoencoder's scale but a sign that it diverged (latents
# of 10⁶: "scaling_factor 0.0000") or collapsed (all latents equal); trained ones measure ~0.3–6 (SD's VAE: 5.5).
LATENT_STD_RANGE = (1e-3, 1e3)


def scale_latents(z: torch.Tensor, scale: float, shift: float = 0.0) -> torch.Tensor:
    """The autoencoder's latents z → the diffusion's data z0 = (z − shift)·scale, same shape."""
    return (z - shift) * scale


def unscale_latents(z0: torch.Tensor, scale: float, shift: float = 0.0) -> torch.Tensor:
    """The diffusion's data z0 → latents for the decoder, z = z0/scale + shift, same shape."""
    return z0 / scale + shift


def measure_scale(z: torch.Tensor) -> float:
    """scale = 1/std(z) over every element of posterior samples z (N, c, h, w), so that z·scale has unit variance.
    A std that is not finite or outside LATENT_STD_RANGE is a ValueError: stage 2 cannot use that autoencoder."""
    std = z.double().std().item()
    low, high = LATENT_STD_RANGE
    if not (math.isfinite(std) and low <= std <= high):
        raise ValueError(f"the latents' standard deviation is {std:.3g} (expected {low:g}…{high:g}; scaling_factor "
                         f"1/std would be {1 / std if std else math.inf:.3g}): the autoencoder diverged or collapsed. "
                         "Retrain it with a lower --lr (or resume an earlier checkpoint); its latent scale was not "
                         "written")
    return 1.0 / std
