"""tinyldm: a from-scratch, minimal latent-diffusion library written to be read (start at docs/tour.md)."""

from tinyldm.diffusion import SamplingConfig, Schedule, sample
from tinyldm.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from tinyldm.models.dit import DiT, DiTConfig
from tinyldm.models.mmdit import MMDiT, MMDiTConfig
from tinyldm.models.unet import UNet2DConditionModel, UNetConfig
from tinyldm.models.vq import VQModel, VQModelConfig

__version__ = "0.1.0"
__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "DiT", "DiTConfig", "MMDiT", "MMDiTConfig", "SamplingConfig",
           "Schedule", "UNet2DConditionModel", "UNetConfig", "VQModel", "VQModelConfig", "sample"]
