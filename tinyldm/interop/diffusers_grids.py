"""diffusers' schedulers as tinyldm time grids: `sample` with them reproduces diffusers (no diffusers import).

A diffusers scheduler is a class plus settings that decide where the network is asked and where each step lands;
a tinyldm sampler is a pure function of a list of schedule times. `diffusers_grid` turns the first into the second
(measured against diffusers 0.42.1; docs/coming_from_diffusers.md has the table):

    sched = diffusers_schedule("EulerDiscreteScheduler", **scheduler_config)       # or Schedule.vp("scaled_linear")
    grid = diffusers_grid("EulerDiscreteScheduler", 20, sched, **scheduler_config)
    x0 = sample_like_diffusers(unet, noise, grid, cond=ids, null_cond=null_ids, cfg_scale=4.0)

Notation (schedules.py): t schedule time (VP index 0 … T−1; t = −1 is the data), ᾱ_t, α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t),
σ̃_t = σ_t/α_t (diffusers' `sigmas`), N steps, T = num_train_timesteps, Δ = T // N, z the unit noise.
diffusers' settings as symbols:
    timestep_spacing     the grid t_0 > … > t_{N−1}: leading, trailing, linspace (Lin et al. 2023, Table 2)
    steps_offset         k: the leading grid moved to t_i + k (the other spacings ignore it)
    set_alpha_to_one     ᾱ after DDIM's and PNDM's last step: 1 (t = −1, the data) or ᾱ_0 (t = 0)
    skip_prk_steps       PNDM without its Runge–Kutta start: PLMS (Liu et al. 2022), as Stable Diffusion 1.x ships it
    final_sigmas_type    σ̃ after DPM-Solver's last step: 0 ("zero", the data) or σ̃_0 ("sigma_min", t = 0)
    use_karras_sigmas    σ̃_i on Karras et al. 2022's ρ = 7 grid (Eq. 5); sigma_min, sigma_max its ends (Euler)
    clip_sample(_range)  x̂0 clamped to [−r, r] before each step
    init_noise_sigma     x at t_0 = z (leading) or σ_{t_0} z (trailing, linspace) for Euler, Heun, LMS
    prediction_type      epsilon → "eps", v_prediction → "v", sample → "x0"
    eta                  DDIM's η (an argument of diffusers' `step`)
What diffusers does that tinyldm's own grids (`Schedule.timesteps`) do not:
    1. DDIM and PNDM step t → t − Δ whatever the spacing; that is the next grid time only for leading, and for
       trailing when N divides T. Otherwise the state is off diffusers' own grid (diffusers issue #12633); not
       reproduced.
    2. DPM-Solver++ lays N + 1 leading / linspace points and drops the last one (t = 0).
    3. Euler, Euler ancestral, Heun and LMS take fractional linspace times and interpolate σ̃ *linearly* in t there;
       the network is told the fractional time. tinyldm interpolates λ = −log σ̃ instead, so the grid holds the
       time with the same σ̃ and `diffusers_model` tells the network diffusers' time.
    4. The same four start from σ_{t_0} z on trailing and linspace grids (init_noise_sigma = σ̃_max in x/α units).
    5. Their Karras grid runs between the spacing's first and last σ̃ (trailing: σ̃_999 … σ̃_{T/N−1}); DPM-Solver's
       between σ̃_{T−1} and σ̃_0, and it tells the network the rounded time.
    6. LMS keeps order 4 on the step to σ̃ = 0 (tinyldm's default is a first-order last step).
    7. PNDM with skip_prk_steps lists t_1 twice: the second call, where the first step lands, only serves to redo
       that step with the mean of both ε (pseudo improved Euler); `plms` makes it inside its first step.
"""

import math
import warnings
from dataclasses import dataclass, field, replace

import torch

from tinyldm.diffusion.guidance import guided_model
from tinyldm.diffusion.objectives import from_x0, to_x0
from tinyldm.diffusion.sampling import SamplingConfig, sample
from tinyldm.diffusion.schedules import Schedule, integer_spacing, karras_sigmas

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
SPACINGS = ("leading", "trailing", "linspace")

# Every scheduler's defaults in diffusers 0.42.1 for the settings that decide the result, then those shared by all.
DEFAULTS = {
    "DDIMScheduler": {"timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True, "clip_sample": True,
                      "clip_sample_range": 1.0, "eta": 0.0, "use_clipped_model_output": False},
    "DDPMScheduler": {"timestep_spacing": "leading", "steps_offset": 0, "clip_sample": True, "clip_sample_range": 1.0,
                      "variance_type": "fixed_small"},
    "DPMSolverMultistepScheduler": {"timestep_spacing": "linspace", "steps_offset": 0, "use_karras_sigmas": False,
                                    "solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                                    "lower_order_final": True, "final_sigmas_type": "zero", "variance_type": None},
    "EulerDiscreteScheduler": {"timestep_spacing": "linspace", "steps_offset": 0, "use_karras_sigmas": False,
                               "sigma_min": None, "sigma_max": None, "final_sigmas_type": "zero"},
    "EulerAncestralDiscreteScheduler": {"timestep_spacing": "linspace", "steps_offset": 0},
    "HeunDiscreteScheduler": {"timestep_spacing": "linspace", "steps_offset": 0, "use_karras_sigmas": False,
                              "clip_sample": False, "clip_sample_range": 1.0, "beta_start": 0.00085, "beta_end": 0.012},
    "LMSDiscreteScheduler": {"timestep_spacing": "linspace", "steps_offset": 0, "use_karras_sigmas": False, "order": 4},
    "PNDMScheduler": {"timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": False,
                      "skip_prk_steps": False},
}
COMMON = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
          "rescale_betas_zero_snr": False, "prediction_type": "epsilon"}
# Settings reproduced only at diffusers' default; bookkeeping, and settings that act only with one of those.
ONLY_DEFAULT = {"trained_betas": None, "thresholding": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                "use_lu_lambdas": False, "use_flow_sigmas": False, "use_dynamic_shifting": False,
                "euler_at_final": False, "lambda_min_clipped": -math.inf, "interpolation_type": "linear",
                "timestep_type": "discrete"}
IGNORED = ("_class_name", "_diffusers_version", "dynamic_thresholding_ratio", "sample_max_value", "flow_shift",
           "time_shift_type")
SIGMA_SAMPLERS = {"EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_ancestral",
                  "HeunDiscreteScheduler": "heun", "LMSDiscreteScheduler": "lms"}


@dataclass(frozen=True, eq=False)
class DiffusersGrid:
    """What `sample` needs to take the steps a diffusers scheduler takes (`sample_like_diffusers` passes it all)."""

    scheduler: str  # diffusers' class name
    sched: Schedule  # the VP schedule the grid is on
    sampler: str  # the tinyldm sampler that takes the same steps
    timesteps: torch.Tensor  # (N,) or (N+1,) float64 decreasing schedule times of the states (`sample(timesteps=)`)
    model_times: torch.Tensor  # same shape: the time diffusers tells the network at each of them
    denoise_to_zero: bool  # whether the last step goes to the data (σ = 0); otherwise it ends at timesteps[-1]
    noise_scale: float  # x at timesteps[0] is noise_scale · z (init_noise_sigma in x = α x̃ units)
    prediction: str  # tinyldm's name for prediction_type
    eta: float = 0.0  # DDIM's η
    ddpm_variance: str = "fixed_small"  # DDPM's posterior variance β̃ ("fixed_small") or β ("fixed_large")
    clip_x0: float | None = None  # clip_sample_range r: x̂0 clamped to [−r, r]; None without clip_sample
    sampler_options: dict = field(default_factory=dict)  # extra keyword options of the sampler function


def _settings(scheduler: str, config: dict) -> dict:
    """diffusers' settings for `scheduler`: its defaults, updated by config, each one checked."""
    if scheduler not in DEFAULTS:
        raise ValueError(f"scheduler {scheduler!r} is not one tinyldm reproduces; choose one of {tuple(DEFAULTS)}")
    if config.get("_class_name", scheduler) != scheduler:
        raise ValueError(f"the config is for {config['_class_name']!r}, not {scheduler!r}; pass its _class_name")
    cfg = {**COMMON, **ONLY_DEFAULT, **DEFAULTS[scheduler]}
    for key in config:
        if key not in cfg and key not in IGNORED:
            raise ValueError(f"{scheduler} setting {key!r} is unknown to tinyldm; the ones it reads are "
                             f"{sorted(cfg)}")
    cfg.update({k: v for k, v in config.items() if k not in IGNORED})
    for key, default in ONLY_DEFAULT.items():
        if cfg[key] != default:
            raise ValueError(f"{scheduler} with {key}={cfg[key]!r} is not reproduced by tinyldm; only {key}="
                             f"{default!r} (docs/coming_from_diffusers.md)")
    if cfg["beta_schedule"] not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule {cfg['beta_schedule']!r} has no tinyldm Schedule; choose one of "
                         f"{tuple(BETA_SCHEDULES)}")
    if cfg["prediction_type"] not in PREDICTIONS:
        raise ValueError(f"prediction_type {cfg['prediction_type']!r} is not a VP prediction tinyldm reproduces; "
                         f"choose one of {tuple(PREDICTIONS)}")
    if cfg["timestep_spacing"] not in SPACINGS:
        raise ValueError(f"timestep_spacing {cfg['timestep_spacing']!r} is not one of diffusers' {SPACINGS}")
    return cfg


def diffusers_schedule(scheduler: str, **config) -> Schedule:
    """The tinyldm Schedule of a diffusers scheduler config (β schedule, T, zero terminal SNR), e.g. from
    scheduler_config.json; settings missing from config take that scheduler's defaults."""
    cfg = _settings(scheduler, config)
    return Schedule.vp(BETA_SCHEDULES[cfg["beta_schedule"]], num_train_timesteps=cfg["num_train_timesteps"],
                       beta_start=cfg["beta_start"], beta_end=cfg["beta_end"],
                       zero_terminal_snr=cfg["rescale_betas_zero_snr"])


def _check_schedule(scheduler: str, config: dict, sched: Schedule) -> None:
    """The β settings given in config must describe sched, or the two compute different ᾱ."""
    if sched.kind != "vp":
        raise ValueError(f"{scheduler} is a VP scheduler; build the schedule with diffusers_schedule(...) or "
                         "Schedule.vp(...), not Schedule.flow()")
    ours = {"num_train_timesteps": sched.num_train_timesteps, "rescale_betas_zero_snr": sched.zero_terminal_snr,
            "beta_schedule": next((k for k, v in BETA_SCHEDULES.items() if v == sched.beta_schedule), None)}
    if sched.beta_schedule != "cosine":
        ours |= {"beta_start": sched.beta_start, "beta_end": sched.beta_end}
    for key, value in ours.items():
        given = config.get(key, value)
        if given != value and not (isinstance(value, float) and math.isclose(given, value, rel_tol=1e-6)):
            raise ValueError(f"{scheduler} config has {key}={given!r} but the schedule has {value!r}; build it "
                             f"with diffusers_schedule({scheduler!r}, **config)")


def _integer_grid(cfg: dict, steps: int, T: int) -> torch.Tensor:
    """t_0 > … > t_{N−1} of the spacing (Lin et al. 2023, Table 2), the leading one moved by steps_offset k."""
    ts = integer_spacing(steps, T, cfg["timestep_spacing"])
    return ts + cfg["steps_offset"] if cfg["timestep_spacing"] == "leading" else ts


def _strided_grid(scheduler: str, cfg: dict, steps: int, sched: Schedule) -> tuple:
    """DDIM, PNDM: the spacing's grid, each step Δ = T // N down; the last one to ᾱ = 1 or ᾱ_0 once below t = 0."""
    T = sched.num_train_timesteps
    ts = _integer_grid(cfg, steps, T)
    lands = ts - T // steps  # where diffusers' step goes
    if (lands[:-1] != ts[1:]).any():
        raise ValueError(f"{scheduler} with timestep_spacing={cfg['timestep_spacing']!r} at {steps} steps asks the "
                         f"network at {ts.long().tolist()} but steps Δ = {T // steps} down, off its own grid "
                         "(diffusers issue #12633); tinyldm does not reproduce that. Use 'leading', or 'trailing' "
                         f"with steps dividing {T}")
    return ts, lands[-1].item() if lands[-1] >= 0 else (sched.t_min if cfg["set_alpha_to_one"] else 0.0)


def _ddim(cfg: dict, steps: int, sched: Schedule) -> tuple:
    """DDIM on the strided grid; x̂0 clipped only as use_clipped_model_output clips it."""
    ts, end = _strided_grid("DDIMScheduler", cfg, steps, sched)
    if cfg["clip_sample"] and not cfg["use_clipped_model_output"]:
        raise ValueError("DDIMScheduler with clip_sample=True clips x̂0 but keeps the unclipped ε̂ for the direction "
                         "to x_t; tinyldm's DDIM derives ε̂ from the x̂0 it uses, as diffusers does with "
                         "use_clipped_model_output=True. Pass that, or clip_sample=False")
    return "ddim", ts, ts, end


def _pndm(cfg: dict, steps: int, sched: Schedule) -> tuple:
    """PNDM with skip_prk_steps (PLMS) on the strided grid; one step is DDIM's (φ with ε alone, no correction)."""
    if not cfg["skip_prk_steps"]:
        raise ValueError("PNDMScheduler with skip_prk_steps=False starts with Runge–Kutta steps (4 network calls each, "
                         "Liu et al. 2022's PNDM proper), which tinyldm does not reproduce; Stable Diffusion 1.x "
                         "sets skip_prk_steps=True (PLMS): pass that")
    if cfg["prediction_type"] != "epsilon":
        raise ValueError(f"PNDMScheduler with prediction_type={cfg['prediction_type']!r} is not reproduced: diffusers "
                         "combines the raw v of earlier steps and converts the sum to ε with the current step's x_t "
                         "and ᾱ_t (for 'sample' it raises); tinyldm's PLMS combines ε. Use 'epsilon'")
    ts, end = _strided_grid("PNDMScheduler", cfg, steps, sched)
    return ("plms" if steps > 1 else "ddim"), ts, ts, end


def _dpm_solver(cfg: dict, steps: int, sched: Schedule) -> tuple:
    """DPM-Solver++: N + 1 leading / linspace points less the last, or Karras σ̃ with rounded network times."""
    T, spacing = sched.num_train_timesteps, cfg["timestep_spacing"]
    if cfg["use_karras_sigmas"]:
        if sched.beta_schedule == "cosine":
            raise ValueError("DPMSolverMultistepScheduler with use_karras_sigmas on squaredcos_cap_v2 truncates the "
                             "network times to integers and skips its first σ̃ when they repeat; not reproduced")
        ends = (-sched.lam(torch.tensor([0.0, T - 1.0], dtype=torch.float64))).exp()  # σ̃_0, σ̃_{T−1}
        ts = sched.t_from_lam(-karras_sigmas(steps, ends[0].item(), ends[1].item())[:-1].log())
        model_times = ts.round()
    elif spacing == "trailing":
        ts = model_times = integer_spacing(steps, T, "trailing")
    else:
        ts = model_times = _integer_grid(cfg, steps + 1, T)[:-1]
    algorithm = (cfg["algorithm_type"], cfg["solver_type"], cfg["solver_order"])
    samplers = {("dpmsolver++", "midpoint", 2): "dpmpp_2m", ("dpmsolver++", "midpoint", 3): "dpmpp_3m",
                ("sde-dpmsolver++", "heun", 2): "dpmpp_2m_sde"}
    if algorithm not in samplers:
        raise ValueError(f"DPMSolverMultistepScheduler (algorithm_type, solver_type, solver_order) = {algorithm} is "
                         f"not reproduced; tinyldm has {tuple(samplers)} (docs/coming_from_diffusers.md)")
    if cfg["solver_order"] == 3:
        warnings.warn("tinyldm's DPM-Solver++(3M) keeps the factor 2 in D2 that the Taylor expansion needs (local "
                      "error O(h⁴), diffusers' O(h³)); its samples differ from diffusers' slightly "
                      "(docs/coming_from_diffusers.md)", stacklevel=3)
    end = sched.t_min if cfg["final_sigmas_type"] == "zero" else 0.0
    return samplers[algorithm], ts, model_times, end


def _sigma_tilde_grid(cfg: dict, steps: int, sched: Schedule) -> tuple:
    """Euler, Euler ancestral, Heun, LMS: σ̃ linear in t at the (fractional) grid, or Karras σ̃ between its ends."""
    T = sched.num_train_timesteps
    if cfg["timestep_spacing"] == "linspace":  # fractional, float32 as diffusers keeps them
        model_times = torch.linspace(0, T - 1, steps, dtype=torch.float64).float().double().flip(0)
    else:
        model_times = _integer_grid(cfg, steps, T)
    table = (-sched.lam(torch.arange(T, dtype=torch.float64))).exp()  # σ̃ at t = 0 … T−1
    i = model_times.floor().clamp(max=T - 2).long()
    sigma_tilde = table[i] + (model_times - i) * (table[i + 1] - table[i])  # linear in t (np.interp)
    if cfg.get("use_karras_sigmas"):
        sigma_min = sigma_tilde[-1].item() if cfg.get("sigma_min") is None else cfg["sigma_min"]
        sigma_max = sigma_tilde[0].item() if cfg.get("sigma_max") is None else cfg["sigma_max"]
        if not table[0] <= sigma_min <= sigma_max <= table[-1]:
            raise ValueError(f"sigma_min {sigma_min:g} and sigma_max {sigma_max:g} must lie in this schedule's σ̃ "
                             f"range [{table[0]:g}, {table[-1]:g}]")
        sigma_tilde = karras_sigmas(steps, sigma_min, sigma_max)[:-1]  # Eq. 5
    ts = sched.t_from_lam(-sigma_tilde.log())  # the time with that σ̃ (tinyldm interpolates λ)
    return ts, (ts if cfg.get("use_karras_sigmas") else model_times)


def diffusers_grid(scheduler: str, steps: int, sched: Schedule, **config) -> DiffusersGrid:
    """The steps diffusers' `scheduler` with `config` (its setting names, e.g. scheduler_config.json) takes at
    `steps` inference steps on `sched`, as a tinyldm sampler and grid. Settings it cannot reproduce raise."""
    cfg = _settings(scheduler, config)
    _check_schedule(scheduler, config, sched)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= sched.num_train_timesteps:
        raise ValueError(f"steps must be an integer in 1 … {sched.num_train_timesteps}, got {steps!r}")
    if sched.zero_terminal_snr and scheduler not in ("DDIMScheduler", "DDPMScheduler"):
        raise ValueError(f"{scheduler} with rescale_betas_zero_snr replaces ᾱ_{{T−1}} = 0 by 2⁻²⁴; not reproduced "
                         "(DDIMScheduler and DDPMScheduler are)")
    options, eta, variance = {}, 0.0, "fixed_small"
    clip = cfg["clip_sample_range"] if cfg.get("clip_sample") else None
    noise_scale = 1.0
    if scheduler == "DDIMScheduler":
        sampler, ts, model_times, end = _ddim(cfg, steps, sched)
        eta = cfg["eta"]
    elif scheduler == "PNDMScheduler":
        sampler, ts, model_times, end = _pndm(cfg, steps, sched)
    elif scheduler == "DDPMScheduler":
        ts = model_times = _integer_grid(cfg, steps, sched.num_train_timesteps)
        sampler, end = "ddpm", sched.t_min
        variances = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large"}
        if cfg["variance_type"] not in variances:
            raise ValueError(f"DDPMScheduler variance_type {cfg['variance_type']!r} is not reproduced; choose one of "
                             f"{tuple(variances)}")
        variance = variances[cfg["variance_type"]]
        if variance == "fixed_large" and ts[-1] > 0:
            raise ValueError(f"DDPMScheduler with variance_type='fixed_large' adds noise of variance β = 1 − ᾱ_t on "
                             f"its last step, from t = {ts[-1].item():g} to the data (it tests t > 0, not the "
                             "target); not reproduced. Use a grid that ends at t = 0 (leading without steps_offset, "
                             "linspace)")
    elif scheduler == "DPMSolverMultistepScheduler":
        if cfg["variance_type"] is not None:
            raise ValueError("DPMSolverMultistepScheduler with a learned variance_type is not reproduced")
        sampler, ts, model_times, end = _dpm_solver(cfg, steps, sched)
        options = {"lower_order_final": cfg["lower_order_final"]}
    else:
        if cfg.get("final_sigmas_type", "zero") != "zero":
            raise ValueError("EulerDiscreteScheduler with final_sigmas_type='sigma_min' returns x/α_0 at σ̃_0, "
                             "not reproduced; use 'zero'")
        sampler, (ts, model_times), end = SIGMA_SAMPLERS[scheduler], _sigma_tilde_grid(cfg, steps, sched), sched.t_min
        if cfg["timestep_spacing"] != "leading":
            noise_scale = sched.sigma(ts[0]).item()  # x = α x̃ with x̃ = σ̃_max z
        if scheduler == "LMSDiscreteScheduler":
            options = {"order": cfg["order"], "first_order_final": False}
    # The last step: to the data, or to a listed end time; a step from t = 0 to t = 0 changes nothing and is left out.
    if end != sched.t_min and end >= ts[-1] == 0 and len(ts) == 1:
        raise ValueError(f"{scheduler} at 1 step asks the network at t = 0 and steps to ᾱ_0 (t = 0 again), which "
                         "changes nothing: diffusers returns the noise. Use more steps, steps_offset=1 or "
                         "set_alpha_to_one=True")
    if end != sched.t_min and end < ts[-1]:
        ts, model_times = torch.cat([ts, ts.new_tensor([end])]), torch.cat([model_times, ts.new_tensor([end])])
    return DiffusersGrid(scheduler, sched, sampler, ts, model_times, end == sched.t_min, noise_scale,
                         PREDICTIONS[cfg["prediction_type"]], eta, variance, clip, options)


def diffusers_model(model, grid: DiffusersGrid):
    """model(x, t, *cond) as diffusers calls it on `grid`: told diffusers' time for each state, and with x̂0 clipped
    to [−r, r] when the scheduler clips (clip_sample)."""

    def wrapped(x: torch.Tensor, t: torch.Tensor, *cond) -> torch.Tensor:
        i = int((grid.timesteps - t[0].double()).abs().argmin())  # which state: VP model time = schedule time
        out = model(x, torch.full_like(t, grid.model_times[i].item()), *cond)
        if grid.clip_x0 is None:
            return out
        alpha, sigma = grid.sched.alpha_sigma(grid.timesteps[i])
        x0_hat = to_x0(out, x, alpha, sigma, grid.prediction).clamp(-grid.clip_x0, grid.clip_x0)
        return from_x0(x0_hat, x, alpha, sigma, grid.prediction)

    return wrapped


def sample_like_diffusers(model, noise: torch.Tensor, grid: DiffusersGrid, cfg_scale: float = 1.0,
                          cfg_rescale: float = 0.0, cond=None, null_cond=None, generator: torch.Generator | None = None,
                          callback=None, progress: bool = False) -> torch.Tensor:
    """`sample` on `grid` from unit noise z (diffusers' latents before × init_noise_sigma): with the same network,
    noise and generator (in the state diffusers' `step` finds it), diffusers' result. Guidance w = cfg_scale as in
    `sample` (1 = none)."""
    # The grid's times override steps and spacing; steps counts the times where the network is asked.
    steps = len(grid.timesteps) - (0 if grid.denoise_to_zero else 1)
    config = SamplingConfig(grid.sampler, steps, eta=grid.eta, cfg_scale=cfg_scale, cfg_rescale=cfg_rescale)
    if grid.clip_x0 is not None and cfg_scale != 1.0:
        # diffusers clips the x̂0 of the guided output, so guide first and clip that.
        model, cond, null_cond = guided_model(model, cond, null_cond, cfg_scale, cfg_rescale), None, None
        config = replace(config, cfg_scale=1.0)
    return sample(diffusers_model(model, grid), grid.noise_scale * noise, grid.sched, config,
                  prediction=grid.prediction, timesteps=grid.timesteps, denoise_to_zero=grid.denoise_to_zero,
                  ddpm_variance=grid.ddpm_variance, sampler_options=grid.sampler_options, cond=cond,
                  null_cond=null_cond, generator=generator, callback=callback, progress=progress)
