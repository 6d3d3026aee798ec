"""Record short trajectories of diffusers' schedulers on closed-form Gaussian data for tests/test_diffusers_grids.py.

tinyldm never imports diffusers; this script runs in a separate virtualenv that has it (diffusers 0.42.1 made the
committed file):

    /path/to/venv-with-diffusers/bin/python scripts/make_scheduler_fixtures.py

The "network" is the exact denoiser of data x0 ~ N(μ, s²) per element (E[x0 | x_t] in closed form,
tinyldm/diffusion/analytic.py), returned as ε, v or x0. It reads ᾱ at a fractional time by interpolating
λ = ½ log(ᾱ/(1 − ᾱ)) linearly between training steps, which is tinyldm's `Schedule` convention, so both sides
run the same network. For every case the file keeps the time and input of each network call, the final sample and
the scheduler's own grid; writes tests/fixtures/schedulers/trajectories.pt (plain tensors, lists and strings).
"""

import math
from pathlib import Path

import diffusers
import torch

MU, S = 0.5, 0.7  # data x0 ~ N(μ, s²); with s = 0.7 some x̂0 leave [−1, 1], so clip_sample acts
SHAPE = (2, 4)  # B = 2, 4 elements each
STEPS = 8
NOISE_SEED, STEP_SEED = 0, 1  # unit noise z; the generator passed to `step`
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "schedulers" / "trajectories.pt"

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}  # Stable Diffusion's betas
# Cosine with v: at t = 999 its α is 5e-5, and x̂0 = (x − σ ε̂)/α would cost both sides 1e-3 in float32.
COSINE = {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}
NO_CLIP = {"clip_sample": False}
PLMS = {"skip_prk_steps": True}  # PNDM without its Runge–Kutta start, as Stable Diffusion 1.x ships it

# (name, scheduler class, config, steps, arguments of `step` beyond the generator). The names say the setting.
CASES = [
    ("ddim_leading", "DDIMScheduler", SD | NO_CLIP, STEPS, {}),
    ("ddim_leading_sd15", "DDIMScheduler", SD | NO_CLIP | {"steps_offset": 1, "set_alpha_to_one": False}, STEPS, {}),
    ("ddim_leading_alpha0_noop", "DDIMScheduler", SD | NO_CLIP | {"set_alpha_to_one": False}, STEPS, {}),
    ("ddim_trailing", "DDIMScheduler", SD | NO_CLIP | {"timestep_spacing": "trailing"}, STEPS, {}),
    ("ddim_trailing_alpha0", "DDIMScheduler", SD | NO_CLIP | {"timestep_spacing": "trailing",
                                                              "set_alpha_to_one": False}, STEPS, {}),
    ("ddim_linspace", "DDIMScheduler", SD | NO_CLIP | {"timestep_spacing": "linspace"}, STEPS, {}),
    ("ddim_trailing_7_steps", "DDIMScheduler", SD | NO_CLIP | {"timestep_spacing": "trailing"}, 7, {}),
    ("ddim_clip", "DDIMScheduler", SD, STEPS, {}),
    ("ddim_clip_clipped_eps", "DDIMScheduler", SD, STEPS, {"use_clipped_model_output": True}),
    ("ddim_eta1_trailing", "DDIMScheduler", SD | NO_CLIP | {"timestep_spacing": "trailing"}, STEPS, {"eta": 1.0}),
    ("ddim_zero_snr_v_trailing", "DDIMScheduler", SD | NO_CLIP | {"timestep_spacing": "trailing",
                                                                  "rescale_betas_zero_snr": True,
                                                                  "prediction_type": "v_prediction"}, STEPS, {}),
    ("ddpm_defaults", "DDPMScheduler", {}, STEPS, {}),
    ("ddpm_leading_offset1", "DDPMScheduler", SD | NO_CLIP | {"steps_offset": 1}, STEPS, {}),
    ("ddpm_trailing", "DDPMScheduler", SD | NO_CLIP | {"timestep_spacing": "trailing"}, STEPS, {}),
    ("ddpm_linspace_clip", "DDPMScheduler", SD | {"timestep_spacing": "linspace"}, STEPS, {}),
    ("ddpm_fixed_large_v", "DDPMScheduler", SD | NO_CLIP | {"variance_type": "fixed_large",
                                                            "prediction_type": "v_prediction"}, STEPS, {}),
    ("ddpm_fixed_large_trailing", "DDPMScheduler", SD | NO_CLIP | {"timestep_spacing": "trailing",
                                                                   "variance_type": "fixed_large"}, STEPS, {}),
    ("dpmpp_2m_linspace", "DPMSolverMultistepScheduler", SD, STEPS, {}),
    ("dpmpp_2m_leading", "DPMSolverMultistepScheduler", SD | {"timestep_spacing": "leading"}, STEPS, {}),
    ("dpmpp_2m_leading_offset1", "DPMSolverMultistepScheduler", SD | {"timestep_spacing": "leading",
                                                                      "steps_offset": 1}, STEPS, {}),
    ("dpmpp_2m_trailing", "DPMSolverMultistepScheduler", SD | {"timestep_spacing": "trailing"}, STEPS, {}),
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", SD | {"use_karras_sigmas": True}, STEPS, {}),
    ("dpmpp_2m_v_trailing", "DPMSolverMultistepScheduler", SD | {"timestep_spacing": "trailing",
                                                                 "prediction_type": "v_prediction"}, STEPS, {}),
    ("dpmpp_2m_final_sigma_min", "DPMSolverMultistepScheduler", SD | {"final_sigmas_type": "sigma_min"}, STEPS, {}),
    ("dpmpp_2m_no_lower_order_final", "DPMSolverMultistepScheduler", SD | {"lower_order_final": False}, STEPS, {}),
    ("dpmpp_2m_cosine_trailing", "DPMSolverMultistepScheduler", COSINE | {"timestep_spacing": "trailing"}, STEPS,
     {}),
    ("dpmpp_2m_sde_heun", "DPMSolverMultistepScheduler", SD | {"timestep_spacing": "trailing",
                                                               "algorithm_type": "sde-dpmsolver++",
                                                               "solver_type": "heun"}, STEPS, {}),
    ("dpmpp_3m_linspace", "DPMSolverMultistepScheduler", SD | {"solver_order": 3}, STEPS, {}),
    ("dpmpp_3m_trailing_20_steps", "DPMSolverMultistepScheduler", SD | {"solver_order": 3,
                                                                        "timestep_spacing": "trailing"}, 20, {}),
    ("dpmpp_2m_heun", "DPMSolverMultistepScheduler", SD | {"solver_type": "heun"}, STEPS, {}),
    ("dpmpp_2m_sde_midpoint", "DPMSolverMultistepScheduler", SD | {"timestep_spacing": "trailing",
                                                                   "algorithm_type": "sde-dpmsolver++"}, STEPS, {}),
    ("euler_linspace", "EulerDiscreteScheduler", SD, STEPS, {}),
    ("euler_leading_offset1", "EulerDiscreteScheduler", SD | {"timestep_spacing": "leading", "steps_offset": 1},
     STEPS, {}),
    ("euler_trailing", "EulerDiscreteScheduler", SD | {"timestep_spacing": "trailing"}, STEPS, {}),
    ("euler_karras", "EulerDiscreteScheduler", SD | {"use_karras_sigmas": True}, STEPS, {}),
    ("euler_karras_trailing", "EulerDiscreteScheduler", SD | {"use_karras_sigmas": True,
                                                              "timestep_spacing": "trailing"}, STEPS, {}),
    ("euler_karras_sigma_range", "EulerDiscreteScheduler", SD | {"use_karras_sigmas": True, "sigma_min": 0.1,
                                                                 "sigma_max": 10.0}, STEPS, {}),
    ("euler_v_linspace", "EulerDiscreteScheduler", SD | {"prediction_type": "v_prediction"}, STEPS, {}),
    ("euler_cosine_linspace", "EulerDiscreteScheduler", COSINE, STEPS, {}),
    ("euler_ancestral_linspace", "EulerAncestralDiscreteScheduler", SD, STEPS, {}),
    ("euler_ancestral_leading_offset1", "EulerAncestralDiscreteScheduler", SD | {"timestep_spacing": "leading",
                                                                                 "steps_offset": 1}, STEPS, {}),
    ("euler_ancestral_trailing", "EulerAncestralDiscreteScheduler", SD | {"timestep_spacing": "trailing"}, STEPS,
     {}),
    ("heun_linspace", "HeunDiscreteScheduler", SD, STEPS, {}),
    ("heun_leading", "HeunDiscreteScheduler", SD | {"timestep_spacing": "leading"}, STEPS, {}),
    ("heun_trailing", "HeunDiscreteScheduler", SD | {"timestep_spacing": "trailing"}, STEPS, {}),
    ("heun_karras", "HeunDiscreteScheduler", SD | {"use_karras_sigmas": True}, STEPS, {}),
    ("heun_clip", "HeunDiscreteScheduler", SD | {"clip_sample": True}, STEPS, {}),
    ("lms_linspace", "LMSDiscreteScheduler", SD, STEPS, {}),
    ("lms_leading_offset1", "LMSDiscreteScheduler", SD | {"timestep_spacing": "leading", "steps_offset": 1}, STEPS,
     {}),
    ("lms_trailing", "LMSDiscreteScheduler", SD | {"timestep_spacing": "trailing"}, STEPS, {}),
    ("lms_karras", "LMSDiscreteScheduler", SD | {"use_karras_sigmas": True}, STEPS, {}),
    ("pndm_sd15", "PNDMScheduler", SD | PLMS | {"steps_offset": 1, "set_alpha_to_one": False}, STEPS, {}),
    ("pndm_defaults_plms_alpha0_noop", "PNDMScheduler", PLMS, STEPS, {}),
    ("pndm_trailing_alpha1", "PNDMScheduler", SD | PLMS | {"timestep_spacing": "trailing", "set_alpha_to_one": True},
     STEPS, {}),
    ("pndm_sd15_20_steps", "PNDMScheduler", SD | PLMS | {"steps_offset": 1}, 20, {}),
    ("pndm_prk_defaults", "PNDMScheduler", {}, STEPS, {}),
    ("pndm_v_prediction", "PNDMScheduler", SD | PLMS | {"prediction_type": "v_prediction"}, STEPS, {}),
]
TAKES_GENERATOR = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
                   "EulerAncestralDiscreteScheduler")


def gaussian_network(alphas_cumprod: torch.Tensor, prediction_type: str):
    """net(x, t): the exact denoiser of N(μ, s²) data as the scheduler's prediction type, computed in float64."""
    abar = alphas_cumprod.double()
    lam = 0.5 * (abar.log() - (1 - abar).log())  # λ_t at t = 0 … T−1 (−inf where ᾱ = 0)
    T = len(abar)

    def net(x: torch.Tensor, t) -> torch.Tensor:
        t = float(t)
        i = min(int(math.floor(t)), T - 2)
        lam_t = lam[i] + (t - i) * (lam[i + 1] - lam[i]) if t != i else lam[i]  # linear in λ between steps
        alpha, sigma = torch.sigmoid(2 * lam_t).sqrt(), torch.sigmoid(-2 * lam_t).sqrt()
        x = x.double()
        x0 = MU + alpha * S**2 * (x - alpha * MU) / (alpha**2 * S**2 + sigma**2)  # E[x0 | x_t]
        eps = (x - alpha * x0) / sigma
        out = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[prediction_type]
        return out.float()

    return net


def record(scheduler_name: str, config: dict, steps: int, step_args: dict, noise: torch.Tensor) -> dict:
    """Run diffusers' loop (scale_model_input → network → step) and keep what the network saw."""
    scheduler = getattr(diffusers, scheduler_name)(**config)
    scheduler.set_timesteps(steps)
    net = gaussian_network(scheduler.alphas_cumprod, scheduler.config.prediction_type)
    generator = torch.Generator().manual_seed(STEP_SEED)
    if scheduler_name in TAKES_GENERATOR:
        step_args = step_args | {"generator": generator}
    x = noise * scheduler.init_noise_sigma
    call_t, call_x = [], []
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        call_t.append(float(t))
        call_x.append(x_in.clone())
        x = scheduler.step(net(x_in, t), t, x, **step_args).prev_sample
    return {"call_t": torch.tensor(call_t, dtype=torch.float64), "call_x": torch.stack(call_x), "final": x.clone(),
            "timesteps": scheduler.timesteps.double().clone(),
            "sigmas": scheduler.sigmas.double().clone() if hasattr(scheduler, "sigmas") else torch.zeros(0),
            "init_noise_sigma": float(scheduler.init_noise_sigma)}


def main():
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(NOISE_SEED))
    cases, tables = [], {}
    for name, scheduler_name, config, steps, step_args in CASES:
        result = record(scheduler_name, config, steps, step_args, noise)
        table_key = (f"{config.get('beta_schedule', 'linear')}"
                     f"{'_zero_snr' if config.get('rescale_betas_zero_snr') else ''}")
        tables[table_key] = diffusers.DDIMScheduler(**{k: v for k, v in config.items() if k.startswith(("beta",
                                                                                                          "rescale"))}
                                                    ).alphas_cumprod.clone()
        cases.append({"name": name, "scheduler": scheduler_name, "config": config, "steps": steps,
                      "step_args": step_args, "alphas_cumprod": table_key, **result})
        print(f"{name:34s} {len(result['call_t']):3d} calls, final {result['final'].flatten()[:3].tolist()}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"diffusers_version": diffusers.__version__, "torch_version": str(torch.__version__), "mu": MU, "s": S,
                "noise": noise, "step_seed": STEP_SEED, "alphas_cumprod": tables, "cases": cases}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB, {len(cases)} cases)")


if __name__ == "__main__":
    main()
