"""Diffusion math: schedules, training objectives, samplers and guidance (see docs/samplers_guide.md)."""

from .dpm_solver import dpm_solver_1, dpm_solver_2, dpm_solver_3, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .guidance import classifier_free_guidance, guided_model, rescale_guidance
from .objectives import (
    add_noise,
    convert,
    diffusion_loss,
    from_x0,
    min_snr_weight,
    sample_timesteps,
    to_x0,
    training_target,
)
from .samplers import (
    ancestral_sigmas,
    ddim,
    ddpm,
    ddpm_posterior,
    euler,
    euler_ancestral,
    flow_euler,
    flow_heun,
    heun,
    lms,
    lms_coefficients,
    plms,
)
from .sampling import SAMPLERS, SamplingConfig, make_denoiser, nfe, sample
from .schedules import SPACINGS, Schedule, karras_sigmas, rescale_zero_terminal_snr

__all__ = [
    "SPACINGS", "Schedule", "karras_sigmas", "rescale_zero_terminal_snr",
    "add_noise", "convert", "diffusion_loss", "from_x0", "min_snr_weight", "sample_timesteps", "to_x0",
    "training_target",
    "classifier_free_guidance", "guided_model", "rescale_guidance",
    "ancestral_sigmas", "ddim", "ddpm", "ddpm_posterior", "euler", "euler_ancestral", "flow_euler", "flow_heun", "heun",
    "lms",
    "lms_coefficients", "plms",
    "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m",
    "SAMPLERS", "SamplingConfig", "make_denoiser", "nfe", "sample",
]
