"""`sample`: from noise to data with any sampler, schedule and prediction, optionally with classifier-free guidance.

The network contract: model(x_t, t) (or model(x_t, t, cond) with a condition) returns its raw output, ε, v, x0 or
flow velocity as named by `prediction`, where t is a float tensor of shape (B,) on the network's training time
scale, `Schedule.model_time` of the schedule time (VP: the index 0 … T−1; flow: t·T). `make_denoiser` turns it
into the denoiser D(x, t) → x̂0 that every sampler uses.
"""

import torch
from tqdm.auto import tqdm

from . import dpm_solver, samplers
from .guidance import guided_model
from .objectives import check_prediction, to_x0
from .schedules import Schedule

SAMPLERS = {
    "ddpm": samplers.ddpm,
    "ddim": samplers.ddim,
    "euler": samplers.euler,
    "euler_ancestral": samplers.euler_ancestral,
    "heun": samplers.heun,
    "lms": samplers.lms,
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


def nfe(sampler: str, steps: int, denoise_to_zero: bool = True) -> int:
    """Network calls `sample` makes: with k calls per step, k(N − 1) + 1 when the last step goes to σ = 0
    (it is first order, one call: Heun 2N − 1), else k(N − 1) (N listed times, N − 1 steps)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not supported; choose one of {tuple(SAMPLERS)}")
    k = CALLS_PER_STEP.get(sampler, 1)
    return k * (steps - 1) + (1 if denoise_to_zero else 0)


def make_denoiser(net, sched: Schedule, prediction: str):
    """D(x, t) → x̂0: call net(x, model_time(t)) with t as a (B,) tensor and convert its output to x0."""

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_model = torch.full((x.shape[0],), float(sched.model_time(t)), device=x.device,
                             dtype=torch.promote_types(x.dtype, torch.float32))  # (B,)
        alpha, sigma = sched.alpha_sigma(t)
        return to_x0(net(x, t_model), x, alpha, sigma, prediction)

    return denoiser


def _check_timesteps(timesteps, sched: Schedule) -> torch.Tensor:
    ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    if len(ts) < 1 or (ts.diff() >= 0).any():
        raise ValueError(f"timesteps must be a non-empty, strictly decreasing list, got {ts.tolist()}")
    sched.alpha(ts)  # raises if outside [t_min, t_max]
    return ts


@torch.no_grad()
def sample(model, noise: torch.Tensor, sched: Schedule, sampler: str = "dpmpp_2m", steps: int = 20,
           spacing: str = "trailing", prediction: str = "eps", eta: float = 0.0, guidance_scale: float | None = None,
           guidance_rescale: float = 0.0, generator: torch.Generator | None = None, callback=None,
           timesteps=None, denoise_to_zero: bool = True, cond=None, null_cond=None,
           ddpm_variance: str = "fixed_small", progress: bool = False) -> torch.Tensor:
    """Integrate from `noise` (x at the first time, unit variance, (B, ...)) to the data; returns x, same shape.

    steps/spacing pick N times with `Schedule.timesteps`; `timesteps` (decreasing schedule times, fractional
    allowed) overrides them. With denoise_to_zero the sampler adds a final first-order step to the data (σ = 0);
    without it, it stops at the last listed time and returns x there. eta is DDIM's η. With guidance_scale w,
    model(x, t, cond) is called once per step on the batch [cond, null_cond] and guided (guidance.py).
    callback(i, t, x, x0_hat) is called after step i with the schedule time t (float) where the network was
    asked, the new state x and the prediction x̂0; progress=True shows a tqdm bar over the steps.
    """
    # 1. Check the request.
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not supported; choose one of {tuple(SAMPLERS)}")
    check_prediction(sched, prediction)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM noise), got {eta}")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"eta is DDIM's η and sampler {sampler!r} does not take it; use sampler='ddim' or eta=0")
    # 2. Build the time grid: the listed times, then the data (t_min) if we denoise to zero.
    ts = sched.timesteps(steps, spacing) if timesteps is None else _check_timesteps(timesteps, sched)
    if denoise_to_zero and ts[-1] > sched.t_min:
        ts = torch.cat([ts, ts.new_tensor([sched.t_min])])
    if len(ts) < 2:
        raise ValueError("nothing to do: a single time with denoise_to_zero=False; list at least two times")
    if prediction == "eps" and sched.alpha(ts[0]) == 0:
        raise ValueError(f"prediction='eps' gives no x0 where α = 0 (t = {ts[0].item():g}: zero terminal SNR, or flow "
                         "at t = 1); train with prediction='v' (VP) or 'flow', or start the grid below that time")
    # 3. Wrap the network: guidance on its raw output, then the prediction → x0.
    if guidance_scale is not None:
        net = guided_model(model, cond, null_cond, guidance_scale, guidance_rescale)
    elif cond is not None:
        net = lambda x, t: model(x, t, cond)
    else:
        net = model
    denoiser = make_denoiser(net, sched, prediction)
    # 4. Run the sampler, reporting each step.
    options = {"ddim": {"eta": eta}, "ddpm": {"variance": ddpm_variance}}.get(sampler, {})
    bar = tqdm(total=len(ts) - 1, desc=sampler, disable=not progress)

    def report(i, t, x, x0_hat):
        bar.update(1)
        if callback is not None:
            callback(i, float(t), x, x0_hat)

    try:
        return SAMPLERS[sampler](denoiser, noise, sched, ts, generator=generator, callback=report, **options)
    finally:
        bar.close()
