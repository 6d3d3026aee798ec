"""`sample`: from noise to data with any sampler, schedule and prediction, optionally with classifier-free guidance.

The network contract: model(x_t, t) (or model(x_t, t, cond) with a condition) returns its raw output, ε, v, x0 or
flow velocity as named by `prediction`, where t is a float tensor of shape (B,) on the network's training time
scale, `Schedule.model_time` of the schedule time (VP: the index 0 … T−1; flow: t·T). `make_denoiser` turns it
into the denoiser D(x, t) → x̂0 that every sampler uses.

`SamplingConfig` is the one validated group of sampling settings (sampler, steps, spacing, η, guidance w and its
rescale φ, autoguidance w_a, seed), checked once when it is built and passed whole from the command line
(sample.py, evaluate.py) through `tinyldm.generate.generate` to `sample`, which trusts it; one name per concept:
`cfg_scale` is the guidance scale w everywhere, `ag_scale` the autoguidance scale w_a.
"""

import math
import warnings
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import dpm_solver, samplers
from .guidance import guided_model
from .objectives import check_prediction, to_x0
from .schedules import SPACINGS, Schedule

SAMPLERS = {
    "ddpm": samplers.ddpm,
    "ddim": samplers.ddim,
    "euler": samplers.euler,
    "euler_ancestral": samplers.euler_ancestral,
    "heun": samplers.heun,
    "lms": samplers.lms,
    "plms": samplers.plms,
    "flow_euler": samplers.flow_euler,
    "flow_heun": samplers.flow_heun,
    "dpm_solver_1": dpm_solver.dpm_solver_1,
    "dpm_solver_2": dpm_solver.dpm_solver_2,
    "dpm_solver_3": dpm_solver.dpm_solver_3,
    "dpmpp_2m": dpm_solver.dpmpp_2m,
    "dpmpp_3m": dpm_solver.dpmpp_3m,
    "dpmpp_2m_sde": dpm_solver.dpmpp_2m_sde,
}
STOCHASTIC = ("ddpm", "euler_ancestral", "dpmpp_2m_sde")  # and "ddim" with eta > 0
# Network calls per step; the samplers not listed call the network once per step.
CALLS_PER_STEP = {"heun": 2, "flow_heun": 2, "dpm_solver_2": 2, "dpm_solver_3": 3}


# On a flow schedule σ̃ = t/(1 − t) is infinite at t = 1, so Euler and Heun in σ̃ cannot start there; `sample` runs
# their flow forms in t instead and says so once.
FLOW_FORMS = {"euler": "flow_euler", "heun": "flow_heun"}


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample from a trained model; validated once, here."""

    sampler: str = "dpmpp_2m"  # one of SAMPLERS (docs/samplers_guide.md: which one?)
    steps: int = 20  # N: times where the network is asked (network calls: `nfe`)
    spacing: str = "trailing"  # time grid: leading | trailing | linspace | karras (Schedule.timesteps)
    eta: float = 0.0  # DDIM's η: 0 deterministic, 1 DDPM-like noise; only for sampler "ddim"
    cfg_scale: float = 1.25  # classifier-free guidance w: 1 = conditional (no guidance), 0 = unconditional; 1.25
    # had the best Fréchet distance at ≥ 90 % condition accuracy for the tiny recipe (docs/speedrun.md)
    cfg_rescale: float = 0.0  # guidance rescale φ ∈ [0, 1] (Lin et al. 2023; 0.7 tames a large w)
    ag_scale: float = 1.0  # autoguidance w_a (Karras et al. 2024): 1 = none; > 1 also pushes away from the run's
    # guide network, its weights early in training (guidance.py); needs `sample(..., guide=)`
    seed: int = 0  # same seed, same images (tinyldm.generate.initial_noise)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not supported; choose one of {tuple(SAMPLERS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer (at least 1 sampling step), got {self.steps!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing {self.spacing!r} is not supported; choose one of {SPACINGS}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM noise), got {self.eta}")
        if self.eta != 0.0 and self.sampler != "ddim":
            raise ValueError(f"eta is DDIM's η and sampler {self.sampler!r} does not take it; use sampler='ddim' "
                             "or eta=0")
        if not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale {self.cfg_scale} must be a finite number (1 = no guidance, 4 is typical)")
        if not math.isfinite(self.ag_scale):
            raise ValueError(f"ag_scale {self.ag_scale} must be a finite number (1 = no autoguidance, 1.5 is typical)")
        if not 0.0 <= self.cfg_rescale <= 1.0:
            raise ValueError(f"cfg_rescale φ {self.cfg_rescale} must be in [0, 1] (0 = off, 0.7 in Lin et al.)")


def nfe(sampler: str, steps: int, denoise_to_zero: bool = True) -> int:
    """Network calls `sample` makes: with k calls per step, k(N − 1) + 1 when the last step goes to σ = 0
    (it is first order, one call: Heun 2N − 1), else k(N − 1) (N listed times, N − 1 steps); PLMS adds one."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not supported; choose one of {tuple(SAMPLERS)}")
    k = CALLS_PER_STEP.get(sampler, 1)
    start = 1 if sampler == "plms" and steps >= 2 else 0  # PLMS's first step asks twice unless it goes to the data
    return k * (steps - 1) + (1 if denoise_to_zero else 0) + start


def make_denoiser(net, sched: Schedule, prediction: str, ts: torch.Tensor | None = None):
    """D(x, t) → x̂0: ask the network at schedule time t (a float) on its own time scale, `Schedule.model_time`,
    with t as a (B,) tensor, and convert its output (ε, v, x0 or flow velocity) to x0 (objectives.to_x0).

    α_t, σ_t and the network's time are read from the schedule for all of `ts` (the sampling grid) at once, and for
    any other time (DPM-Solver-2 and -3 ask between grid times) when it is first asked.
    """

    def read_schedule(t: torch.Tensor) -> dict[float, tuple[float, float, float]]:  # (n,) times → {t: (α, σ, t_net)}
        alpha, sigma = sched.alpha_sigma(t)
        return dict(zip(t.tolist(), zip(alpha.tolist(), sigma.tolist(), sched.model_time(t).tolist())))

    known = read_schedule(ts) if ts is not None else {}

    def denoiser(x: torch.Tensor, t) -> torch.Tensor:
        t = float(t)
        if t not in known:
            known.update(read_schedule(torch.tensor([t], dtype=torch.float64)))
        alpha, sigma, t_net = known[t]
        t_net = torch.full((x.shape[0],), t_net, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
        return to_x0(net(x, t_net), x, alpha, sigma, prediction)  # (B, ...)

    return denoiser


def _check_timesteps(timesteps, sched: Schedule) -> torch.Tensor:
    ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    if len(ts) < 1 or (ts.diff() >= 0).any():
        raise ValueError(f"timesteps must be a non-empty, strictly decreasing list, got {ts.tolist()}")
    sched.alpha(ts)  # raises if outside [t_min, t_max]
    return ts


@torch.no_grad()
def sample(model, noise: torch.Tensor, sched: Schedule, config: SamplingConfig, *, prediction: str = "eps",
           cond=None, null_cond=None, guide=None, generator: torch.Generator | None = None, callback=None,
           timesteps=None, denoise_to_zero: bool = True, ddpm_variance: str = "fixed_small",
           sampler_options: dict | None = None, progress: bool = False) -> torch.Tensor:
    """Integrate from `noise` (x at the first time, unit variance, (B, ...)) to the data; returns x, same shape.

    `config` was validated when it was built and is trusted here (its seed is the caller's, for `noise`; a stochastic
    sampler's step noise comes from `generator`). config.steps and config.spacing pick N times with
    `Schedule.timesteps`; `timesteps` (decreasing schedule times, fractional allowed) overrides them. With
    denoise_to_zero the sampler adds a final first-order step to the data (σ = 0); without it, it stops at the last
    listed time and returns x there. With config.cfg_scale w ≠ 1, model(x, t, cond) is called once per step on the
    batch [cond, null_cond] and guided (guidance.py); w = 1 is no guidance: one forward, model(x, t, cond), or
    model(x, t) without a cond (an unconditional model takes SamplingConfig(cfg_scale=1.0)). With config.ag_scale
    w_a ≠ 1, guide(x, t, cond) (the same network earlier in its training) is asked too (autoguidance).
    callback(i, t, x, x0_hat) is called after step i with the schedule time t (float) where the network was asked,
    the new state x and the prediction x̂0; progress=True shows a tqdm bar over the steps. sampler_options are
    further keyword options of the sampler function (e.g. {"lower_order_final": False} for dpmpp_*;
    diffusers_grids.py uses them).
    """
    # 1. Check what the config cannot: the prediction against the schedule, and the schedule against the sampler.
    check_prediction(sched, prediction)
    sampler = config.sampler
    if sched.kind == "flow" and sampler in FLOW_FORMS:
        warnings.warn(f"sampler {sampler!r} on a flow schedule runs {FLOW_FORMS[sampler]!r}: the same method in t, "
                      "because σ̃ = t/(1 − t) is infinite at t = 1", stacklevel=3)
        sampler = FLOW_FORMS[sampler]
    # 2. Build the time grid: the listed times, then the data (t_min) if we denoise to zero.
    ts = sched.timesteps(config.steps, config.spacing) if timesteps is None else _check_timesteps(timesteps, sched)
    if denoise_to_zero and ts[-1] > sched.t_min:
        ts = torch.cat([ts, ts.new_tensor([sched.t_min])])
    if len(ts) < 2:
        raise ValueError("nothing to do: a single time with denoise_to_zero=False; list at least two times")
    if prediction == "eps" and sched.alpha_is_zero_at_t_max and sched.alpha(ts[0]) == 0:
        raise ValueError(f"prediction='eps' gives no x0 where α = 0 (t = {ts[0].item():g}: zero terminal SNR, or flow "
                         "at t = 1); train with prediction='v' (VP) or 'flow', or start the grid below that time")
    # 3. Wrap the network: guidance on its raw output, then the prediction → x0. w = w_a = 1 is the conditional
    #    output itself (for any φ), so it needs no second forward.
    if config.cfg_scale != 1.0 or config.ag_scale != 1.0:
        net = guided_model(model, cond, null_cond, config.cfg_scale, config.cfg_rescale, guide, config.ag_scale)
    elif cond is not None:
        net = lambda x, t: model(x, t, cond)
    else:
        net = model
    denoiser = make_denoiser(net, sched, prediction, ts)
    # 4. Run the sampler, reporting each step to the callback and the progress bar.
    options = {"ddim": {"eta": config.eta}, "ddpm": {"variance": ddpm_variance}}.get(sampler, {})
    options |= sampler_options or {}
    bar = tqdm(total=len(ts) - 1, desc=sampler, disable=not progress)

    def report(i, t, x, x0_hat):
        bar.update(1)
        if callback is not None:
            callback(i, t, x, x0_hat)

    with bar:  # no reporting when nobody listens: the Karras samplers would compute x = α x̃ for it
        return SAMPLERS[sampler](denoiser, noise, sched, ts, generator=generator,
                                 callback=report if progress or callback is not None else None, **options)
