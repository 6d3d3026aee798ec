"""Samplers, simplest first: DDPM, DDIM, Euler, Euler ancestral, Heun, LMS, flow Euler (DPM-Solvers: dpm_solver.py).

Every sampler has the same signature and is a pure function:
    sampler(denoiser, x, sched, ts, generator=None, callback=None, **options) -> x at ts[-1]
    denoiser(x, t) -> x̂0     the network wrapped to predict x0 (sample.py), t a float schedule time
    x                         (B, ...) the state at ts[0]
    ts                        (N+1,) float64 decreasing schedule times; N steps; ts[-1] = sched.t_min is the data
    callback(i, t, x, x0_hat) after step i: t = ts[i] where the network was asked, x the new state at ts[i+1]
Each step goes from time s = ts[i] to the next, smaller time t = ts[i+1] (the notation of Lu et al. 2022).

Speed: a sampler reads the schedule once, for the whole grid, before its loop: the coefficients of every step as
Python floats (`grid_floats`) and, where a step multiplies x by one, as 0-dim tensors in x's dtype and device
(`per_step`). A step then costs the network call and a handful of elementwise ops, with no schedule lookups, no
tensor creation and no device syncs. Ops that take a scalar argument take a Python float at no extra cost
(`torch.lerp`'s weight, `torch.add`'s alpha: add(a, b, alpha=c) = a + c·b); a multiplication by one costs a cast.

Notation: alpha α, sigma σ (x_t = α x0 + σ ε), x0_hat x̂0, eps_hat ε̂ = (x − α x̂0)/σ, and the Karras/EDM
variables sigma_tilde σ̃ = σ/α, x_tilde x̃ = x/α = x0 + σ̃ ε, in which the probability-flow ODE reads
dx̃/dσ̃ = (x̃ − x̂0)/σ̃ (Karras et al. 2022, Eq. 4 with α folded in).
"""

import math

import torch

DDPM_VARIANCES = ("fixed_small", "fixed_large")


def _report(callback, i, t, x, x0_hat):
    if callback is not None:
        callback(i, t, x, x0_hat)


def grid_floats(*grids: torch.Tensor) -> list[list[float]]:
    """Per-step coefficient tensors (each (N+1,) or (N,), computed once for the whole grid) → lists of floats."""
    return [grid.tolist() for grid in grids]


def per_step(x: torch.Tensor, *grids: torch.Tensor) -> list[list[torch.Tensor]]:
    """Per-step coefficient tensors → lists of 0-dim tensors in x's dtype and device. Multiplying x by one of these
    is a single op; by a Python float (or a float64 tensor) it is two, the scalar's cast costing as much as the
    multiply itself on a latent-sized tensor."""
    return [list(grid.to(dtype=x.dtype, device=x.device).unbind()) for grid in grids]


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z ~ N(0, I) shaped like x, drawn on the generator's device (CPU unless the generator lives on x's device)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def _add_noise(x: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """x + std·z, z ~ N(0, I): a stochastic step's fresh noise (one op for the sum: add(a, b, alpha=c) = a + c·b)."""
    return torch.add(x, _randn(x, generator), alpha=std)


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
    # The posterior's coefficients for every step at once (step i goes from ts[i] to ts[i + 1]).
    c_x0, c_xs, beta_tilde, beta = ddpm_posterior(sched, ts[:-1], ts[1:])  # (N,) each
    noise_std = (beta_tilde if variance == "fixed_small" else beta).sqrt()
    times, c_x0, noise_std = grid_floats(ts, c_x0, noise_std)
    (c_xs,) = per_step(x, c_xs)
    for i in range(len(times) - 1):
        # 1. Predict x0.
        x0_hat = denoiser(x, times[i])
        # 2. Take the posterior mean, then add its noise (none on the step to the data).
        x = torch.add(c_xs[i] * x, x0_hat, alpha=c_x0[i])  # μ̃ = c_x0 x̂0 + c_xs x_s (Eq. 7)
        if times[i + 1] > sched.t_min:
            x = _add_noise(x, noise_std[i], generator)
        _report(callback, i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def ddim(denoiser, x, sched, ts, generator=None, callback=None, eta=0.0):
    """DDIM, Song et al. 2021, Eq. 12 with the noise level of Eq. 16 (η = 0 deterministic, η = 1 DDPM)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM noise), got {eta}")
    alpha, sigma = sched.alpha_sigma(ts)  # (N+1,)
    # Noise level of every step (Eq. 16): η sqrt((1 − ᾱ_t)/(1 − ᾱ_s)) sqrt(1 − ᾱ_s/ᾱ_t), written for any (α, σ) as
    # η σ_t sqrt(1 − e^{−2h}) with e^{−h} = α_s σ_t / (σ_s α_t); and what is left of σ_t for the predicted noise.
    exp_neg_h = alpha[:-1] * sigma[1:] / (sigma[:-1] * alpha[1:])  # (N,)
    eta_sigma = eta * sigma[1:] * (1 - exp_neg_h**2).sqrt()
    eps_scale = (sigma[1:] ** 2 - eta_sigma**2).sqrt()
    # Eq. 12, x_t = α_t x̂0 + eps_scale ε̂ with ε̂ = (x_s − α_s x̂0)/σ_s, collected per input (like DDPM's posterior
    # mean): x_t = c_x0 x̂0 + c_xs x_s, two coefficients per step.
    c_xs = eps_scale / sigma[:-1]
    c_x0 = alpha[1:] - c_xs * alpha[:-1]
    times, noisy, c_x0, eta_sigma = grid_floats(ts, eta_sigma > 0, c_x0, eta_sigma)
    (c_xs,) = per_step(x, c_xs)
    for i in range(len(times) - 1):
        # 1. Predict x0.
        x0_hat = denoiser(x, times[i])
        # 2. Point at x0, add the remaining predicted noise (Eq. 12, collected) and fresh noise.
        x = torch.add(c_xs[i] * x, x0_hat, alpha=c_x0[i])
        if noisy[i]:
            x = _add_noise(x, eta_sigma[i], generator)
        _report(callback, i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def euler(denoiser, x, sched, ts, generator=None, callback=None):
    """Euler on the probability-flow ODE in (x̃, σ̃), Karras et al. 2022, Algorithm 1 without churn.

    It is the same update as DDIM: a first-order step with x̂0 held fixed lands on α_s x̂0 + σ_s ε̂ in any variables.
    On a flow schedule σ̃ = t/(1 − t) is infinite at t = 1; from there `flow_euler` steps in t (`sample` switches).
    """
    alpha, sigma_tilde = karras_variables(sched, ts, "euler")
    times, shrink = grid_floats(ts, sigma_tilde[1:] / sigma_tilde[:-1])  # (N+1,), (N,): σ̃_{i+1}/σ̃_i
    (alpha,) = per_step(x, alpha)
    x_tilde = x / alpha[0]
    for i in range(len(times) - 1):
        # 1. Predict x0; the ODE's derivative is d = dx̃/dσ̃ = (x̃ − x̂0)/σ̃_i.
        x0_hat = denoiser(alpha[i] * x_tilde, times[i])
        # 2. Euler step x̃ ← x̃ + (σ̃_{i+1} − σ̃_i) d = x̂0 + (σ̃_{i+1}/σ̃_i)(x̃ − x̂0): the part of x̃ that is not x̂0
        #    shrinks with σ̃. One op: lerp(a, b, w) = a + w (b − a).
        x_tilde = torch.lerp(x0_hat, x_tilde, shrink[i])
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
    shrink = sigma_down / sigma_tilde[:-1]  # σ_down/σ̃_i
    times, noisy, shrink, sigma_up = grid_floats(ts, sigma_up > 0, shrink, sigma_up)
    (alpha,) = per_step(x, alpha)
    x_tilde = x / alpha[0]
    for i in range(len(times) - 1):
        # 1. Predict x0; the derivative is d = (x̃ − x̂0)/σ̃_i.
        x0_hat = denoiser(alpha[i] * x_tilde, times[i])
        # 2. Euler step down to σ_down, x̃ + (σ_down − σ̃_i) d = x̂0 + (σ_down/σ̃_i)(x̃ − x̂0) (as in `euler`), then
        #    fresh noise up to σ̃_{i+1}.
        x_tilde = torch.lerp(x0_hat, x_tilde, shrink[i])
        if noisy[i]:
            x_tilde = _add_noise(x_tilde, sigma_up[i], generator)
        if callback is not None:
            callback(i, times[i], alpha[i + 1] * x_tilde, x0_hat)
    return alpha[-1] * x_tilde


@torch.no_grad()
def heun(denoiser, x, sched, ts, generator=None, callback=None):
    """Heun's 2nd-order method on the probability-flow ODE, Karras et al. 2022, Algorithm 1 without churn.

    On a flow schedule σ̃ is infinite at t = 1; from there `flow_heun` integrates in t (`sample` switches).
    """
    alpha, sigma_tilde = karras_variables(sched, ts, "heun")
    times, to_data = grid_floats(ts, sigma_tilde == 0)
    shrink = sigma_tilde[1:] / sigma_tilde[:-1]  # σ̃_{i+1}/σ̃_i, as in `euler`
    stretch = torch.where(sigma_tilde[1:] > 0, 2 - sigma_tilde[:-1] / sigma_tilde[1:], 0)  # 1 + Δ/σ̃_{i+1}
    shrink, stretch = grid_floats(shrink, stretch)
    (alpha,) = per_step(x, alpha)
    x_tilde = x / alpha[0]
    for i in range(len(times) - 1):
        # 1. Euler step (as in `euler`): x̃' = x̃ + Δ d = x̂0 + (σ̃_{i+1}/σ̃_i)(x̃ − x̂0), Δ = σ̃_{i+1} − σ̃_i.
        x0_hat = denoiser(alpha[i] * x_tilde, times[i])
        x_next = torch.lerp(x0_hat, x_tilde, shrink[i])
        # 2. Apply the 2nd-order correction, the trapezoid x̃ + Δ (d + d')/2 with d' = (x̃' − x̂0')/σ̃_{i+1} the
        #    derivative at x̃'. As x̃ + Δ d = x̃', it is the mean of x̃ and x̃' + Δ d', an Euler step from x̃' with
        #    its own slope, which is x̂0' + (1 + Δ/σ̃_{i+1})(x̃' − x̂0'): two lerps. Not on the step to σ̃ = 0,
        #    where d' is undefined.
        if not to_data[i + 1]:
            x0_next = denoiser(alpha[i + 1] * x_next, times[i + 1])
            x_next = torch.lerp(x_tilde, torch.lerp(x0_next, x_next, stretch[i]), 0.5)
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
    times, alpha, sigma_tilde = grid_floats(ts, *karras_variables(sched, ts, "lms"))
    n = len(times) - 1
    # The weights of every step, from the grid alone: step i integrates the interpolant through σ̃_i, σ̃_{i−1}, …
    # (the last `order` of them; first order to σ̃ = 0 by default).
    orders = [1 if sigma_tilde[i + 1] == 0 and first_order_final else min(order, i + 1) for i in range(n)]
    weights = [lms_coefficients(sigma_tilde[i::-1][:k], sigma_tilde[i + 1]) for i, k in enumerate(orders)]
    x_tilde = x / alpha[0]
    ds = []  # d_i, d_{i−1}, …, newest first
    for i in range(n):
        # 1. Evaluate the derivative and keep the last `order` of them.
        x0_hat = denoiser(alpha[i] * x_tilde, times[i])
        ds = [(x_tilde - x0_hat) / sigma_tilde[i]] + ds[: order - 1]
        # 2. Step with the integrated Lagrange interpolant of the history: x̃ + Σ_j c_j d_j, a fused op per term.
        for c_j, d_j in zip(weights[i], ds):
            x_tilde = torch.add(x_tilde, d_j, alpha=c_j)
        if callback is not None:
            callback(i, times[i], alpha[i + 1] * x_tilde, x0_hat)
    return alpha[-1] * x_tilde


@torch.no_grad()
def flow_euler(denoiser, x, sched, ts, generator=None, callback=None):
    """Euler on the rectified-flow ODE dx/dt = v, Liu et al. 2022 (as SD3 samples, Esser et al. 2024)."""
    if sched.kind != "flow":
        raise ValueError("sampler 'flow_euler' needs a Schedule.flow(); for a VP schedule use 'euler' or 'ddim'")
    times = ts.tolist()
    for i in range(len(times) - 1):
        # 1. Predict x0; the velocity is v = ε − x0 = (x_t − x̂0)/t.
        x0_hat = denoiser(x, times[i])
        # 2. Euler step in t, x + (t_{i+1} − t_i) v = x̂0 + (t_{i+1}/t_i)(x − x̂0) (as `euler` in σ̃): one lerp.
        x = torch.lerp(x0_hat, x, times[i + 1] / times[i])
        _report(callback, i, times[i], x, x0_hat)
    return x


@torch.no_grad()
def flow_heun(denoiser, x, sched, ts, generator=None, callback=None):
    """Heun's 2nd-order method on the rectified-flow ODE dx/dt = v(x, t), in t (as Flux and SD3 can sample).

    x' = x + h·v(x, t), then x ← x + h·(v(x, t) + v(x', t + h))/2, h = t_next − t; the step to t = 0 stays first
    order (v = (x − x̂0)/t is undefined there), as in Karras et al. 2022, Algorithm 1.
    """
    if sched.kind != "flow":
        raise ValueError("sampler 'flow_heun' needs a Schedule.flow(); for a VP schedule use 'heun'")
    times = ts.tolist()
    for i in range(len(times) - 1):
        # 1. Euler predictor (as in `flow_euler`): x' = x + h v = x̂0 + (t_{i+1}/t_i)(x − x̂0), h = t_{i+1} − t_i.
        x0_hat = denoiser(x, times[i])
        x_next = torch.lerp(x0_hat, x, times[i + 1] / times[i])
        # 2. Trapezoidal corrector x + h (v + v')/2 with the velocity v' = (x' − x̂0')/t_{i+1} at the predicted
        #    point: the mean of x and x' + h v' = x̂0' + (1 + h/t_{i+1})(x' − x̂0') (as in `heun`).
        if times[i + 1] > 0:
            x0_next = denoiser(x_next, times[i + 1])
            x_next = torch.lerp(x, torch.lerp(x0_next, x_next, 2 - times[i] / times[i + 1]), 0.5)
        x = x_next
        _report(callback, i, times[i], x, x0_hat)
    return x
