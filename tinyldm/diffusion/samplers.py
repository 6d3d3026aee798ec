"""Samplers, simplest first: DDPM, DDIM, Euler, Euler ancestral, Heun, LMS, PLMS, flow Euler (DPM-Solvers:
dpm_solver.py).

Every sampler has the same signature and is a pure function:
    sampler(denoiser, x, sched, ts, generator=None, callback=None, **options) -> x at ts[-1]
    denoiser(x, t) -> x̂0     the network wrapped to predict x0 (sample.py), t a float schedule time
    x                         (B, ...) the state at ts[0]
    ts                        (N+1,) float64 decreasing schedule times; N steps; ts[-1] = sched.t_min is the data
    callback(i, t, x, x0_hat) after step i: t = ts[i] where the network was asked, x the new state at ts[i+1]
Each step goes from time s = ts[i] to the next, smaller time t = ts[i+1] (the notation of Lu et al. 2022). A sampler
reads the schedule's coefficients for the whole grid once, as lists of Python floats, before its loop.

Notation: alpha α, sigma σ (x_t = α x0 + σ ε), x0_hat x̂0, eps_hat ε̂ = (x − α x̂0)/σ, and the Karras/EDM
variables sigma_tilde σ̃ = σ/α, x_tilde x̃ = x/α = x0 + σ̃ ε, in which the probability-flow ODE reads
dx̃/dσ̃ = d = (x̃ − x̂0)/σ̃ (Karras et al. 2022, Eq. 4 with α folded in); d_prime d' is d at the predicted point.
On a flow schedule (α = 1 − t, σ = t) the same ODE in t reads dx/dt = v = ε − x0 = (x − x̂0)/t.
"""

import math

import torch

DDPM_VARIANCES = ("fixed_small", "fixed_large")


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z ~ N(0, I) shaped like x, drawn on the generator's device (CPU unless the generator lives on x's device)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def karras_variables(sched, ts: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ̃) on the grid, (N+1,) each, refusing a first time where α = 0 (σ̃ = ∞: zero terminal SNR, flow at t = 1)."""
    alpha, sigma = sched.alpha_sigma(ts)
    if alpha[0] == 0:
        raise ValueError(f"sampler {name!r} works in σ̃ = σ/α and needs α > 0 at its first time, but α = 0 at "
                         f"t = {ts[0].item():g} (zero terminal SNR / flow t = 1); use 'ddim', 'dpmpp_2m' or 'ddpm' "
                         f"(on a flow schedule also 'flow_euler' and 'flow_heun', which step in t), or pass timesteps "
                         f"that start below t = {ts[0].item():g}")
    return alpha, sigma / alpha


def ddpm_posterior(sched, s, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(x_t | x_s, x0) = N(c_x0·x0 + c_xs·x_s, β̃) for s > t (Ho et al. 2020, Eq. 6–7; any step size).

    The paper steps from t to t − 1; here from s to t. Returns (c_x0, c_xs, β̃, β), float64.
    """
    alpha_s, sigma_s = sched.alpha_sigma(s)
    alpha_t, sigma_t = sched.alpha_sigma(t)
    alpha_ts = alpha_s / alpha_t  # sqrt(α_t) of Eq. 7; = sqrt(ᾱ_s/ᾱ_t) over several steps
    beta = sigma_s**2 - alpha_ts**2 * sigma_t**2  # β_t of Eq. 7; VP: 1 − ᾱ_s/ᾱ_t
    c_x0 = alpha_t * beta / sigma_s**2  # sqrt(ᾱ_{t−1}) β_t / (1 − ᾱ_t)
    c_xs = alpha_ts * sigma_t**2 / sigma_s**2  # sqrt(α_t) (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    beta_tilde = beta * sigma_t**2 / sigma_s**2  # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t
    return c_x0, c_xs, beta_tilde, beta


@torch.no_grad()
def ddpm(denoiser, x, sched, ts, generator=None, callback=None, variance="fixed_small"):
    """DDPM ancestral sampling, Ho et al. 2020, Algorithm 2 (posterior of Eq. 6–7 around the predicted x0)."""
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"DDPM variance {variance!r} is not supported; choose one of {DDPM_VARIANCES}")
    c_x0, c_xs, beta_tilde, beta = ddpm_posterior(sched, ts[:-1], ts[1:])  # (N,) each: step i goes ts[i] → ts[i+1]
    noise_std = (beta_tilde if variance == "fixed_small" else beta).sqrt()  # σ_t² = β̃_t or β_t (Ho et al. §3.2)
    times, c_x0, c_xs, noise_std = ts.tolist(), c_x0.tolist(), c_xs.tolist(), noise_std.tolist()
    for i in range(len(times) - 1):
        # 1. Predict x0.
        x0_hat = denoiser(x, times[i])
        # 2. Sample the posterior q(x_t | x_s, x̂0): its mean, plus its noise except on the step to the data.
        x = c_x0[i] * x0_hat + c_xs[i] * x  # μ̃ = c_x0 x̂0 + c_xs x_s (Eq. 7)
        if times[i + 1] > sched.t_min:
            x = x + noise_std[i] * _randn(x, generator)  # + σ_t z (Algorithm 2, line 4)
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def ddim(denoiser, x, sched, ts, generator=None, callback=None, eta=0.0):
    """DDIM, Song et al. 2021, Eq. 12 with the noise level of Eq. 16 (η = 0 deterministic, η = 1 DDPM)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM noise), got {eta}")
    alpha, sigma = sched.alpha_sigma(ts)  # (N+1,)
    # Eq. 16's noise level η sqrt((1 − ᾱ_t)/(1 − ᾱ_s)) sqrt(1 − ᾱ_s/ᾱ_t), written for any (α, σ) as
    # η σ_t sqrt(1 − e^{−2h}) with e^{−h} = α_s σ_t / (σ_s α_t); the predicted noise keeps the rest of σ_t.
    exp_neg_h = alpha[:-1] * sigma[1:] / (sigma[:-1] * alpha[1:])  # (N,)
    sigma_eta = eta * sigma[1:] * (1 - exp_neg_h**2).sqrt()  # (N,)
    eps_scale = (sigma[1:] ** 2 - sigma_eta**2).sqrt()  # Eq. 12's sqrt(1 − ᾱ_{t−1} − σ_t(η)²), for any (α, σ)
    times, alpha, sigma = ts.tolist(), alpha.tolist(), sigma.tolist()
    sigma_eta, eps_scale = sigma_eta.tolist(), eps_scale.tolist()
    for i in range(len(times) - 1):
        # 1. Predict x0 and the noise it implies.
        x0_hat = denoiser(x, times[i])
        eps_hat = (x - alpha[i] * x0_hat) / sigma[i]
        # 2. Point at x0, add the predicted noise, then fresh noise (Eq. 12).
        x = alpha[i + 1] * x0_hat + eps_scale[i] * eps_hat
        if sigma_eta[i] > 0:
            x = x + sigma_eta[i] * _randn(x, generator)
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def euler(denoiser, x, sched, ts, generator=None, callback=None):
    """Euler on the probability-flow ODE in (x̃, σ̃), Karras et al. 2022, Algorithm 1 without the 2nd-order correction.

    It is the same update as DDIM: a first-order step with x̂0 held fixed lands on α_t x̂0 + σ_t ε̂ in any variables.
    On a flow schedule σ̃ = t/(1 − t) is infinite at t = 1; from there `flow_euler` steps in t (`sample` switches).
    """
    alpha, sigma_tilde = karras_variables(sched, ts, "euler")
    times, alpha, sigma_tilde = ts.tolist(), alpha.tolist(), sigma_tilde.tolist()
    x_tilde = x / alpha[0]
    for i in range(len(times) - 1):
        # 1. Predict x0 and evaluate the ODE's derivative.
        x0_hat = denoiser(alpha[i] * x_tilde, times[i])
        d = (x_tilde - x0_hat) / sigma_tilde[i]  # dx̃/dσ̃ (Eq. 4)
        # 2. Euler step x̃ + (σ̃_{i+1} − σ̃_i) d, written x̂0 + σ̃_{i+1} d (equal, as x̃ = x̂0 + σ̃_i d): in float32 the
        #    sum of x̃ and the step cancels where σ̃_i is large (cosine: diffusers' Euler is 3e-4 off there).
        x_tilde = x0_hat + sigma_tilde[i + 1] * d
        if callback is not None:
            callback(i, times[i], alpha[i + 1] * x_tilde, x0_hat)
    return alpha[-1] * x_tilde


def ancestral_sigmas(sigma_from, sigma_to) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_down, σ_up): step deterministically to σ_down, add noise σ_up; σ_down² + σ_up² = σ_to².

    σ_up² = σ_to² (σ_from² − σ_to²)/σ_from² is the noise of DDPM's posterior (k-diffusion's split at η = 1); with
    r = σ_to/σ_from ≤ 1 that is σ_up = σ_to sqrt(1 − r²) and σ_down = σ_to r.
    """
    sigma_from, sigma_to = torch.as_tensor(sigma_from), torch.as_tensor(sigma_to)
    r = sigma_to / sigma_from
    return sigma_to * r, sigma_to * (1 - r**2).sqrt()


@torch.no_grad()
def euler_ancestral(denoiser, x, sched, ts, generator=None, callback=None):
    """Euler ancestral (Karras et al. 2022's Euler with the DDPM-like noise split of Ho et al. 2020; k-diffusion)."""
    alpha, sigma_tilde = karras_variables(sched, ts, "euler_ancestral")
    sigma_down, sigma_up = ancestral_sigmas(sigma_tilde[:-1], sigma_tilde[1:])  # (N,) each
    times, alpha, sigma_tilde = ts.tolist(), alpha.tolist(), sigma_tilde.tolist()
    sigma_down, sigma_up = sigma_down.tolist(), sigma_up.tolist()
    x_tilde = x / alpha[0]
    for i in range(len(times) - 1):
        # 1. Predict x0 and evaluate the ODE's derivative.
        x0_hat = denoiser(alpha[i] * x_tilde, times[i])
        d = (x_tilde - x0_hat) / sigma_tilde[i]  # dx̃/dσ̃ (Eq. 4)
        # 2. Euler step down to σ_down (x̃ + (σ_down − σ̃_i) d, as in `euler`), then fresh noise back up to σ̃_{i+1}
        #    (σ_down² + σ_up² = σ̃_{i+1}²).
        x_tilde = x0_hat + sigma_down[i] * d
        if sigma_up[i] > 0:
            x_tilde = x_tilde + sigma_up[i] * _randn(x_tilde, generator)
        if callback is not None:
            callback(i, times[i], alpha[i + 1] * x_tilde, x0_hat)
    return alpha[-1] * x_tilde


@torch.no_grad()
def heun(denoiser, x, sched, ts, generator=None, callback=None):
    """Heun's 2nd-order method on the probability-flow ODE, Karras et al. 2022, Algorithm 1 (deterministic).

    On a flow schedule σ̃ is infinite at t = 1; from there `flow_heun` integrates in t (`sample` switches).
    """
    alpha, sigma_tilde = karras_variables(sched, ts, "heun")
    times, alpha, sigma_tilde = ts.tolist(), alpha.tolist(), sigma_tilde.tolist()
    x_tilde = x / alpha[0]
    for i in range(len(times) - 1):
        # 1. Euler step.
        x0_hat = denoiser(alpha[i] * x_tilde, times[i])
        d = (x_tilde - x0_hat) / sigma_tilde[i]  # dx̃/dσ̃ (Eq. 4)
        x_next = x_tilde + (sigma_tilde[i + 1] - sigma_tilde[i]) * d
        # 2. Apply the 2nd-order correction: the trapezoid with d' the derivative at the Euler point. Not on the
        #    step to σ̃ = 0, where d' = (x̃' − x̂0')/0 is undefined: that step stays first order (Algorithm 1).
        if sigma_tilde[i + 1] > 0:
            x0_next = denoiser(alpha[i + 1] * x_next, times[i + 1])
            d_prime = (x_next - x0_next) / sigma_tilde[i + 1]
            x_next = x_tilde + (sigma_tilde[i + 1] - sigma_tilde[i]) * (d + d_prime) / 2  # the trapezoidal rule
        x_tilde = x_next
        if callback is not None:
            callback(i, times[i], alpha[i + 1] * x_tilde, x0_hat)
    return alpha[-1] * x_tilde


def lms_coefficients(sigmas: list[float], sigma_next: float) -> list[float]:
    """c_j = ∫_{σ̃_i}^{σ̃_{i+1}} ℓ_j(τ) dτ, ℓ_j the Lagrange basis through sigmas = [σ̃_i, σ̃_{i−1}, …] (at most 4).

    ℓ_j has degree ≤ 3, so two-point Gauss–Legendre quadrature is exact (Abramowitz & Stegun 25.4.29):
    ∫_a^b f = (b − a)/2 · (f(m − r) + f(m + r)), m = (a + b)/2, r = (b − a)/(2√3).
    """
    if not 1 <= len(sigmas) <= 4:
        raise ValueError(f"LMS interpolates through 1 to 4 points, got {len(sigmas)}")
    a, b = sigmas[0], sigma_next
    middle, offset = (a + b) / 2, (b - a) / (2 * math.sqrt(3))

    def basis(j: int, tau: float) -> float:  # ℓ_j(τ) = Π_{m ≠ j} (τ − σ̃_m)/(σ̃_j − σ̃_m)
        return math.prod((tau - s) / (sigmas[j] - s) for m, s in enumerate(sigmas) if m != j)

    return [(b - a) / 2 * (basis(j, middle - offset) + basis(j, middle + offset)) for j in range(len(sigmas))]


@torch.no_grad()
def lms(denoiser, x, sched, ts, generator=None, callback=None, order=4, first_order_final=True):
    """Linear multistep (Adams–Bashforth on the σ̃ grid) on the probability-flow ODE, Karras et al. 2022.

    first_order_final=False integrates the interpolant down to σ̃ = 0 at full order, as k-diffusion and diffusers do.
    """
    if not 1 <= order <= 4:
        raise ValueError(f"LMS order must be 1, 2, 3 or 4, got {order}")
    alpha, sigma_tilde = karras_variables(sched, ts, "lms")
    times, alpha, sigma_tilde = ts.tolist(), alpha.tolist(), sigma_tilde.tolist()
    x_tilde = x / alpha[0]
    ds = []  # d_i, d_{i−1}, …, newest first
    for i in range(len(times) - 1):
        # 1. Evaluate the derivative and keep the last `order` of them.
        x0_hat = denoiser(alpha[i] * x_tilde, times[i])
        ds = [(x_tilde - x0_hat) / sigma_tilde[i]] + ds[: order - 1]  # dx̃/dσ̃ (Eq. 4)
        # 2. Step with the Lagrange interpolant through them integrated over the step: x̃ ← x̃ + Σ_j c_j d_j
        #    (first order on the step to σ̃ = 0 unless asked otherwise).
        k = 1 if sigma_tilde[i + 1] == 0 and first_order_final else len(ds)
        c = lms_coefficients(sigma_tilde[i::-1][:k], sigma_tilde[i + 1])
        x_tilde = x_tilde + sum(c_j * d_j for c_j, d_j in zip(c, ds))
        if callback is not None:
            callback(i, times[i], alpha[i + 1] * x_tilde, x0_hat)
    return alpha[-1] * x_tilde


# Adams–Bashforth weights for equal steps, newest value first: orders 1 to 4 (Liu et al. 2022, Eq. 12 is order 4).
ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def plms(denoiser, x, sched, ts, generator=None, callback=None):
    """Pseudo linear multistep (PLMS), Liu et al. 2022 ("PNDM"): ε of the last four steps combined as Eqs. 12–13, then
    moved along by the transfer φ of Eq. 9, which is DDIM's step with that ε (Stable Diffusion 1.x's sampler).

    The first step is the pseudo improved Euler step (ε averaged with ε at φ's landing point: one more network call;
    not on a step to the data, σ = 0); orders 2 and 3 follow until four ε are known. The weights are for equal
    steps in t, the grids PNDM runs on (Eq. 13's δ).
    """
    alpha, sigma_tilde = karras_variables(sched, ts, "plms")  # refuses α = 0, where φ divides by α_s
    sigma = alpha * sigma_tilde
    c_x = (alpha[1:] / alpha[:-1]).tolist()  # sqrt(ᾱ_{t−δ}/ᾱ_t) of Eq. 9
    # Eq. 9's −(ᾱ_{t−δ} − ᾱ_t)/(sqrt(ᾱ_t)(sqrt((1 − ᾱ_{t−δ})ᾱ_t) + sqrt((1 − ᾱ_t)ᾱ_{t−δ}))), which equals DDIM's
    # sqrt(1 − ᾱ_{t−δ}) − sqrt(ᾱ_{t−δ}/ᾱ_t) sqrt(1 − ᾱ_t) = σ_{t−δ} − α_{t−δ} σ̃_t (any α, σ; float64 here).
    c_eps = (sigma[1:] - alpha[1:] * sigma_tilde[:-1]).tolist()
    times, alpha, sigma = ts.tolist(), alpha.tolist(), sigma.tolist()
    eps_history = []  # ε_t, ε_{t+δ}, …, newest first
    for i in range(len(times) - 1):
        # 1. Predict the noise at x_t and keep the last four.
        x0_hat = denoiser(x, times[i])
        eps_history = [(x - alpha[i] * x0_hat) / sigma[i]] + eps_history[:3]
        # 2. Combine them (Eq. 13 and its lower orders); the first step instead averages ε_t with the ε at φ's
        #    landing point (pseudo improved Euler).
        if len(eps_history) == 1 and sigma[i + 1] > 0:
            x_next = c_x[i] * x + c_eps[i] * eps_history[0]  # φ(x_t, ε_t, t, t − δ), Eq. 9
            eps_next = (x_next - alpha[i + 1] * denoiser(x_next, times[i + 1])) / sigma[i + 1]
            eps_prime = (eps_history[0] + eps_next) / 2
        else:
            eps_prime = sum(b * eps for b, eps in zip(ADAMS_BASHFORTH[len(eps_history) - 1], eps_history))
        # 3. Transfer: x_{t−δ} = φ(x_t, ε'_t, t, t − δ) (Eq. 9).
        x = c_x[i] * x + c_eps[i] * eps_prime
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def flow_euler(denoiser, x, sched, ts, generator=None, callback=None):
    """Euler on the rectified-flow ODE dx/dt = v, Liu et al. 2022 (as SD3 samples, Esser et al. 2024)."""
    if sched.kind != "flow":
        raise ValueError("sampler 'flow_euler' needs a Schedule.flow(); for a VP schedule use 'euler' or 'ddim'")
    times = ts.tolist()
    for i in range(len(times) - 1):
        # 1. Predict x0.
        x0_hat = denoiser(x, times[i])
        # 2. Euler step in t, x ← x + (t_{i+1} − t_i)·v, along the velocity v = ε − x0 = (x − x̂0)/t_i.
        dt = times[i + 1] - times[i]
        x = x + dt / times[i] * (x - x0_hat)
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def flow_heun(denoiser, x, sched, ts, generator=None, callback=None):
    """Heun's 2nd-order method on the rectified-flow ODE dx/dt = v(x, t), in t (as Flux and SD3 can sample)."""
    if sched.kind != "flow":
        raise ValueError("sampler 'flow_heun' needs a Schedule.flow(); for a VP schedule use 'heun'")
    times = ts.tolist()
    for i in range(len(times) - 1):
        # 1. Euler step (as in `flow_euler`).
        x0_hat = denoiser(x, times[i])
        v = (x - x0_hat) / times[i]  # v = ε − x0 = (x_t − x̂0)/t
        x_next = x + (times[i + 1] - times[i]) * v
        # 2. Apply the 2nd-order correction: the trapezoid with v' the velocity at the Euler point. Not on the step
        #    to t = 0, where v' = (x' − x̂0')/0 is undefined: that step stays first order (as in `heun`).
        if times[i + 1] > 0:
            x0_next = denoiser(x_next, times[i + 1])
            v_prime = (x_next - x0_next) / times[i + 1]
            x_next = x + (times[i + 1] - times[i]) * (v + v_prime) / 2  # the trapezoidal rule
        x = x_next
        if callback is not None:
            callback(i, times[i], x, x0_hat)
    return x
