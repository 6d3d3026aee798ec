"""tinyldm: a from-scratch, minimal latent-diffusion library written to be read."""

from tinyldm.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from tinyldm.models.vq import VQModel, VQModelConfig

__version__ = "0.1.0"
__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "VQModel", "VQModelConfig"]
