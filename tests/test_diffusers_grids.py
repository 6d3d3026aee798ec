"""diffusers' schedulers reproduced by tinyldm's samplers, without diffusers: recorded trajectories, grid math, and
the measured DPM-Solver++(3M) difference.

tests/fixtures/schedulers/trajectories.pt was written by scripts/make_scheduler_fixtures.py with diffusers 0.42.1 on
data x0 ~ N(μ, s²), whose exact denoiser is the "network" on both sides (tinyldm/diffusion/analytic.py). Each case
keeps the time and input of every network call and the final sample; our schedule is built on diffusers' float32
ᾱ so that only the scheduler conventions are compared. `python tests/test_diffusers_grids.py` prints the tables of
docs/coming_from_diffusers.md.
"""

import dataclasses
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyldm.diffusion import SamplingConfig, Schedule, dpmpp_3m, karras_sigmas, sample
from tinyldm.diffusion.analytic import gaussian_flow_map, gaussian_network, gaussian_x0
from tinyldm.interop.diffusers_grids import (
    COMMON,
    DEFAULTS,
    IGNORED,
    ONLY_DEFAULT,
    SPACINGS,
    diffusers_grid,
    diffusers_schedule,
    sample_like_diffusers,
)

FIXTURE_PATH = Path(__file__).parent / "fixtures" / "schedulers" / "trajectories.pt"
FIXTURE = torch.load(FIXTURE_PATH, weights_only=True)
CASES = {case["name"]: case for case in FIXTURE["cases"]}
# Recorded on purpose, refused by `diffusers_grid`, with the words its error uses.
NOT_REPRODUCED = {
    "ddim_linspace": "off its own grid",
    "ddim_trailing_7_steps": "off its own grid",
    "ddim_clip": "use_clipped_model_output",
    "ddpm_fixed_large_trailing": "last step",
    "dpmpp_2m_heun": "not reproduced",
    "dpmpp_2m_sde_midpoint": "not reproduced",
    "pndm_prk_defaults": "skip_prk_steps=False",
    "pndm_v_prediction": "combines the raw v",
}
DPMPP_3M = ("dpmpp_3m_linspace", "dpmpp_3m_trailing_20_steps")  # tinyldm's 3M differs on purpose (D2's factor 2)
# The cosine schedule without zero terminal SNR has ᾱ(999) = 2.4e-9: the first Euler step takes σ̃ from 2.0e4 to 4.4.
# diffusers writes it x̃ + (σ̃_1 − σ̃_0) d, which cancels in float32 (x̃ ≈ 2e4 ± 1e-3, the result ≈ 4.4); tinyldm
# writes it x̂0 + (σ̃_1/σ̃_0)(x̃ − x̂0) (samplers.euler), which does not. Both are compared with the float64 run.
CANCELS_IN_DIFFUSERS = ("euler_cosine_linspace",)
REPRODUCED = [name for name in CASES if name not in (*NOT_REPRODUCED, *DPMPP_3M, *CANCELS_IN_DIFFUSERS)]
TOL = {"rtol": 1e-5, "atol": 1e-6}  # float32 rounding over ≤ 20 steps on both sides


def settings(case) -> dict:
    return case["config"] | case["step_args"]


def schedule_of(case) -> Schedule:
    """The case's schedule on diffusers' own float32 ᾱ (so that only the scheduler conventions differ)."""
    table = FIXTURE["alphas_cumprod"][case["alphas_cumprod"]].double()
    return dataclasses.replace(diffusers_schedule(case["scheduler"], **case["config"]), alphas_cumprod=table)


def run_ours(case, grid=None, steps=None, dtype=torch.float32):
    """Our run of a case from the recorded noise: (final sample, [(time told to the network, its input x)])."""
    sched = schedule_of(case)
    grid = grid or diffusers_grid(case["scheduler"], steps or case["steps"], sched, **settings(case))
    net, calls = gaussian_network(sched, grid.prediction, FIXTURE["mu"], FIXTURE["s"]), []

    def spy(x, t):
        calls.append((t[0].item(), x.clone()))
        return net(x, t)

    out = sample_like_diffusers(spy, FIXTURE["noise"].to(dtype), grid, generator=torch.Generator().manual_seed(
        FIXTURE["step_seed"]))
    return out, calls


def test_fixture_is_small_and_recorded_with_diffusers_0_42():
    assert FIXTURE_PATH.stat().st_size < 300_000
    assert FIXTURE["diffusers_version"] == "0.42.1" and len(CASES) == len(FIXTURE["cases"])
    # diffusers' float32 ᾱ are tinyldm's float64 ones to float32 precision.
    for beta_schedule, ours in [("scaled_linear", Schedule.vp("scaled_linear")), ("linear", Schedule.vp("linear")),
                                ("squaredcos_cap_v2", Schedule.vp("cosine"))]:
        torch.testing.assert_close(FIXTURE["alphas_cumprod"][beta_schedule].double(), ours.alphas_cumprod,
                                   rtol=2e-5, atol=2e-6)


def assert_same_run(ours, theirs):
    """Same network times (float32 in diffusers), same network inputs at every call, same result."""
    out, calls = ours
    theirs_t, theirs_x = theirs["call_t"], theirs["call_x"]
    if len(calls) == len(theirs_t) - 1:  # DDIM's step from t = 0 to ᾱ_0 (t = 0 again) leaves x as it is
        torch.testing.assert_close(theirs["final"], theirs_x[-1], rtol=0, atol=1e-6)
    else:
        assert len(calls) == len(theirs_t)
    n = len(calls)
    torch.testing.assert_close(torch.tensor([t for t, _ in calls], dtype=torch.float64), theirs_t[:n],
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.stack([x for _, x in calls]), theirs_x[:n], **TOL)
    torch.testing.assert_close(out, theirs["final"], **TOL)


@pytest.mark.parametrize("name", REPRODUCED)
def test_reproduces_the_diffusers_trajectory(name):
    case, ours = CASES[name], run_ours(CASES[name])
    assert_same_run(ours, case)
    assert (len(ours[1]) < len(case["call_t"])) == name.endswith("_alpha0_noop")  # the no-op last step


def errors_from_float64(case) -> tuple[float, float]:
    """(tinyldm's, diffusers') largest difference from tinyldm's float64 run, over network inputs and result."""
    out, calls = run_ours(case, dtype=torch.float64)
    exact = {"call_x": torch.stack([x for _, x in calls]), "final": out}
    theirs = (case["final"], list(zip(case["call_t"], case["call_x"])))
    return max_difference(run_ours(case), exact), max_difference(theirs, exact)


@pytest.mark.parametrize("name", CANCELS_IN_DIFFUSERS)
def test_where_diffusers_euler_step_cancels_tinyldm_keeps_float64_accuracy(name):
    case = CASES[name]
    assert run_ours(case)[1][0][0] == case["call_t"][0]  # the same grid: diffusers' first network time
    ours, theirs = errors_from_float64(case)
    assert ours < TOL["atol"]  # float32 rounding only
    assert 1e-4 < theirs < 1e-3  # diffusers: the same trajectory, to its cancellation error (3e-4 when recorded)


@pytest.mark.parametrize("name", list(NOT_REPRODUCED))
def test_what_is_not_reproduced_is_refused_with_the_reason(name):
    case = CASES[name]
    with pytest.raises(ValueError, match=NOT_REPRODUCED[name]):
        diffusers_grid(case["scheduler"], case["steps"], schedule_of(case), **settings(case))


# DPM-Solver++(3M): tinyldm keeps the factor 2 of the Taylor expansion in D2; diffusers, k-diffusion and Lu et al.'s
# code have (D1_0 − D1_1)/(r0 + r1), half of h² x̂0''.
def dpmpp_3m_reference(denoiser, x, sched, ts, d2_factor, lower_order_final=True, callback=None):
    """DPM-Solver++(3M) written out (Lu et al. 2022b, Eq. (*) of dpm_solver.py), h² x̂0'' ≈ d2_factor·(D1_0 − D1_1)/
    (r0 + r1): 2 is the Taylor coefficient, 1 diffusers'. Start-up and final steps as diffusers: order 1, then the
    2M midpoint step; orders 2, 1 on the last two when N < 15; order 1 to σ = 0."""
    alpha, sigma = sched.alpha_sigma(ts)
    lam, n, m = alpha.log() - sigma.log(), len(ts) - 1, []
    for i in range(n):
        m = [denoiser(x, ts[i])] + m[:2]
        k = min(3, i + 1, n - i) if lower_order_final and n < 15 else min(3, i + 1)
        k = 1 if sigma[i + 1] == 0 else k
        h = lam[i + 1] - lam[i]
        phi1 = torch.expm1(-h)
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * phi1 * m[0]
        if k == 2:
            x = x - alpha[i + 1] * phi1 * (m[0] - m[1]) / (2 * (lam[i] - lam[i - 1]) / h)
        if k == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            D1_0, D1_1 = (m[0] - m[1]) / r0, (m[1] - m[2]) / r1
            D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
            D2 = d2_factor * (D1_0 - D1_1) / (r0 + r1)
            phi2 = phi1 / h + 1
            x = x + alpha[i + 1] * phi2 * D1 - alpha[i + 1] * (phi2 / h - 0.5) * D2
        if callback is not None:
            callback(i, ts[i], x, m[0])
    return x


def dpmpp_3m_runs(case):
    """(tinyldm's 3M, the reference with diffusers' D2) on the case's grid from its noise; float32 like diffusers."""
    sched = schedule_of(case)
    with pytest.warns(UserWarning, match="factor 2 in D2"):
        grid = diffusers_grid(case["scheduler"], case["steps"], sched, **settings(case))
    ours, _ = run_ours(case, grid)
    denoiser = lambda x, t: gaussian_x0(x, *sched.alpha_sigma(t), FIXTURE["mu"], FIXTURE["s"])  # noqa: E731
    assert grid.denoise_to_zero
    ts = torch.cat([grid.timesteps, grid.timesteps.new_tensor([sched.t_min])])
    return ours, dpmpp_3m_reference(denoiser, FIXTURE["noise"], sched, ts, d2_factor=1)


@pytest.mark.parametrize("name", DPMPP_3M)
def test_diffusers_3m_is_the_third_order_formula_with_half_of_d2(name):
    case = CASES[name]
    ours, halved = dpmpp_3m_runs(case)
    torch.testing.assert_close(halved, case["final"], **TOL)  # diffusers = the formula with D2/2
    assert (ours - case["final"]).abs().max() > 100 * TOL["atol"]  # and differs measurably from ours


def test_reference_3m_with_the_taylor_factor_is_tinyldm_dpmpp_3m():
    sched, x = Schedule.vp("scaled_linear"), torch.randn(16, generator=torch.Generator().manual_seed(0),
                                                         dtype=torch.float64)
    denoiser = lambda x, t: gaussian_x0(x, *sched.alpha_sigma(t), 0.5, 0.7)  # noqa: E731
    for ts in [torch.tensor([999.0, 800, 650, 420, 300, 160, 90, -1], dtype=torch.float64),
               torch.linspace(999, 50, 20, dtype=torch.float64)]:
        torch.testing.assert_close(dpmpp_3m_reference(denoiser, x, sched, ts, d2_factor=2),
                                   dpmpp_3m(denoiser, x, sched, ts), rtol=0, atol=1e-12)


LOCAL_HS = np.array([0.1, 0.05, 0.025, 0.0125])  # steps in λ, from λ = −1.5 (σ̃ ≈ 4.5)
X_START = torch.tensor([-1.3, 0.4, 2.2], dtype=torch.float64)


def step_errors_3m(d2_factor, lams):
    """Each step's own error on the λ grid `lams`, with exact history: [(x_{i+1} − (σ_{i+1}/σ_i) x_i) − the same on
    the exact path] × σ_N/σ_{i+1}, what it adds to the final x.

    The denoiser returns the exact x̂0 along the exact ODE solution (Gaussian data, μ = 0.5, s = 0.7), whatever x it
    is given; then every step adds its own error to x linearly, and no error feeds back.
    """
    sched, mu, s = Schedule.vp("scaled_linear"), 0.5, 0.7
    ts = sched.t_from_lam(lams)
    exact = [gaussian_flow_map(sched, X_START, ts[0].item(), t.item(), mu, s) for t in ts]
    trajectory_x0 = {float(t): gaussian_x0(xe, *sched.alpha_sigma(t), mu, s) for t, xe in zip(ts, exact)}
    states = [X_START]
    dpmpp_3m_reference(lambda x, t: trajectory_x0[float(t)], X_START, sched, ts, d2_factor, lower_order_final=False,
                       callback=lambda i, t, x, x0: states.append(x))
    sigma = sched.sigma(ts)
    ratio = sigma[1:] / sigma[:-1]
    return [((states[i + 1] - ratio[i] * states[i]) - (exact[i + 1] - ratio[i] * exact[i]))
            * sigma[-1] / sigma[i + 1] for i in range(len(ts) - 1)]


def local_errors_3m(d2_factor, lam0=-1.5):
    """The local truncation error of one third-order step (the third on a uniform λ grid) for each h in LOCAL_HS."""
    errors = [step_errors_3m(d2_factor, lam0 + h * torch.arange(4, dtype=torch.float64))[2] for h in LOCAL_HS]
    return np.array([e.abs().max().item() for e in errors])


def third_order_steps_error(d2_factor, steps, lam_from=-2.5, lam_to=-0.5):
    """The ODE error that the third-order steps of N uniform steps in λ add to the final x (start-up left out)."""
    lams = torch.linspace(lam_from, lam_to, steps + 1, dtype=torch.float64)
    return sum(step_errors_3m(d2_factor, lams)[2:]).abs().max().item()


def test_3m_local_error_is_order_h4_with_the_factor_2_and_h3_without():
    # x̂0'' of the Gaussian path vanishes near λ = 0 (σ̃² = 2s²), so the measurement stays below λ = −1.
    ours, theirs = local_errors_3m(2), local_errors_3m(1)
    order_ours = np.polyfit(np.log(LOCAL_HS), np.log(ours), 1)[0]
    order_theirs = np.polyfit(np.log(LOCAL_HS), np.log(theirs), 1)[0]
    assert 3.8 < order_ours < 4.3 and 2.9 < order_theirs < 3.4  # local orders 4 and 3
    assert ours[-1] < theirs[-1] / 10
    # Summed over a fixed interval, N of them: global orders 3 and 2 once the start-up steps are left out.
    Ns = [16, 32, 64, 128]
    for factor, order in [(2, 3), (1, 2)]:
        errors = [third_order_steps_error(factor, N) for N in Ns]
        assert abs(-np.polyfit(np.log(Ns), np.log(errors), 1)[0] - order) < 0.3


# The grid builder's math.
def test_ddim_steps_delta_down_so_only_grids_with_that_stride_are_reproduced():
    sched = Schedule.vp("scaled_linear")
    for steps in range(1, 41):
        grid = diffusers_grid("DDIMScheduler", steps, sched, timestep_spacing="leading", clip_sample=False)
        assert grid.sampler == "ddim" and grid.denoise_to_zero and (grid.timesteps.diff() == -(1000 // steps)).all()
        if 1000 % steps == 0:
            grid = diffusers_grid("DDIMScheduler", steps, sched, timestep_spacing="trailing", clip_sample=False)
            assert grid.timesteps[0] == 999 and (grid.timesteps.diff() == -(1000 // steps)).all()
        else:  # trailing's rounded stride is not Δ = T // N everywhere
            with pytest.raises(ValueError, match="#12633"):
                diffusers_grid("DDIMScheduler", steps, sched, timestep_spacing="trailing", clip_sample=False)
    # set_alpha_to_one: the last step lands on ᾱ = 1 (the data) or on ᾱ_0 (t = 0); steps_offset moves leading.
    sd15 = diffusers_grid("DDIMScheduler", 10, sched, steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    assert sd15.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0]
    assert not sd15.denoise_to_zero and sd15.noise_scale == 1.0


def test_pndm_is_plms_on_ddims_grid_and_refuses_what_it_does_not_reproduce():
    sched = Schedule.vp("scaled_linear")
    sd15 = {"steps_offset": 1, "set_alpha_to_one": False, "skip_prk_steps": True}
    grid = diffusers_grid("PNDMScheduler", 10, sched, **sd15)
    assert grid.sampler == "plms" and grid.sampler_options == {} and not grid.denoise_to_zero
    assert grid.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0]
    assert diffusers_grid("PNDMScheduler", 1, sched, **sd15).sampler == "ddim"  # φ with ε alone, as diffusers
    with pytest.raises(ValueError, match="skip_prk_steps=False starts with Runge–Kutta steps"):
        diffusers_grid("PNDMScheduler", 10, sched)
    with pytest.raises(ValueError, match="combines the raw v"):
        diffusers_grid("PNDMScheduler", 10, sched, **sd15, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="changes nothing"):  # one step from t = 0 to ᾱ_0: diffusers returns z
        diffusers_grid("PNDMScheduler", 1, sched, skip_prk_steps=True)


def test_dpm_solver_lays_n_plus_one_points_and_drops_the_last():
    sched, T = Schedule.vp("scaled_linear"), 1000
    for steps in (5, 8, 13, 25):
        k = torch.arange(steps, 0, -1, dtype=torch.float64)
        linspace = diffusers_grid("DPMSolverMultistepScheduler", steps, sched)
        assert linspace.timesteps.tolist() == (k * (T - 1) / steps).round().tolist()
        leading = diffusers_grid("DPMSolverMultistepScheduler", steps, sched, timestep_spacing="leading",
                                 steps_offset=1)
        assert leading.timesteps.tolist() == (k * (T // (steps + 1)) + 1).tolist()
        trailing = diffusers_grid("DPMSolverMultistepScheduler", steps, sched, timestep_spacing="trailing")
        assert trailing.timesteps.tolist() == sched.timesteps(steps, "trailing").tolist()
        assert linspace.denoise_to_zero and linspace.sampler == "dpmpp_2m"


def test_karras_grids_and_their_ranges():
    sched = Schedule.vp("scaled_linear")
    sigma_tilde = lambda t: (sched.sigma(t) / sched.alpha(t))  # noqa: E731
    # DPM-Solver: between σ̃_{T−1} and σ̃_0, which is tinyldm's own karras spacing; the network gets rounded times.
    dpm = diffusers_grid("DPMSolverMultistepScheduler", 12, sched, use_karras_sigmas=True)
    torch.testing.assert_close(dpm.timesteps, sched.timesteps(12, "karras"), rtol=0, atol=1e-9)
    assert torch.equal(dpm.model_times, dpm.timesteps.round())
    # Euler-type: between the spacing's first and last σ̃ (Karras et al. 2022, Eq. 5: σ̃^{1/ρ} linear in i).
    for spacing, t_first, t_last in [("linspace", 999, 0), ("trailing", 999, 1000 // 12 - 1)]:
        grid = diffusers_grid("EulerDiscreteScheduler", 12, sched, use_karras_sigmas=True, timestep_spacing=spacing)
        s = sigma_tilde(grid.timesteps)
        expected = karras_sigmas(12, sigma_tilde(float(t_last)).item(), sigma_tilde(float(t_first)).item())[:-1]
        torch.testing.assert_close(s, expected, rtol=1e-9, atol=0)
        assert torch.equal(grid.model_times, grid.timesteps) and grid.denoise_to_zero
    ranged = diffusers_grid("EulerDiscreteScheduler", 12, sched, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0)
    torch.testing.assert_close(sigma_tilde(ranged.timesteps[[0, -1]]), torch.tensor([10.0, 0.1], dtype=torch.float64))


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                       "HeunDiscreteScheduler", "LMSDiscreteScheduler"])
def test_sigma_schedulers_interpolate_sigma_tilde_linearly_and_start_from_sigma_max(scheduler):
    sched, steps = Schedule.vp("scaled_linear"), 8
    sigma_tilde = lambda t: sched.sigma(t) / sched.alpha(t)  # noqa: E731
    grid = diffusers_grid(scheduler, steps, sched, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012)
    tau = grid.model_times  # 999 · k/7: fractional, the time the network is told
    k = torch.arange(steps - 1, -1, -1, dtype=torch.float64)
    assert (tau != tau.round()).any()
    torch.testing.assert_close(tau, 999 * k / (steps - 1), rtol=0, atol=1e-4)  # float32, as diffusers keeps them
    lo = tau.floor().clamp(max=998)
    w = tau - lo
    torch.testing.assert_close(sigma_tilde(grid.timesteps), (1 - w) * sigma_tilde(lo) + w * sigma_tilde(lo + 1),
                               rtol=1e-12, atol=0)  # σ̃ linear in t, at our time with that σ̃
    assert grid.noise_scale == pytest.approx(sched.sigma(999.0).item())  # x = α·σ̃_max z = σ_999 z
    for spacing, offset in [("trailing", 0), ("leading", 1)]:
        grid = diffusers_grid(scheduler, steps, sched, timestep_spacing=spacing, steps_offset=offset)
        torch.testing.assert_close(grid.timesteps, sched.timesteps(steps, spacing) + offset, rtol=0, atol=1e-9)
        assert grid.noise_scale == (1.0 if spacing == "leading" else pytest.approx(sched.sigma(999.0).item()))
    assert grid.sampler_options == ({"order": 4, "first_order_final": False} if scheduler == "LMSDiscreteScheduler"
                                    else {})


def test_clip_sample_clips_the_guided_x0():
    sched, w, seen = Schedule.vp("linear"), 3.0, []
    grid = diffusers_grid("DDPMScheduler", 10, sched)  # diffusers' default: clip_sample=True, range 1
    net = gaussian_network(sched, "eps", 0.5, 0.7)
    model = lambda x, t, cond: net(x, t) * (1 + cond.view(-1, 1))  # noqa: E731  the condition scales the output
    cond, null = torch.ones(2), torch.zeros(2)
    noise = torch.randn(2, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sample_like_diffusers(model, noise, grid, cfg_scale=w,
                          cond=cond, null_cond=null, generator=torch.Generator().manual_seed(1),
                          callback=lambda i, t, x, x0_hat: seen.append(x0_hat))
    assert max(x0.abs().max().item() for x0 in seen) == pytest.approx(1.0, abs=1e-12)  # the guided x̂0, clipped
    assert grid.clip_x0 == 1.0 and grid.sampler == "ddpm"


def test_settings_are_checked_with_clear_errors():
    sched = Schedule.vp("scaled_linear")
    with pytest.raises(ValueError, match="unknown to tinyldm"):
        diffusers_grid("EulerDiscreteScheduler", 10, sched, timestep_spacingg="trailing")
    with pytest.raises(ValueError, match="use_exponential_sigmas=True is not reproduced"):
        diffusers_grid("EulerDiscreteScheduler", 10, sched, use_exponential_sigmas=True)
    with pytest.raises(ValueError, match="beta_end=0.02 but the schedule has 0.012"):
        diffusers_grid("EulerDiscreteScheduler", 10, sched, beta_end=0.02)
    with pytest.raises(ValueError, match="not one tinyldm reproduces"):
        diffusers_grid("UniPCMultistepScheduler", 10, sched)
    with pytest.raises(ValueError, match="the config is for 'DDIMScheduler'"):
        diffusers_grid("EulerDiscreteScheduler", 10, sched, _class_name="DDIMScheduler")
    with pytest.raises(ValueError, match="VP scheduler"):
        diffusers_grid("EulerDiscreteScheduler", 10, Schedule.flow())
    with pytest.raises(ValueError, match="steps must be an integer"):
        diffusers_grid("EulerDiscreteScheduler", 0, sched)
    with pytest.raises(ValueError, match="2⁻²⁴"):
        diffusers_grid("EulerDiscreteScheduler", 10, Schedule.vp("scaled_linear", zero_terminal_snr=True),
                       rescale_betas_zero_snr=True)
    # A scheduler_config.json pastes in: bookkeeping keys are ignored, the schedule comes from the same keys.
    config = {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.42.1", "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
              "timestep_spacing": "trailing"}
    grid = diffusers_grid("EulerDiscreteScheduler", 10, diffusers_schedule("EulerDiscreteScheduler", **config),
                          **config)
    assert grid.prediction == "v" and grid.timesteps[0] == 999


def test_every_diffusers_setting_is_read_refused_or_ignored():
    diffusers = pytest.importorskip("diffusers")
    import inspect

    for name in DEFAULTS:
        known = set(COMMON) | set(ONLY_DEFAULT) | set(DEFAULTS[name]) | set(IGNORED)
        init = set(inspect.signature(getattr(diffusers, name).__init__).parameters) - {"self"}
        assert init <= known, (name, init - known)


@pytest.mark.parametrize("name", DEFAULTS)
def test_grids_match_live_diffusers(name):
    diffusers = pytest.importorskip("diffusers")
    sd = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}
    karras = [False, True] if "use_karras_sigmas" in DEFAULTS[name] else [False]
    plms = {"skip_prk_steps": True, "set_alpha_to_one": True} if name == "PNDMScheduler" else {}
    for steps, spacing, offset, use_karras in itertools.product((1, 2, 7, 10, 25, 50), SPACINGS, (0, 1), karras):
        config = {k: v for k, v in sd.items() if k in DEFAULTS[name] | COMMON} | plms
        config |= {"timestep_spacing": spacing, "steps_offset": offset, "use_karras_sigmas": use_karras}
        config = {k: v for k, v in config.items() if k != "use_karras_sigmas" or len(karras) == 2}
        ref = getattr(diffusers, name)(**config)
        ref.set_timesteps(steps)
        sched = dataclasses.replace(diffusers_schedule(name, **config), alphas_cumprod=ref.alphas_cumprod.double())
        try:
            grid = diffusers_grid(name, steps, sched, **config)
        except ValueError as error:
            assert name in ("DDIMScheduler", "PNDMScheduler") and spacing != "leading" and "#12633" in str(error)
            continue
        # The times the network is told, and the states' σ̃ (diffusers' `sigmas`, Heun's without its repeats; PNDM's
        # second call, at t_1, is made inside plms's first step).
        asked = grid.model_times[: len(grid.model_times) - (0 if grid.denoise_to_zero else 1)]
        ref_t = ref.timesteps.double()
        ref_t = torch.cat([ref_t[:1], ref_t[1::2]]) if name == "HeunDiscreteScheduler" else ref_t
        ref_t = torch.cat([ref_t[:1], ref_t[2:]]) if name == "PNDMScheduler" else ref_t
        assert grid.sampler == {"PNDMScheduler": "plms" if steps > 1 else "ddim"}.get(name, grid.sampler)
        torch.testing.assert_close(asked, ref_t, rtol=0, atol=1e-4)
        if hasattr(ref, "sigmas"):
            ref_sigmas = ref.sigmas.double()
            ref_sigmas = torch.cat([ref_sigmas[:1], ref_sigmas[1::2]]) if name == "HeunDiscreteScheduler" \
                else ref_sigmas
            ours = sched.sigma(grid.timesteps) / sched.alpha(grid.timesteps)
            torch.testing.assert_close(ours, ref_sigmas[:-1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps", [4, 13, 25])
def test_reproduces_live_diffusers_at_other_step_counts(steps):
    pytest.importorskip("diffusers")
    import importlib.util

    spec = importlib.util.spec_from_file_location("fixtures", Path(__file__).parents[1] / "scripts"
                                                  / "make_scheduler_fixtures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # its recording loop and Gaussian network
    for name in REPRODUCED:
        case = CASES[name]
        try:
            ours = run_ours(case, steps=steps)
        except ValueError as error:  # DDIM and PNDM trailing when N does not divide T
            assert name.startswith(("ddim_", "pndm_")) and "#12633" in str(error)
            continue
        theirs = script.record(case["scheduler"], case["config"], steps, case["step_args"], FIXTURE["noise"])
        assert_same_run(ours, theirs)


def max_difference(ours, theirs) -> float:
    """Largest difference from diffusers over the network inputs both runs have and the final sample."""
    out, calls = ours
    n = min(len(calls), len(theirs["call_x"]))
    inputs = (torch.stack([x for _, x in calls[:n]]) - theirs["call_x"][:n]).abs().max().item()
    return max(inputs, (out - theirs["final"]).abs().max().item())


def nearest_run(case):
    """For a case `diffusers_grid` refuses: tinyldm with the nearest settings it reproduces, or its sampler on
    diffusers' listed network times."""
    fixes = {"ddim_clip": {"use_clipped_model_output": True}, "dpmpp_2m_heun": {"solver_type": "midpoint"},
             "dpmpp_2m_sde_midpoint": {"solver_type": "heun"}, "pndm_prk_defaults": {"skip_prk_steps": True},
             "pndm_v_prediction": {"prediction_type": "epsilon"}}
    sched = schedule_of(case)
    if case["name"] in fixes:
        return run_ours(case, diffusers_grid(case["scheduler"], case["steps"], sched,
                                             **settings(case) | fixes[case["name"]]))
    net, calls = gaussian_network(sched, "eps", FIXTURE["mu"], FIXTURE["s"]), []
    spy = lambda x, t: calls.append((t[0].item(), x.clone())) or net(x, t)  # noqa: E731
    config = SamplingConfig("ddim" if case["scheduler"] == "DDIMScheduler" else "ddpm", cfg_scale=1.0)
    out = sample(spy, FIXTURE["noise"], sched, config, timesteps=case["call_t"],
                 ddpm_variance=settings(case).get("variance_type", "fixed_small"),
                 generator=torch.Generator().manual_seed(FIXTURE["step_seed"]))
    return out, calls


def report():
    """The tables of docs/coming_from_diffusers.md: each case's max difference from diffusers (network inputs and
    final sample), then the DPM-Solver++(3M) measurements."""
    warnings.simplefilter("ignore")
    print("| case | scheduler | settings | reproduced | max difference |\n|---|---|---|---|---|")
    for name, case in CASES.items():
        keys = {k: v for k, v in settings(case).items() if not k.startswith("beta_")}
        if name in NOT_REPRODUCED:
            ours, verdict = nearest_run(case), f"no: {NOT_REPRODUCED[name]}"
        elif name in CANCELS_IN_DIFFUSERS:
            ours_error, theirs_error = errors_from_float64(case)
            ours, verdict = run_ours(case), (f"yes, to diffusers' cancellation error (from the float64 run: tinyldm "
                                             f"{ours_error:.1e}, diffusers {theirs_error:.1e})")
        elif name in DPMPP_3M:
            halved = (dpmpp_3m_runs(case)[1] - case["final"]).abs().max().item()
            ours, verdict = run_ours(case), f"no: D2's factor 2 (with D2/2: {halved:.1e})"
        else:
            ours, verdict = run_ours(case), "yes"
        print(f"| {name} | {case['scheduler']} | {keys} | {verdict} | {max_difference(ours, case):.1e} |")
    print("\nlocal error of one 3M step with exact history, from λ = −1.5, h =", LOCAL_HS.tolist())
    for factor, label in [(2, "tinyldm (2 (D1_0 − D1_1)/(r0 + r1))"), (1, "diffusers ((D1_0 − D1_1)/(r0 + r1))")]:
        errors = local_errors_3m(factor)
        slopes = np.diff(np.log(errors)) / np.diff(np.log(LOCAL_HS))
        print(f"| {label} | " + " | ".join(f"{e:.2e}" for e in errors)
              + f" | fit {np.polyfit(np.log(LOCAL_HS), np.log(errors), 1)[0]:.2f}, last pair {slopes[-1]:.2f} |")
    sched = Schedule.vp("scaled_linear")
    x = torch.randn(256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    denoiser = lambda x, t: gaussian_x0(x, *sched.alpha_sigma(t), 0.5, 0.7)  # noqa: E731
    Ns = [16, 32, 64, 128]
    print(f"\nODE error of the third-order steps (start-up left out), λ = −2.5 → −0.5 uniform, N = {Ns}")
    for factor, label in [(2, "tinyldm"), (1, "diffusers")]:
        errors = [third_order_steps_error(factor, N) for N in Ns]
        print(f"| {label} | " + " | ".join(f"{e:.2e}" for e in errors)
              + f" | order {-np.polyfit(np.log(Ns), np.log(errors), 1)[0]:.2f} |")
    Ns = [10, 20, 50]
    print(f"\nend-to-end error vs the exact sample, scaled_linear, trailing, float64, N = {Ns}")
    for factor, label in [(2, "tinyldm"), (1, "diffusers")]:
        exact = gaussian_flow_map(sched, x, 999.0, -1.0, 0.5, 0.7)
        errors = []
        for N in Ns:
            ts = torch.cat([sched.timesteps(N, "trailing"), torch.tensor([-1.0], dtype=torch.float64)])
            errors.append((dpmpp_3m_reference(denoiser, x, sched, ts, factor) - exact).abs().max().item())
        print(f"| {label} | " + " | ".join(f"{e:.2e}" for e in errors) + " |")


if __name__ == "__main__":
    report()
