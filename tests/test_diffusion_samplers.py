"""Sampler identities, exact cases, closed forms, guidance, bookkeeping and errors (analytic denoisers, float64)."""

import numpy as np
import pytest
import torch

from tinyldm.diffusion import (
    SAMPLERS,
    SamplingConfig,
    Schedule,
    ancestral_sigmas,
    classifier_free_guidance,
    ddim,
    ddpm,
    ddpm_posterior,
    dpm_solver_1,
    dpmpp_2m,
    dpmpp_3m,
    euler,
    flow_euler,
    lms_coefficients,
    nfe,
    rescale_guidance,
    sample,
)
from tinyldm.diffusion.analytic import gaussian_flow_map, gaussian_network
from tinyldm.diffusion.sampling import make_denoiser


def exact_network(sched, prediction, mu=0.5, s=0.7):
    return gaussian_network(sched, prediction, mu, s)


def exact_flow_map(sched, x, t_from, t_to, mu=0.5, s=0.7):
    return gaussian_flow_map(sched, x, t_from, t_to, mu, s)

DETERMINISTIC = ["ddim", "euler", "heun", "lms", "plms", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m",
                 "dpmpp_3m"]


def unguided(sampler: str, **settings) -> SamplingConfig:
    """Sampling settings without guidance (w = 1): the analytic networks here take no condition."""
    return SamplingConfig(sampler, cfg_scale=1.0, **settings)


def _x(n=32, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sampler", DETERMINISTIC + ["flow_euler", "flow_heun"])
def test_point_mass_data_is_exact_in_one_step(sampler):
    # s = 0: x̂0 = μ for every x_t, the ODE path is straight in (x̃, σ̃) and in λ, so first-order steps are exact.
    sched = Schedule.flow() if sampler.startswith("flow_") else Schedule.vp("scaled_linear")
    t0, t1 = (0.9, 0.3) if sched.kind == "flow" else (999.0, 300.0)
    model, x = exact_network(sched, "x0", mu=0.7, s=0.0), _x()
    one = sample(model, x, sched, unguided(sampler), timesteps=[t0, t1], prediction="x0", denoise_to_zero=False)
    torch.testing.assert_close(one, exact_flow_map(sched, x, t0, t1, mu=0.7, s=0.0), rtol=0, atol=1e-10)
    to_data = sample(model, x, sched, unguided(sampler), timesteps=[t0], prediction="x0")
    torch.testing.assert_close(to_data, torch.full_like(x, 0.7), rtol=0, atol=1e-12)
    grid = torch.linspace(t0, t1, 7, dtype=torch.float64)
    several = sample(model, x, sched, unguided(sampler), timesteps=grid, prediction="x0", denoise_to_zero=False)
    torch.testing.assert_close(several, exact_flow_map(sched, x, t0, t1, mu=0.7, s=0.0), rtol=0, atol=1e-10)


def test_ddim_is_euler_in_karras_variables_and_dpm_solver_1_and_flow_euler():
    sched = Schedule.vp("linear")
    D = make_denoiser(exact_network(sched, "eps"), sched, "eps")
    ts = torch.linspace(999, 0, 13, dtype=torch.float64)
    x = _x()
    reference = ddim(D, x, sched, ts)
    torch.testing.assert_close(euler(D, x, sched, ts), reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(dpm_solver_1(D, x, sched, ts), reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(dpmpp_2m(D, x, sched, ts[:2]), ddim(D, x, sched, ts[:2]), rtol=0, atol=1e-10)  # DPM++(1)
    flow = Schedule.flow(shift=3.0)
    Df = make_denoiser(exact_network(flow, "flow"), flow, "flow")
    tf = flow.timesteps(9, "trailing")
    torch.testing.assert_close(flow_euler(Df, x, flow, tf), ddim(Df, x, flow, tf), rtol=0, atol=1e-10)
    torch.testing.assert_close(euler(Df, x, flow, tf[1:]), ddim(Df, x, flow, tf[1:]), rtol=0, atol=1e-10)


def test_ddpm_is_ddim_with_eta_one_and_the_same_noise():
    sched = Schedule.vp("scaled_linear")
    D = make_denoiser(exact_network(sched, "v"), sched, "v")
    ts = torch.cat([sched.timesteps(25, "trailing"), torch.tensor([-1.0], dtype=torch.float64)])
    a = ddpm(D, _x(), sched, ts, generator=torch.Generator().manual_seed(3))
    b = ddim(D, _x(), sched, ts, generator=torch.Generator().manual_seed(3), eta=1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_ddpm_posterior_matches_ho_et_al_equation_7():
    sched = Schedule.vp("linear")
    alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), sched.alphas_cumprod])  # index t + 1
    beta = 1 - alpha_bar[1:] / alpha_bar[:-1]
    for t in (0, 1, 487, 998, 999):
        c_x0, c_xs, beta_tilde, _ = ddpm_posterior(sched, float(t), float(t - 1))
        ab_t, ab_prev = alpha_bar[t + 1], alpha_bar[t]
        assert c_x0.item() == pytest.approx((ab_prev.sqrt() * beta[t] / (1 - ab_t)).item(), rel=1e-9)
        assert c_xs.item() == pytest.approx(((1 - beta[t]).sqrt() * (1 - ab_prev) / (1 - ab_t)).item(), rel=1e-9)
        assert beta_tilde.item() == pytest.approx(((1 - ab_prev) / (1 - ab_t) * beta[t]).item(), rel=1e-9, abs=1e-15)
    beta_tilde = [ddpm_posterior(sched, float(t), float(t - 1))[2].item() for t in (0, 487, 999)]
    assert beta_tilde == pytest.approx([0.0, 0.00979, 0.02], abs=5e-6)


def test_lms_coefficients_are_adams_bashforth_weights_and_sum_to_the_step():
    h = 0.1
    sigmas = [2.0, 2.0 + h, 2.0 + 2 * h, 2.0 + 3 * h]  # σ̃_i and the three previous (larger) ones
    weights = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    for k, w in weights.items():
        c = lms_coefficients(sigmas[:k], 2.0 - h)
        assert c == pytest.approx([-h * wj for wj in w], rel=1e-12)
    rng = np.random.default_rng(0)
    uneven = sorted(rng.uniform(1, 3, 4).tolist())  # ascending: σ̃_i is the smallest
    assert sum(lms_coefficients(uneven, 0.5)) == pytest.approx(0.5 - uneven[0], rel=1e-12)


def test_ancestral_split_preserves_the_noise_level():
    s_from = torch.tensor([10.0, 1.0, 0.3, 0.05], dtype=torch.float64)
    s_to = torch.tensor([5.0, 0.9, 0.01, 0.0], dtype=torch.float64)
    down, up = ancestral_sigmas(s_from, s_to)
    torch.testing.assert_close(down**2 + up**2, s_to**2, rtol=1e-12, atol=0)
    assert (up <= s_to).all() and up[-1] == 0 and down[-1] == 0


def test_dpmpp_3m_formula_is_exact_for_quadratic_x0_in_lambda():
    # With x̂0(λ) = P(λ) quadratic and independent of x, x_t = (σ_t/σ_s) x_s + σ_t ∫ e^λ P dλ in closed form
    # (∫ e^λ P = e^λ (P − P' + P'')). 3M integrates the quadratic through its last three x̂0 exactly (the third-
    # order formula), so every step after the two start-up steps adds no error: the final error is the start-up
    # error carried by σ_t/σ_s. (2M's Algorithm 2 replaces φ2 by −φ1/2, exact only to leading order in h.)
    fn, degree = dpmpp_3m, 2
    sched = Schedule.flow()
    c = [0.3, -0.7, 0.25]
    P = np.polynomial.Polynomial(c)
    F = lambda lam: np.exp(lam) * (P(lam) - P.deriv(1)(lam) + P.deriv(2)(lam))  # noqa: E731
    lam = lambda t: sched.lam(torch.tensor(t, dtype=torch.float64)).item()  # noqa: E731
    exact = lambda t: sched.sigma(torch.tensor(t, dtype=torch.float64)).item() * (F(lam(t)) - F(lam(0.9)))  # from x = 0 at t = 0.9  # noqa
    ts = torch.tensor([0.9, 0.85, 0.77, 0.7, 0.55, 0.5, 0.3], dtype=torch.float64)
    states = []
    out = fn(lambda x, t: torch.full_like(x, float(P(sched.lam(t).item()))), torch.zeros(1, dtype=torch.float64),
             sched, ts, callback=lambda i, t, x, x0: states.append(x.item()), lower_order_final=False)
    start_up = states[degree - 1] - exact(ts[degree].item())  # after the first `degree` (lower-order) steps
    carried = start_up * sched.sigma(ts[-1]).item() / sched.sigma(ts[degree]).item()
    assert abs(start_up) > 1e-4  # the start-up is not exact, the later steps are
    assert out.item() - exact(ts[-1].item()) == pytest.approx(carried, rel=1e-9)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_nfe_counts_the_network_calls_and_callback_sees_every_step(sampler):
    sched = Schedule.flow() if sampler.startswith("flow_") else Schedule.vp("scaled_linear")
    calls, steps = [], []
    net = exact_network(sched, "x0")

    def counting(x, t):
        calls.append(t)
        assert t.shape == (x.shape[0],) and t.dtype == torch.float64
        return net(x, t)

    start = 0.95 if sched.kind == "flow" else 990.0
    ts = torch.linspace(start, start / 2, 6, dtype=torch.float64)
    sample(counting, _x(4).view(2, 2), sched, unguided(sampler), timesteps=ts, prediction="x0",
           generator=torch.Generator().manual_seed(0), callback=lambda i, t, x, x0: steps.append((i, t)))
    assert len(calls) == nfe(sampler, 6)
    assert [i for i, _ in steps] == list(range(6)) and isinstance(steps[0][1], float) and steps[0][1] == start
    assert nfe("heun", 10) == 19 and nfe("dpm_solver_3", 10) == 28 and nfe("heun", 10, denoise_to_zero=False) == 18


def test_classifier_free_guidance_identities_and_one_batched_forward():
    cond, null = torch.tensor([[1.0], [2.0]]), torch.zeros(1, 1)
    batches = []

    def model(x, t, c):  # (B, C, H, W) with an output that depends on the condition in every channel
        batches.append(x.shape[0])
        return x * 0.5 + c.view(-1, 1, 1, 1) * torch.arange(1.0, 4.0).view(1, 3, 1, 1)

    sched = Schedule.vp("linear")
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ts = [500.0, 400.0]
    run = lambda w, phi=0.0: sample(model, x, sched, SamplingConfig("ddim", cfg_scale=w, cfg_rescale=phi),  # noqa
                                    timesteps=ts, cond=cond, null_cond=null, denoise_to_zero=False)
    conditional = sample(lambda x, t: model(x, t, cond), x, sched, unguided("ddim"), timesteps=ts,
                         denoise_to_zero=False)
    unconditional = sample(lambda x, t: model(x, t, null.expand(2, 1)), x, sched, unguided("ddim"), timesteps=ts,
                           denoise_to_zero=False)
    batches.clear()
    torch.testing.assert_close(run(2.0), 2 * conditional - unconditional)  # DDIM is linear in x̂0 at fixed x, t
    assert batches == [4]  # one forward of [cond, null] per step
    batches.clear()
    assert torch.equal(run(1.0), conditional) and torch.equal(run(1.0, phi=0.7), conditional)
    assert batches == [2, 2]  # w = 1 is the conditional model: no unconditional forward
    torch.testing.assert_close(run(0.0), unconditional)
    # w = 3 moves every channel by 3× the conditional difference (DiT issue #41: not just the first three).
    pred_c, pred_u = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(classifier_free_guidance(pred_c, pred_u, 3.0) - pred_u, 3 * (pred_c - pred_u))
    # Rescale φ = 0 is the identity; φ = 1 gives the conditional prediction's std per sample.
    guided = classifier_free_guidance(pred_c, pred_u, 5.0)
    assert torch.equal(rescale_guidance(guided, pred_c, 0.0), guided)
    std = rescale_guidance(guided, pred_c, 1.0).flatten(1).std(dim=1)
    torch.testing.assert_close(std, pred_c.flatten(1).std(dim=1))


def test_autoguidance_is_the_guidance_formula_with_the_guide_as_the_weaker_prediction():
    cond, null = torch.tensor([[1.0], [2.0]]), torch.zeros(1, 1)
    calls = []

    def model(x, t, c):  # the trained network: its output depends on the condition in every channel
        calls.append(("model", x.shape[0]))
        return x * 0.5 + c.view(-1, 1, 1, 1) * torch.arange(1.0, 4.0).view(1, 3, 1, 1)

    def guide(x, t, c):  # a worse version of it: the same slope in x (DDIM is then linear in the outputs)
        calls.append(("guide", x.shape[0]))
        return x * 0.5 + c.view(-1, 1, 1, 1) * 0.3 - 0.2

    sched = Schedule.vp("linear")
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ts = [500.0, 400.0]
    run = lambda w, w_a, g=guide: sample(model, x, sched, SamplingConfig("ddim", cfg_scale=w, ag_scale=w_a),  # noqa
                                         timesteps=ts, cond=cond, null_cond=null, guide=g, denoise_to_zero=False)
    alone = lambda net: sample(lambda x, t: net(x, t, cond), x, sched, unguided("ddim"), timesteps=ts,  # noqa
                               denoise_to_zero=False)
    conditional, guide_only = alone(model), alone(guide)
    unconditional = sample(lambda x, t: model(x, t, null.expand(2, 1)), x, sched, unguided("ddim"), timesteps=ts,
                           denoise_to_zero=False)
    # Karras et al. 2024, Eq. 1 with the guide as D_0: w_a D_1 + (1 − w_a) D_0, one forward of each.
    calls.clear()
    torch.testing.assert_close(run(1.0, 2.0), 2 * conditional - guide_only)
    assert calls == [("model", 2), ("guide", 2)]  # the one step from 500 to 400
    # Added to classifier-free guidance: D_c + (w − 1)(D_c − D_u) + (w_a − 1)(D_c − D_guide).
    torch.testing.assert_close(run(2.0, 1.5), 2.5 * conditional - unconditional - 0.5 * guide_only)
    # w_a = 1 is classifier-free guidance alone: the guide is never asked.
    calls.clear()
    assert torch.equal(run(2.0, 1.0), run(2.0, 1.0, None))
    assert ("guide", 2) not in calls
    # A guide that is the model itself pushes nowhere, whatever w_a.
    torch.testing.assert_close(run(2.0, 3.0, model), run(2.0, 1.0))
    with pytest.raises(ValueError, match="needs the guide network.*ag_scale=1.0"):
        run(2.0, 1.5, None)
    with pytest.raises(ValueError, match="ag_scale nan must be a finite number"):
        SamplingConfig(ag_scale=float("nan"))


def test_bad_input_gives_clear_errors():
    # The settings themselves are SamplingConfig's to check (next test); these are what only `sample` can see.
    sched, x = Schedule.vp("linear"), _x(4)
    model = exact_network(sched, "eps")
    with pytest.raises(ValueError, match="num_train_timesteps=1000"):
        sample(model, x, sched, unguided("dpmpp_2m", steps=2000))
    zero = Schedule.vp("scaled_linear", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="prediction='eps' gives no x0"):
        sample(model, x, zero, unguided("dpmpp_2m"), prediction="eps")
    with pytest.raises(ValueError, match="needs α > 0 at its first time"):
        sample(exact_network(zero, "v"), x, zero, unguided("euler"), prediction="v")
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(model, x, sched, unguided("dpmpp_2m"), timesteps=[10.0, 20.0])
    with pytest.raises(ValueError, match="choose one of"):
        sample(model, x, sched, unguided("dpmpp_2m"), prediction="score")
    with pytest.raises(ValueError, match="needs both cond and null_cond.*cfg_scale=1.0"):
        sample(model, x, sched, SamplingConfig(cfg_scale=4.0))  # guided settings for an unconditional model


def test_sampling_config_validates_each_setting_once():
    for kwargs, message in [({"sampler": "dpm++"}, "choose one of"), ({"steps": 0}, "positive integer"),
                            ({"steps": 2.5}, "positive integer"), ({"spacing": "uniform"}, "choose one of"),
                            ({"eta": 1.5}, r"\[0, 1\]"), ({"sampler": "heun", "eta": 0.5}, "sampler='ddim'"),
                            ({"cfg_scale": float("nan")}, "finite"), ({"cfg_rescale": 2.0}, r"\[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            SamplingConfig(**kwargs)


@pytest.mark.parametrize("name,flow_name", [("euler", "flow_euler"), ("heun", "flow_heun")])
def test_euler_and_heun_on_a_flow_schedule_say_they_run_their_flow_form(name, flow_name):
    sched, x = Schedule.flow(shift=2.0), _x(8)
    model = exact_network(sched, "flow")
    with pytest.warns(UserWarning, match=f"runs '{flow_name}'"):
        out = sample(model, x, sched, unguided(name, steps=6), prediction="flow")
    assert torch.equal(out, sample(model, x, sched, unguided(flow_name, steps=6), prediction="flow"))
