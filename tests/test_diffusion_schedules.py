"""Schedules against their defining formulas (tinyldm/diffusion/schedules.py documents each; docs/samplers_guide.md)."""

import json
import math

import pytest
import torch

from tinyldm.diffusion import Schedule, karras_sigmas

T = 1000


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_alphas_cumprod_is_the_product_of_one_minus_beta(name):
    sched = Schedule.vp(name)
    if name == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    elif name == "scaled_linear":
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    else:
        f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
        betas = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)], dtype=torch.float64)
    expected = torch.tensor([math.prod(1 - b for b in betas[: i + 1].tolist()) for i in (0, 1, 499, 998, 999)],
                            dtype=torch.float64)
    got = sched.alphas_cumprod[[0, 1, 499, 998, 999]]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-300)
    assert sched.alphas_cumprod.dtype == torch.float64


def test_cosine_matches_its_formula_where_beta_is_not_clipped():
    # ᾱ_i = f(i + 1)/f(0) (Nichol & Dhariwal Eq. 17, zero-based) until the first β clipped at 0.999.
    sched = Schedule.vp("cosine")
    s = 0.008
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    unclipped = (1 - f[1:] / f[:-1]) < 0.999
    n = int(unclipped.long().cumprod(0).sum())
    assert n >= T - 2
    torch.testing.assert_close(sched.alphas_cumprod[:n], f[1 : n + 1] / f[0], rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_zero_terminal_snr_ends_at_zero_and_keeps_the_first(name):
    plain, zero = Schedule.vp(name), Schedule.vp(name, zero_terminal_snr=True)
    assert zero.alphas_cumprod[-1].item() == 0.0
    assert zero.alpha(T - 1).item() == 0.0 and zero.sigma(T - 1).item() == 1.0
    torch.testing.assert_close(zero.alphas_cumprod[0], plain.alphas_cumprod[0], rtol=1e-14, atol=0)
    assert (zero.alphas_cumprod.diff() < 0).all()
    # sqrt(ᾱ) is an affine map of the original: the ratio of differences is constant.
    a, a0 = zero.alphas_cumprod.sqrt(), plain.alphas_cumprod.sqrt()
    ratio = a.diff() / a0.diff()
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-8, atol=0)


def test_the_n10_spacings_of_the_doc():
    sched = Schedule.vp("scaled_linear")
    assert sched.timesteps(10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert sched.timesteps(10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert sched.timesteps(10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


@pytest.mark.parametrize("steps", [1, 7, 50, 333, 1000])
def test_trailing_and_linspace_start_at_t_max_and_decrease(steps):
    sched = Schedule.vp("linear")
    for spacing in ("trailing", "linspace", "leading"):
        ts = sched.timesteps(steps, spacing)
        assert len(ts) == steps and (ts.diff() < 0).all() and ts.min() >= 0
        if spacing == "trailing" or (spacing == "linspace" and steps > 1):  # linspace(0, T−1, 1) is [0]
            assert ts[0].item() == T - 1


def test_karras_grid_is_monotone_from_sigma_max_to_zero():
    sigmas = karras_sigmas(10, 0.03, 14.6)
    assert sigmas[0].item() == pytest.approx(14.6, rel=1e-14) and sigmas[-2].item() == pytest.approx(0.03, rel=1e-12)
    assert sigmas[-1].item() == 0.0 and (sigmas.diff() < 0).all()
    # Eq. 5: σ_i^{1/ρ} is linear in i.
    root = sigmas[:-1] ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff()[0].expand(9), rtol=1e-10, atol=0)


def test_karras_timesteps_land_on_the_karras_sigmas():
    sched = Schedule.vp("scaled_linear")
    ts = sched.timesteps(12, "karras")
    sigma_tilde = (-sched.lam(ts)).exp()
    s_min, s_max = (-sched.lam(torch.tensor([0.0, 999.0]))).exp().tolist()
    torch.testing.assert_close(sigma_tilde, karras_sigmas(12, s_min, s_max)[:-1], rtol=1e-10, atol=0)
    assert ts[0].item() == pytest.approx(999) and ts[-1].item() == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("zero", [False, True])
def test_fractional_times_interpolate_log_snr_and_lam_inverts(zero):
    sched = Schedule.vp("scaled_linear", zero_terminal_snr=zero)
    # At the integers: the table itself; α² + σ² = 1 everywhere.
    i = torch.arange(0, T, 37, dtype=torch.float64)
    torch.testing.assert_close(sched.alpha(i) ** 2, sched.alphas_cumprod[i.long()], rtol=1e-12, atol=1e-15)
    t = torch.linspace(-1, T - 1, 3001, dtype=torch.float64)
    alpha, sigma = sched.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-14)
    assert (alpha.diff() <= 0).all()
    # Half-way between two integers λ is the mean of its neighbours.
    lam = sched.lam(torch.tensor([500.0, 500.5, 501.0]))
    assert lam[1].item() == pytest.approx((lam[0] + lam[2]).item() / 2, rel=1e-12)
    # t_from_lam inverts lam (interior times, where λ is finite).
    interior = t[(t > -1) & (t < T - 1)]
    torch.testing.assert_close(sched.t_from_lam(sched.lam(interior)), interior, rtol=0, atol=1e-8)


def test_clean_time_and_flow_schedule():
    vp = Schedule.vp("linear")
    assert vp.t_min == -1 and vp.alpha(-1).item() == 1.0 and vp.sigma(-1).item() == 0.0
    flow = Schedule.flow()
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert flow.alpha(t).tolist() == [1.0, 0.75, 0.0] and flow.sigma(t).tolist() == [0.0, 0.25, 1.0]
    assert flow.model_time(t).tolist() == [0.0, 250.0, 1000.0] and vp.model_time(t).tolist() == t.tolist()
    # Flow grid: trailing is SD3's linspace(1, 1/N, N), then the shift t' = s t/(1 + (s − 1) t).
    base = torch.linspace(1, 0.1, 10, dtype=torch.float64)
    torch.testing.assert_close(flow.timesteps(10, "trailing"), base)
    shifted = Schedule.flow(shift=3.0).timesteps(10, "trailing")
    torch.testing.assert_close(shifted, 3 * base / (1 + 2 * base))


def test_bad_schedule_inputs_say_what_to_change():
    with pytest.raises(ValueError, match="choose one of.*linear"):
        Schedule.vp("quadratic")
    with pytest.raises(ValueError, match="choose one of.*karras"):
        Schedule.vp("linear").timesteps(10, "uniform")
    with pytest.raises(ValueError, match="1 … num_train_timesteps=1000"):
        Schedule.vp("linear").timesteps(1001, "trailing")
    with pytest.raises(ValueError, match="positive integer"):
        Schedule.vp("linear").timesteps(0)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        Schedule.vp("linear", zero_terminal_snr=True).timesteps(10, "karras")
    with pytest.raises(ValueError, match="outside"):
        Schedule.vp("linear").alpha(1000.0)
    with pytest.raises(ValueError, match="beta_start"):
        Schedule.vp("linear", beta_start=0.1, beta_end=0.01)


@pytest.mark.parametrize("sched", [Schedule.vp("linear"), Schedule.vp("scaled_linear", beta_start=1e-3, beta_end=0.02),
                                   Schedule.vp("cosine", num_train_timesteps=500, zero_terminal_snr=True),
                                   Schedule.flow(shift=3.0, num_train_timesteps=100)])
def test_to_config_and_from_config_rebuild_the_same_schedule(sched):
    config = json.loads(json.dumps(sched.to_config()))  # what config.json holds
    again = Schedule.from_config(config)
    assert again.to_config() == config and repr(again) == repr(sched)
    t = torch.linspace(sched.t_min, sched.t_max, 37, dtype=torch.float64)
    for a, b in zip(again.alpha_sigma(t), sched.alpha_sigma(t)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="expected 'vp' or 'flow'"):
        Schedule.from_config({"kind": "ve"})


def test_alpha_is_zero_at_t_max_exactly_for_flow_and_zero_terminal_snr():
    # `sample` consults this before evaluating α at the grid's first time (ε-prediction needs α > 0 there).
    assert Schedule.flow().alpha_is_zero_at_t_max and Schedule.flow(shift=3.0).alpha_is_zero_at_t_max
    assert Schedule.vp("scaled_linear", zero_terminal_snr=True).alpha_is_zero_at_t_max
    for beta_schedule in ("linear", "scaled_linear", "cosine"):
        sched = Schedule.vp(beta_schedule)
        assert not sched.alpha_is_zero_at_t_max and sched.alpha(sched.t_max) > 0


@pytest.mark.parametrize("sched", [Schedule.vp("linear"), Schedule.vp("cosine"),
                                   Schedule.vp("scaled_linear", zero_terminal_snr=True)], ids=repr)
def test_integer_times_read_the_tables_and_agree_with_the_interpolation(sched):
    # Integer times (leading/trailing grids) take a shortcut: α and σ straight from the tables. With one fractional
    # time in the same call every time goes through the log-SNR interpolation; both must give the same numbers.
    ts = torch.arange(-1.0, sched.num_train_timesteps, dtype=torch.float64)
    alpha, sigma = sched.alpha_sigma(ts)
    alpha_i, sigma_i = (c[:-1] for c in sched.alpha_sigma(torch.cat([ts, ts.new_tensor([0.5])])))
    torch.testing.assert_close(alpha, alpha_i, rtol=0, atol=1e-12)
    torch.testing.assert_close(sigma, sigma_i, rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha**2, torch.cat([ts.new_ones(1), sched.alphas_cumprod]), rtol=0, atol=1e-15)
