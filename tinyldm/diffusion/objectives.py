"""Training objectives: noising q(x_t | x0), the targets ε / v / x0 / flow, conversions, min-SNR-γ, times.

With x_t = α_t x0 + σ_t ε (schedules.py) the four things a network can be trained to predict are
    "eps"   ε                                   (Ho et al. 2020)
    "v"     v = α_t ε − σ_t x0                  (Salimans & Ho 2022; VP schedules)
    "x0"    x0
    "flow"  u = ε − x0 = dx_t/dt                (rectified flow, Liu et al. 2022; flow schedules)
Each one and x_t together determine x0, so each converts to any other (`to_x0`, `from_x0`, `convert`).
Coefficients α, σ are broadcast from shape () or (B,) over the data's trailing dims.
"""

import torch

from .schedules import Schedule

PREDICTIONS = ("eps", "v", "x0", "flow")
TIMESTEP_KINDS = ("uniform", "logit_normal")


def check_prediction(sched: Schedule, prediction: str) -> None:
    """Refuse a prediction name that does not exist or does not belong to this kind of schedule."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r} is not supported; choose one of {PREDICTIONS}")
    if sched.kind == "flow" and prediction == "v":
        raise ValueError("prediction 'v' is Salimans & Ho's VP v-prediction; a flow network's velocity ε − x0 "
                         "is prediction='flow'")
    if sched.kind == "vp" and prediction == "flow":
        raise ValueError("prediction 'flow' (velocity ε − x0) belongs to Schedule.flow(); for a VP schedule "
                         "choose 'eps', 'v' or 'x0'")


def _bcast(c, x: torch.Tensor) -> torch.Tensor:
    """A coefficient as something that broadcasts over x (B, ...): a Python number as it is, a tensor of shape () or
    (B,) in x's dtype and device."""
    if isinstance(c, (int, float)):
        return c
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c


def x0_coefficients(alpha, sigma, prediction: str):
    """(c_x, c_pred) with x̂0 = c_x·x_t + c_pred·pred: every prediction is affine in x_t and the network's output.

    From x_t = α x0 + σ ε:
        eps   x̂0 = (x_t − σ ε̂)/α
        v     x̂0 = (α x_t − σ v̂)/(α² + σ²)      (v = α ε − σ x0; α² + σ² = 1 on a VP schedule)
        x0    x̂0 = pred
        flow  x̂0 = (x_t − σ û)/(α + σ)          (u = ε − x0; α + σ = 1 on a flow schedule)
    α, σ: numbers or tensors; the coefficients come back in their kind, shape and dtype.
    """
    if prediction == "eps":
        return 1 / alpha, -sigma / alpha
    if prediction == "v":
        norm = alpha**2 + sigma**2
        return alpha / norm, -sigma / norm
    if prediction == "x0":
        return 0 * alpha, 0 * alpha + 1
    if prediction == "flow":
        return 1 / (alpha + sigma), -sigma / (alpha + sigma)
    raise ValueError(f"prediction {prediction!r} is not supported; choose one of {PREDICTIONS}")


def apply_x0_coefficients(pred: torch.Tensor, x_t: torch.Tensor, c_x: torch.Tensor, c_pred: torch.Tensor):
    """x̂0 = c_x·x_t + c_pred·pred (`x0_coefficients`); c_x and c_pred broadcast over x_t, in its dtype."""
    return c_x * x_t + c_pred * pred


def to_x0(pred: torch.Tensor, x_t: torch.Tensor, alpha, sigma, prediction: str) -> torch.Tensor:
    """x0 implied by a network output `pred` at x_t with coefficients α_t, σ_t."""
    if prediction == "x0":
        return pred
    c_x, c_pred = (_bcast(c, x_t) for c in x0_coefficients(alpha, sigma, prediction))
    return apply_x0_coefficients(pred, x_t, c_x, c_pred)


def from_x0(x0: torch.Tensor, x_t: torch.Tensor, alpha, sigma, prediction: str) -> torch.Tensor:
    """The network output of kind `prediction` that corresponds to x0 at x_t (inverse of `to_x0`)."""
    alpha, sigma = _bcast(alpha, x_t), _bcast(sigma, x_t)
    if prediction == "x0":
        return x0
    eps = (x_t - alpha * x0) / sigma  # ε̂ = (x_t − α x̂0)/σ
    if prediction == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "flow":
        return eps - x0
    raise ValueError(f"prediction {prediction!r} is not supported; choose one of {PREDICTIONS}")


def convert(pred: torch.Tensor, x_t: torch.Tensor, alpha, sigma, source: str, target: str) -> torch.Tensor:
    """Turn a `source` prediction into the equivalent `target` prediction, through x0."""
    return from_x0(to_x0(pred, x_t, alpha, sigma, source), x_t, alpha, sigma, target)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, sched: Schedule, t: torch.Tensor) -> torch.Tensor:
    """x_t = α_t x0 + σ_t ε, a sample of q(x_t | x0) (Ho et al. 2020, Eq. 4); t of shape () or (B,)."""
    alpha, sigma = sched.alpha_sigma(t)
    return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps


def training_target(x0: torch.Tensor, eps: torch.Tensor, sched: Schedule, t: torch.Tensor,
                    prediction: str) -> torch.Tensor:
    """What the network should output at x_t = α_t x0 + σ_t ε for the given prediction kind."""
    check_prediction(sched, prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "flow":
        return eps - x0  # u = dx_t/dt for α = 1 − t, σ = t
    alpha, sigma = sched.alpha_sigma(t)
    return _bcast(alpha, x0) * eps - _bcast(sigma, x0) * x0  # v = α ε − σ x0


def min_snr_weight(sched: Schedule, t: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-γ loss weight (Hang et al. 2023), float64 shaped like t.

    The weight makes every loss equal to min(SNR, γ)·‖x̂0 − x0‖², SNR = α²/σ²: it is min(SNR, γ) times
    (∂x0/∂pred)², i.e. min(SNR, γ)/SNR (ε), min(SNR, γ)/(SNR + 1) (v, VP), min(SNR, γ) (x0) and
    min(SNR, γ)·t² (flow). At zero SNR the ε weight is the limit 1 (written min(1, γ/SNR), no 0/0).
    """
    check_prediction(sched, prediction)
    alpha, sigma = sched.alpha_sigma(t)
    snr = alpha**2 / sigma**2
    if prediction == "eps":
        return torch.clamp(gamma / snr, max=1.0)
    if prediction == "v":
        return torch.clamp(snr, max=gamma) / (snr + 1)
    if prediction == "x0":
        return torch.clamp(snr, max=gamma)
    return torch.clamp(snr, max=gamma) * sigma**2 / (alpha + sigma) ** 2  # flow: x0 error = σ/(α + σ) · u error


def sample_timesteps(batch: int, sched: Schedule, generator: torch.Generator | None = None, kind: str = "uniform",
                     mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Training times in schedule units, float64 (B,): VP integers uniform in 0 … T−1; flow t ∈ (0, 1), shifted.

    Flow "uniform" draws t ~ U(0, 1); "logit_normal" draws t = sigmoid(n), n ~ N(mean, std²) (Esser et al. 2024,
    Sec. 3.1). Both then apply the schedule's shift, the same map the sampling grid uses.
    """
    if kind not in TIMESTEP_KINDS:
        raise ValueError(f"timestep kind {kind!r} is not supported; choose one of {TIMESTEP_KINDS}")
    if sched.kind == "vp":
        if kind != "uniform":
            raise ValueError("logit_normal timesteps are for flow schedules; use kind='uniform' for a VP schedule")
        return torch.randint(0, sched.num_train_timesteps, (batch,), generator=generator).double()
    if kind == "uniform":
        t = torch.rand(batch, generator=generator, dtype=torch.float64)
    else:
        t = torch.sigmoid(mean + std * torch.randn(batch, generator=generator, dtype=torch.float64))
    return sched.shift_time(t.clamp(1e-5, 1 - 1e-5))


def diffusion_loss(model, x0: torch.Tensor, sched: Schedule, prediction: str = "eps", t: torch.Tensor | None = None,
                   eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   min_snr_gamma: float | None = None, cond=None, timestep_kind: str = "uniform") -> torch.Tensor:
    """Mean squared error between model(x_t, model_time(t)[, cond]) and its target, optionally min-SNR-γ weighted.

    x0 (B, ...) are clean data (latents); t (B,) schedule times and ε default to fresh draws from `generator`.
    Returns a 0-dim tensor. Calls the network on the same time scale as `sample` (`Schedule.model_time`).
    """
    check_prediction(sched, prediction)
    # 1. Draw the times and the noise.
    if t is None:
        t = sample_timesteps(x0.shape[0], sched, generator, kind=timestep_kind)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
    # 2. Noise the data and ask the network, on its own time scale.
    x_t = add_noise(x0, eps, sched, t)  # (B, ...)
    t_model = sched.model_time(t).to(device=x0.device, dtype=torch.promote_types(x0.dtype, torch.float32))
    out = model(x_t, t_model) if cond is None else model(x_t, t_model, cond)
    # 3. Squared error per sample, weighted, averaged over the batch.
    if out.shape != x_t.shape:
        raise ValueError(f"the network returns {tuple(out.shape)} for x_t of shape {tuple(x_t.shape)}; it must predict "
                         f"{prediction} with the input's shape (a DiT with learn_sigma=True also predicts a variance: "
                         "build it with learn_sigma=False, as tinyldm.loading.backbone_config does)")
    target = training_target(x0, eps, sched, t, prediction)
    per_sample = (out - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(sched, t, prediction, min_snr_gamma).to(per_sample)
    return per_sample.mean()
