"""Stochastic samplers with exact denoisers reproduce the data distribution within sampling error.

Tolerances are 4 standard errors of the estimate (mean: s/√n, std: s/√(2n), a fraction: √(p(1 − p)/n)); with
the step counts below the samplers' own discretisation bias is well under that (DDPM at 1000 steps leaves the
std ≈ 0.6% low, which is why it needs all 1000; SDE-DPM-Solver++(2M) is unbiased to 0.3% at 100 steps).
"""

import pytest
import torch

from tinyldm.diffusion import SamplingConfig, Schedule, from_x0, sample
from tinyldm.diffusion.analytic import gaussian_network

MU, S = 0.5, 0.7


def exact_network(sched, prediction):
    return gaussian_network(sched, prediction, MU, S)

N_SAMPLES = 4000
CASES = [("ddpm", 0.0, "fixed_small", 1000), ("ddpm", 0.0, "fixed_large", 1000), ("ddim", 1.0, "fixed_small", 1000),
         ("euler_ancestral", 0.0, "fixed_small", 1000), ("dpmpp_2m_sde", 0.0, "fixed_small", 100)]


@pytest.mark.parametrize("sampler,eta,ddpm_variance,steps", CASES)
def test_gaussian_data_mean_and_std(sampler, eta, ddpm_variance, steps):
    sched = Schedule.vp("scaled_linear")
    noise = torch.randn(N_SAMPLES, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    config = SamplingConfig(sampler, steps, eta=eta, cfg_scale=1.0)
    out = sample(exact_network(sched, "eps"), noise, sched, config, ddpm_variance=ddpm_variance,
                 generator=torch.Generator().manual_seed(2))
    assert abs(out.mean().item() - MU) < 4 * S / N_SAMPLES**0.5
    assert abs(out.std().item() - S) < 4 * S / (2 * N_SAMPLES) ** 0.5


WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64)  # (K, 2)
STDS = torch.tensor([0.4, 0.6], dtype=torch.float64)


def mixture_network(sched):
    """Exact E[x0 | x_t] of the mixture, as v-prediction: posterior weights times the per-component denoisers."""

    def model(x, t_model):  # x (B, 2)
        alpha, sigma = sched.alpha_sigma(t_model.double()[0])
        var = alpha**2 * STDS**2 + sigma**2  # (K,) variance of x_t given the component
        diff = x[:, None, :] - alpha * MEANS  # (B, K, 2)
        log_p = WEIGHTS.log() - diff.pow(2).sum(-1) / (2 * var) - var.log()  # (B, K), 2-D Gaussian up to a constant
        posterior = log_p.softmax(dim=1)  # (B, K)
        x0_k = MEANS + (alpha * STDS**2 / var)[:, None] * diff  # (B, K, 2)
        x0 = (posterior[..., None] * x0_k).sum(1)  # (B, 2)
        return from_x0(x0, x, alpha, sigma, "v")

    return model


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("euler_ancestral", 1000), ("dpmpp_2m_sde", 100)])
def test_mixture_of_gaussians_weights_and_component_moments(sampler, steps):
    sched = Schedule.vp("scaled_linear")
    noise = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample(mixture_network(sched), noise, sched, SamplingConfig(sampler, steps, cfg_scale=1.0), prediction="v",
                 generator=torch.Generator().manual_seed(4))
    second = out[:, 0] > 0  # the components are 4 apart along x with stds ≤ 0.6: the split misassigns ~1e-9
    weight = second.double().mean().item()
    assert abs(weight - 0.7) < 4 * (0.21 / N_SAMPLES) ** 0.5
    for k, members in enumerate([out[~second], out[second]]):
        n_k = len(members)
        torch.testing.assert_close(members.mean(0), MEANS[k], rtol=0, atol=4 * STDS[k].item() / n_k**0.5)
        torch.testing.assert_close(members.std(0), STDS[k].expand(2), rtol=0,
                                   atol=4 * STDS[k].item() / (2 * n_k) ** 0.5)
