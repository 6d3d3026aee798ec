"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b): exponential integrators in log-SNR.

Same signature and conventions as samplers.py (a step goes from s = ts[i] to t = ts[i+1]). Notation:
    lam λ = log(α/σ)      h = λ_t − λ_s > 0      r = h_prev / h (ratio of the last two steps)
    eps_s ε̂_s, x0_hat x̂0_s (also m0, m1, m2: x̂0 at this and the last two steps, newest first)
The probability-flow ODE solved exactly in its linear part (Lu et al. 2022b, Eq. 9):
    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂0(λ) dλ.
Expanding x̂0 in λ around λ_s and integrating each power exactly gives, with
φ1 = e^{−h} − 1, φ2 = φ1/h + 1, φ3 = φ2/h − 1/2,
    x_t = (σ_t/σ_s) x_s − α_t φ1 x̂0 + α_t φ2 (h x̂0') − α_t φ3 (h² x̂0'')               (*)
The multistep solvers estimate h x̂0' and h² x̂0'' from past x̂0; the singlestep ones (noise prediction,
Lu et al. 2022a) evaluate the network at intermediate times instead. At σ_t = 0 (λ_t = ∞) every step is
first order and lands on x_t = α_t x̂0_s.
"""

import math

import torch

from .samplers import _randn


def _grid(sched, ts):
    """The times, α, σ and λ = log(α/σ) at the grid, as lists of N+1 floats (λ = ±inf where σ or α is 0)."""
    alpha, sigma = sched.alpha_sigma(ts)
    lam = alpha.log() - sigma.log()
    return ts.tolist(), alpha.tolist(), sigma.tolist(), lam.tolist()


def _noise_prediction_grid(sched, ts, name):
    times, alpha, sigma, lam = _grid(sched, ts)
    if alpha[0] == 0:
        raise ValueError(f"sampler {name!r} (noise prediction) divides by α_s and needs α > 0 at its first time, "
                         f"but α = 0 at t = {times[0]:g}; use 'dpmpp_2m' / 'dpmpp_3m' (data prediction) or "
                         f"pass timesteps that start below t = {times[0]:g}")
    return times, alpha, sigma, lam


def _alpha_sigma_at_lam(sched, lam: float) -> tuple[float, float, float]:
    """The time whose λ is `lam` (DPM-Solver-2/3's intermediate points) and its α and σ, as floats."""
    t = sched.t_from_lam(lam)
    alpha, sigma = sched.alpha_sigma(t)
    return t.item(), alpha.item(), sigma.item()


def _eps(denoiser, x, t, alpha, sigma):
    """ε̂ = (x − α x̂0)/σ at time t."""
    return (x - alpha * denoiser(x, t)) / sigma


@torch.no_grad()
def dpm_solver_1(denoiser, x, sched, ts, generator=None, callback=None):
    """DPM-Solver-1, Lu et al. 2022a, Eq. 3.7 (noise prediction; the same step as DDIM with η = 0)."""
    times, alpha, sigma, lam = _noise_prediction_grid(sched, ts, "dpm_solver_1")
    for i in range(len(times) - 1):
        x0_hat = denoiser(x, times[i])
        if sigma[i + 1] == 0:  # step to the data: the h → ∞ limit of Eq. 3.7
            x = alpha[i + 1] * x0_hat
        else:
            eps_s = (x - alpha[i] * x0_hat) / sigma[i]
            h = lam[i + 1] - lam[i]
            x = (alpha[i + 1] / alpha[i]) * x - sigma[i + 1] * math.expm1(h) * eps_s  # Eq. 3.7
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def dpm_solver_2(denoiser, x, sched, ts, generator=None, callback=None, r1=0.5):
    """DPM-Solver-2 singlestep, Lu et al. 2022a, Algorithm 1 (r1 = 1/2): 2 network calls per step."""
    times, alpha, sigma, lam = _noise_prediction_grid(sched, ts, "dpm_solver_2")
    for i in range(len(times) - 1):
        x0_hat = denoiser(x, times[i])
        if sigma[i + 1] == 0:  # step to the data: the h → ∞ limit of the step below
            x = alpha[i + 1] * x0_hat
        else:
            eps_s = (x - alpha[i] * x0_hat) / sigma[i]
            h = lam[i + 1] - lam[i]
            # 1. First-order step to the intermediate time s1 with λ_{s1} = λ_s + r1 h.
            s1, alpha_s1, sigma_s1 = _alpha_sigma_at_lam(sched, lam[i] + r1 * h)
            u = (alpha_s1 / alpha[i]) * x - sigma_s1 * math.expm1(r1 * h) * eps_s
            # 2. Full step corrected with the noise predicted at s1.
            D1 = _eps(denoiser, u, s1, alpha_s1, sigma_s1) - eps_s
            x = (alpha[i + 1] / alpha[i]) * x - sigma[i + 1] * math.expm1(h) * eps_s \
                - sigma[i + 1] / (2 * r1) * math.expm1(h) * D1
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def dpm_solver_3(denoiser, x, sched, ts, generator=None, callback=None, r1=1 / 3, r2=2 / 3):
    """DPM-Solver-3 singlestep, Lu et al. 2022a, Algorithm 2 (r1 = 1/3, r2 = 2/3): 3 network calls per step."""
    times, alpha, sigma, lam = _noise_prediction_grid(sched, ts, "dpm_solver_3")
    for i in range(len(times) - 1):
        x0_hat = denoiser(x, times[i])
        if sigma[i + 1] == 0:  # step to the data: the h → ∞ limit of the step below
            x = alpha[i + 1] * x0_hat
        else:
            eps_s = (x - alpha[i] * x0_hat) / sigma[i]
            h = lam[i + 1] - lam[i]
            # 1. First-order step to s1 (λ_s + r1 h).
            s1, alpha_s1, sigma_s1 = _alpha_sigma_at_lam(sched, lam[i] + r1 * h)
            u1 = (alpha_s1 / alpha[i]) * x - sigma_s1 * math.expm1(r1 * h) * eps_s
            D1 = _eps(denoiser, u1, s1, alpha_s1, sigma_s1) - eps_s
            # 2. Second-order step to s2 (λ_s + r2 h).
            s2, alpha_s2, sigma_s2 = _alpha_sigma_at_lam(sched, lam[i] + r2 * h)
            u2 = (alpha_s2 / alpha[i]) * x - sigma_s2 * math.expm1(r2 * h) * eps_s \
                - (sigma_s2 * r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * D1
            D2 = _eps(denoiser, u2, s2, alpha_s2, sigma_s2) - eps_s
            # 3. Full step corrected with the noise predicted at s2.
            x = (alpha[i + 1] / alpha[i]) * x - sigma[i + 1] * math.expm1(h) * eps_s \
                - (sigma[i + 1] / r2) * (math.expm1(h) / h - 1) * D2
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x


def _multistep_order(order: int, i: int, n: int, sigma_next, lower_order_final: bool) -> int:
    """Order of step i of n: limited by the history, 1 on the step to σ = 0, lowered at the end when n < 15."""
    k = min(order, i + 1)
    if lower_order_final and n < 15:
        k = min(k, n - i)
    return 1 if sigma_next == 0 else k


@torch.no_grad()
def _dpmpp_multistep(denoiser, x, sched, ts, order, callback, lower_order_final):
    times, alpha, sigma, lam = _grid(sched, ts)
    n = len(times) - 1
    m = []  # x̂0 at this and the previous steps, newest first (m0, m1, m2)
    for i in range(n):
        # 1. Predict x0 and pick this step's order.
        m = [denoiser(x, times[i])] + m[:2]
        k = _multistep_order(order, i, n, sigma[i + 1], lower_order_final)
        h = lam[i + 1] - lam[i]
        phi1 = math.expm1(-h)  # e^{−h} − 1
        # 2. Step with (*), the derivatives estimated by divided differences in λ.
        if k == 1:  # DPM-Solver++(1), the same step as DDIM with η = 0
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * phi1 * m[0]
        elif k == 2:  # Algorithm 2: D = (1 + 1/(2r)) x̂0_s − 1/(2r) x̂0_prev
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * m[0] - (1 / (2 * r)) * m[1]
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * phi1 * D
        else:  # 3M: (*) with both derivatives from the quadratic through the last three x̂0
            D1, D2 = _quadratic_derivatives(m, lam[i - 2:i + 2], h)
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * phi1 * m[0] \
                + alpha[i + 1] * phi2 * D1 - alpha[i + 1] * phi3 * D2
        if callback is not None:
            callback(i, times[i], x, m[0])
    return x


def _quadratic_derivatives(m: list[torch.Tensor], lams: list[float], h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(h x̂0', h² x̂0'') at the newest point, from the quadratic in λ through m = [x̂0_i, x̂0_{i−1}, x̂0_{i−2}];
    lams = [λ_{i−2}, λ_{i−1}, λ_i, λ_{i+1}], h = λ_{i+1} − λ_i."""
    r0, r1 = (lams[2] - lams[1]) / h, (lams[1] - lams[0]) / h
    D1_0, D1_1 = (m[0] - m[1]) / r0, (m[1] - m[2]) / r1  # h × the two divided differences
    return D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1), 2 * (D1_0 - D1_1) / (r0 + r1)


def dpmpp_2m(denoiser, x, sched, ts, generator=None, callback=None, lower_order_final=True):
    """DPM-Solver++(2M), Lu et al. 2022b, Algorithm 2 (data prediction, multistep, 1 call per step)."""
    return _dpmpp_multistep(denoiser, x, sched, ts, 2, callback, lower_order_final)


def dpmpp_3m(denoiser, x, sched, ts, generator=None, callback=None, lower_order_final=True):
    """DPM-Solver++(3M), Lu et al. 2022b, third-order multistep (Eq. (*) above with quadratic extrapolation)."""
    return _dpmpp_multistep(denoiser, x, sched, ts, 3, callback, lower_order_final)


@torch.no_grad()
def dpmpp_2m_sde(denoiser, x, sched, ts, generator=None, callback=None, lower_order_final=True):
    """SDE-DPM-Solver++(2M), Lu et al. 2022b, Appendix: the reverse SDE solved exactly in its linear part."""
    times, alpha, sigma, lam = _grid(sched, ts)
    n = len(times) - 1
    m = []
    for i in range(n):
        # 1. Predict x0 and pick this step's order.
        x0_hat = denoiser(x, times[i])
        m = [x0_hat] + m[:2]
        k = _multistep_order(2, i, n, sigma[i + 1], lower_order_final)
        h = lam[i + 1] - lam[i]
        one_minus_exp = -math.expm1(-2 * h)  # 1 − e^{−2h}
        # 2. First-order part: x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂0 (the DDPM posterior mean).
        x = (sigma[i + 1] / sigma[i]) * math.exp(-h) * x + alpha[i + 1] * one_minus_exp * m[0]
        # 3. Second-order part: α_t ∫_0^h 2e^{−2(h−u)} u du · x̂0' = α_t (1 − (1 − e^{−2h})/(2h)) · h x̂0'.
        if k == 2:
            r = (lam[i] - lam[i - 1]) / h
            x = x + alpha[i + 1] * (1 - one_minus_exp / (2 * h)) * (m[0] - m[1]) / r
        # 4. Fresh noise of variance σ_t² (1 − e^{−2h}) (zero on the step to σ = 0).
        if sigma[i + 1] > 0:
            x = x + sigma[i + 1] * math.sqrt(one_minus_exp) * _randn(x, generator)
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x
