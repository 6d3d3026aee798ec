"""Data whose denoiser and probability-flow solution are known in closed form: the yardstick for samplers.

For x0 ~ N(μ, s²) per element (docs/samplers_guide.md):
    x_t ~ N(α_t μ, α_t² s² + σ_t²)
    E[x0 | x_t] = μ + α_t s² (x_t − α_t μ) / (α_t² s² + σ_t²)
    the probability-flow ODE keeps the standardised value fixed, so between any two times
    x_t = α_t μ + sqrt(α_t² s² + σ_t²) · (x_s − α_s μ) / sqrt(α_s² s² + σ_s²).
s = 0 is point-mass data. Used by the tests and by benchmarks/bench_samplers.py.
"""

import torch

from .objectives import from_x0
from .schedules import Schedule


def gaussian_x0(x_t: torch.Tensor, alpha, sigma, mu: float, s: float) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(μ, s²)."""
    return mu + alpha * s**2 * (x_t - alpha * mu) / (alpha**2 * s**2 + sigma**2)


def gaussian_flow_map(sched: Schedule, x: torch.Tensor, t_from: float, t_to: float, mu: float,
                      s: float) -> torch.Tensor:
    """The exact probability-flow ODE solution at t_to starting from x at t_from (schedule times)."""
    alpha0, sigma0 = sched.alpha_sigma(torch.tensor(t_from, dtype=torch.float64))
    alpha1, sigma1 = sched.alpha_sigma(torch.tensor(t_to, dtype=torch.float64))
    spread0, spread1 = (alpha0**2 * s**2 + sigma0**2).sqrt(), (alpha1**2 * s**2 + sigma1**2).sqrt()
    return alpha1 * mu + spread1 * (x - alpha0 * mu) / spread0


def gaussian_network(sched: Schedule, prediction: str, mu: float, s: float):
    """model(x_t, t) returning the exact denoiser as the raw `prediction`, reading t on the network's time scale."""

    def model(x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        t = t_model.double()[0] / (1 if sched.kind == "vp" else sched.num_train_timesteps)  # undo model_time
        alpha, sigma = sched.alpha_sigma(t)
        return from_x0(gaussian_x0(x, alpha, sigma, mu, s), x, alpha, sigma, prediction)

    return model
