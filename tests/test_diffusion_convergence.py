"""Convergence orders of the deterministic samplers on Gaussian data, against the exact probability-flow solution.

Data x0 ~ N(μ, s²) per element has the exact denoiser E[x0 | x_t] = μ + α s² (x_t − α μ)/(α² s² + σ²) and the
exact ODE map x_t = α_t μ + sqrt(α_t² s² + σ_t²)·(x_s − α_s μ)/sqrt(α_s² s² + σ_s²) (docs/samplers_guide.md,
"How accurate is each one?").
tinyldm/diffusion/analytic.py returns that denoiser as ε, v, x0 or flow velocity, reading t on the network's
time scale.
"""

import numpy as np
import pytest
import torch

from tinyldm.diffusion import SamplingConfig, Schedule, sample
from tinyldm.diffusion.analytic import gaussian_flow_map, gaussian_network

MU, S = 0.5, 0.7
SCHEDULES = {  # schedule, fixed interval (uniform in t) that ends at σ > 0
    "linear": (Schedule.vp("linear"), 999.0, 200.0),
    "scaled_linear": (Schedule.vp("scaled_linear"), 999.0, 200.0),
    # Cosine's λ(t) ~ log(T − t) is singular at t = T: near 999 uniform-in-t steps are not small in λ until N > 1000.
    "cosine": (Schedule.vp("cosine"), 900.0, 200.0),
    "flow": (Schedule.flow(), 0.95, 0.2),
}
ORDER = {"ddim": 1, "euler": 1, "dpm_solver_1": 1, "heun": 2, "dpm_solver_2": 2, "dpmpp_2m": 2, "dpm_solver_3": 3}


def exact_network(sched, prediction, mu=MU, s=S):
    return gaussian_network(sched, prediction, mu, s)


def exact_flow_map(sched, x, t_from, t_to, mu=MU, s=S):
    return gaussian_flow_map(sched, x, t_from, t_to, mu, s)


def x_T():
    return torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def measured_order(sched, t0, t1, sampler, prediction, Ns):
    """Slope of −log(error) against log N over a fixed interval ending at σ > 0 (least squares)."""
    x, errors = x_T(), []
    for N in Ns:
        ts = torch.linspace(t0, t1, N + 1, dtype=torch.float64)
        out = sample(exact_network(sched, prediction), x, sched, SamplingConfig(sampler, cfg_scale=1.0), timesteps=ts,
                     prediction=prediction, denoise_to_zero=False)
        errors.append((out - exact_flow_map(sched, x, t0, t1)).abs().max().item())
    assert all(np.isfinite(errors)) and errors[-1] < errors[0]
    return -np.polyfit(np.log(Ns), np.log(errors), 1)[0]


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("sampler", list(ORDER))
def test_order_on_a_fixed_interval(sampler, schedule, prediction):
    sched, t0, t1 = SCHEDULES[schedule]
    if sched.kind == "flow" and prediction == "v":
        prediction = "flow"  # the flow network's velocity
    order = measured_order(sched, t0, t1, sampler, prediction, Ns=(16, 32, 64))
    assert abs(order - ORDER[sampler]) <= 0.3, f"{sampler} on {schedule}: measured order {order:.2f}"


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("sampler", ["lms", "dpmpp_3m"])
def test_multistep_solvers_started_at_first_order_are_at_least_second_order(sampler, schedule):
    # LMS (order 4) and DPM-Solver++(3M) take their first step with order 1, whose local error O(h²) sets a
    # global O(h²) floor; their higher-order formulas are checked exactly in test_diffusion_samplers.py.
    # N from 32: at N = 16 the start-up and the main error nearly cancel on some schedules (slope noise).
    sched, t0, t1 = SCHEDULES[schedule]
    order = measured_order(sched, t0, t1, sampler, "eps", Ns=(32, 64, 128))
    assert order >= 2 - 0.3, f"{sampler} on {schedule}: measured order {order:.2f}"


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_plms_is_second_order_on_a_grid_uniform_in_t(schedule):
    # PLMS (Liu et al. 2022) combines ε with Adams–Bashforth's weights for equal steps in t, but its transfer φ
    # (DDIM's step) integrates ε over σ̃ = σ/α, which is not uniform in t: ∫ ε dσ̃ ≈ (mean of ε in t)·Δσ̃ is off by
    # O(h³) per step, so the global error is O(h²) on every schedule, not the O(h⁴) of Eq. 12 (measured 1.91–2.01
    # at N = 32 … 128; 1.62 on linear at N = 16 … 64, still in its start-up).
    sched, t0, t1 = SCHEDULES[schedule]
    order = measured_order(sched, t0, t1, "plms", "eps", Ns=(32, 64, 128))
    assert abs(order - 2) <= 0.3, f"plms on {schedule}: measured order {order:.2f}"


END_TO_END = ["ddim", "euler", "heun", "lms", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m"]


def jump_error(sched, x_last, t_last, mu=MU, s=S):
    """x̂0(x_last) − x0 for the exact x_last: the error of the final first-order step alone, ≈ (x − αμ) σ̃²/(2s)."""
    alpha, sigma = sched.alpha_sigma(torch.as_tensor(t_last, dtype=torch.float64))
    x0_hat = mu + alpha * s**2 * (x_last - alpha * mu) / (alpha**2 * s**2 + sigma**2)
    return x0_hat - exact_flow_map(sched, x_last, t_last, sched.t_min)


@pytest.mark.parametrize("sampler", END_TO_END)
def test_end_to_end_error_falls_like_one_over_n(sampler):
    # The last step, from σ_last to 0, is first order with error O(σ̃_last²); with trailing spacing on a VP
    # schedule σ_last² ≈ β_0·T/N, so even high-order solvers converge to the exact x0 like 1/N. Stable Diffusion's
    # scaled_linear schedule (β_0 = 0.00085) shows it from N = 20; with DDPM's β_0 = 1e-4 the jump is 8.5× smaller
    # and the ODE error of the large early steps in λ dominates up to a few hundred steps (docs/samplers_guide.md).
    sched = Schedule.vp("scaled_linear")
    x, Ns, errors = x_T(), (20, 40, 80), []
    exact_x0 = exact_flow_map(sched, x, sched.t_max, sched.t_min)
    for N in Ns:
        out = sample(exact_network(sched, "eps"), x, sched, SamplingConfig(sampler, N, "trailing", cfg_scale=1.0))
        errors.append((out - exact_x0).abs().max().item())
    order = -np.polyfit(np.log(Ns), np.log(errors), 1)[0]
    assert errors[0] > errors[1] > errors[2] and abs(order - 1) <= 0.3, f"{sampler}: errors {errors}, order {order:.2f}"


JUMP_CASES = [("dpm_solver_3", s) for s in ("linear", "scaled_linear", "cosine")] + [
    (s, "scaled_linear") for s in ("heun", "dpm_solver_2", "dpmpp_3m")]


@pytest.mark.parametrize("sampler,schedule", JUMP_CASES)
def test_end_to_end_error_of_a_high_order_solver_is_the_final_jump(sampler, schedule):
    # At N = 200 trailing steps the ODE error of a third-order solver is far below the final jump's on every VP
    # schedule, so its end-to-end error is the closed-form jump error (within 10%); second-order solvers and
    # 3M (second order in effect, see above) get there on scaled_linear, whose jump is the largest.
    sched = SCHEDULES[schedule][0]
    x = x_T()
    ts = sched.timesteps(200, "trailing")
    out = sample(exact_network(sched, "eps"), x, sched, SamplingConfig(sampler, cfg_scale=1.0), timesteps=ts)
    expected = jump_error(sched, exact_flow_map(sched, x, sched.t_max, ts[-1].item()), ts[-1].item())
    error = out - exact_flow_map(sched, x, sched.t_max, sched.t_min)
    assert (error - expected).abs().max() <= 0.1 * expected.abs().max()


@pytest.mark.parametrize("sampler,expected", [("flow_euler", 1), ("euler", 1), ("ddim", 1), ("heun", 2),
                                              ("flow_heun", 2), ("dpmpp_2m", 2), ("dpmpp_3m", 2)])
def test_flow_end_to_end_error_falls_like_sigma_last_squared(sampler, expected):
    # Flow with trailing spacing ends at t = σ = 1/N, so the final jump costs O(1/N²): first-order samplers
    # stay at 1/N, second- and higher-order ones reach 1/N² (from N ≈ 80: near t = 1 uniform steps in t are
    # large steps in λ = log((1 − t)/t)).
    sched = Schedule.flow()
    x, Ns, errors = x_T(), (80, 160, 320), []
    exact_x0 = exact_flow_map(sched, x, 1.0, 0.0)
    for N in Ns:
        out = sample(exact_network(sched, "flow"), x, sched, SamplingConfig(sampler, N, cfg_scale=1.0),
                     prediction="flow")
        errors.append((out - exact_x0).abs().max().item())
    order = -np.polyfit(np.log(Ns), np.log(errors), 1)[0]
    assert abs(order - expected) <= 0.3, f"{sampler}: errors {errors}, order {order:.2f}"
