"""Noising, targets, conversions, min-SNR weights and training times, checked against their definitions."""

import itertools

import pytest
import torch

from tinyldm.diffusion import (
    Schedule,
    add_noise,
    convert,
    diffusion_loss,
    from_x0,
    min_snr_weight,
    sample_timesteps,
    to_x0,
    training_target,
)

VP_PREDICTIONS = ("eps", "v", "x0")
FLOW_PREDICTIONS = ("eps", "x0", "flow")


def _data(seed=0, shape=(4, 3, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_conversions_round_trip_between_every_pair(kind):
    sched = Schedule.vp("scaled_linear") if kind == "vp" else Schedule.flow(shift=3.0)
    predictions = VP_PREDICTIONS if kind == "vp" else FLOW_PREDICTIONS
    x0, eps = _data()
    t = torch.tensor([0.0, 250.0, 700.0, 999.0]) if kind == "vp" else torch.tensor([0.01, 0.3, 0.7, 0.99])
    x_t = add_noise(x0, eps, sched, t)
    alpha, sigma = sched.alpha_sigma(t)
    for source, target in itertools.product(predictions, predictions):
        pred = training_target(x0, eps, sched, t, source)
        # Every output converts to the target computed from the truth, and back.
        expected = training_target(x0, eps, sched, t, target)
        torch.testing.assert_close(convert(pred, x_t, alpha, sigma, source, target), expected, rtol=0, atol=1e-10)
        there_and_back = convert(convert(pred, x_t, alpha, sigma, source, target), x_t, alpha, sigma, target, source)
        torch.testing.assert_close(there_and_back, pred, rtol=0, atol=1e-10)
        torch.testing.assert_close(to_x0(pred, x_t, alpha, sigma, source), x0, rtol=0, atol=1e-10)


def test_v_and_flow_targets_are_their_definitions():
    x0, eps = _data(1)
    vp = Schedule.vp("linear")
    t = torch.tensor([10.0, 400.0, 800.0, 999.0])
    a, s = vp.alpha(t).view(-1, 1, 1, 1), vp.sigma(t).view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target(x0, eps, vp, t, "v"), a * eps - s * x0)  # Salimans & Ho
    # VP: x̂0 = α x_t − σ v and ε̂ = σ x_t + α v (the doc's VP-only forms).
    x_t, v = a * x0 + s * eps, a * eps - s * x0
    torch.testing.assert_close(a * x_t - s * v, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(from_x0(x0, x_t, a.flatten(), s.flatten(), "eps"), s * x_t + a * v, rtol=0, atol=1e-10)
    # Flow: x_t = (1 − t) x0 + t ε and u = dx_t/dt = ε − x0, so x̂0 = x_t − t u.
    flow = Schedule.flow()
    tf = torch.tensor([0.1, 0.4, 0.8, 1.0], dtype=torch.float64)
    x_t = add_noise(x0, eps, flow, tf)
    u = training_target(x0, eps, flow, tf, "flow")
    dt = 1e-6
    torch.testing.assert_close(u, (add_noise(x0, eps, flow, tf - dt) - x_t) / -dt, rtol=0, atol=1e-8)
    torch.testing.assert_close(x_t - tf.view(-1, 1, 1, 1) * u, x0, rtol=0, atol=1e-12)


CASES = [("vp", p) for p in VP_PREDICTIONS] + [("flow", p) for p in FLOW_PREDICTIONS]


@pytest.mark.parametrize("kind,prediction", CASES)
def test_min_snr_weight_equals_min_snr_times_x0_error(kind, prediction):
    # Definition: weight · ‖Δpred‖² = min(SNR, γ) · ‖Δx0‖² for the same x_t (Hang et al. 2023).
    sched = Schedule.vp("scaled_linear") if kind == "vp" else Schedule.flow()
    t = torch.tensor([5.0, 300.0, 900.0]) if kind == "vp" else torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    x0, eps = _data(2, (3, 8))
    x_t = add_noise(x0, eps, sched, t)
    alpha, sigma = sched.alpha_sigma(t)
    pred = training_target(x0, eps, sched, t, prediction)
    delta = 1e-3 * torch.randn(pred.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dx0 = to_x0(pred + delta, x_t, alpha, sigma, prediction) - to_x0(pred, x_t, alpha, sigma, prediction)
    snr = alpha**2 / sigma**2
    lhs = min_snr_weight(sched, t, prediction, gamma=5.0) * delta.pow(2).sum(1)
    rhs = torch.clamp(snr, max=5.0) * dx0.pow(2).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=0)


def test_min_snr_weight_forms_of_the_doc_and_the_zero_snr_case():
    sched = Schedule.vp("linear", zero_terminal_snr=True)
    t = torch.tensor([0.0, 500.0, 999.0])
    snr = sched.alpha(t) ** 2 / sched.sigma(t) ** 2
    gamma = 5.0
    eps_w, v_w = min_snr_weight(sched, t, "eps", gamma), min_snr_weight(sched, t, "v", gamma)
    torch.testing.assert_close(eps_w[:2], torch.clamp(snr[:2], max=gamma) / snr[:2])
    torch.testing.assert_close(v_w, torch.clamp(snr, max=gamma) / (snr + 1))
    torch.testing.assert_close(min_snr_weight(sched, t, "x0", gamma), torch.clamp(snr, max=gamma))
    # SNR = 0 at t = 999: ε weight is the limit 1 of min(SNR, γ)/SNR, v weight 0; nothing is NaN.
    assert snr[2].item() == 0.0 and eps_w[2].item() == 1.0 and v_w[2].item() == 0.0


def test_sample_timesteps_ranges_and_logit_normal_law():
    g = torch.Generator().manual_seed(0)
    vp = sample_timesteps(20000, Schedule.vp("linear"), g)
    assert vp.min() >= 0 and vp.max() <= 999 and (vp == vp.round()).all()
    assert abs(vp.mean().item() - 499.5) < 4 * 288.7 / 20000**0.5
    t = sample_timesteps(20000, Schedule.flow(), g, kind="logit_normal", mean=0.5, std=1.0)
    n = torch.logit(t)  # logit(t) ~ N(0.5, 1)
    assert abs(n.mean().item() - 0.5) < 4 / 20000**0.5 and abs(n.std().item() - 1.0) < 4 / (2 * 20000) ** 0.5
    shifted = sample_timesteps(20000, Schedule.flow(shift=3.0), torch.Generator().manual_seed(1))
    u = shifted / (3 - 2 * shifted)  # inverse of t' = 3u/(1 + 2u): u ~ U(0, 1)
    assert abs(u.mean().item() - 0.5) < 4 * 0.2887 / 20000**0.5
    with pytest.raises(ValueError, match="choose one of"):
        sample_timesteps(4, Schedule.flow(), g, kind="beta")
    with pytest.raises(ValueError, match="flow schedules"):
        sample_timesteps(4, Schedule.vp("linear"), g, kind="logit_normal")


@pytest.mark.parametrize("kind,prediction", [("vp", "v"), ("vp", "eps"), ("flow", "flow")])
def test_diffusion_loss_uses_model_time_and_is_zero_for_the_perfect_network(kind, prediction):
    sched = Schedule.vp("linear") if kind == "vp" else Schedule.flow(shift=2.0)
    x0, eps = _data(4)
    t = sample_timesteps(4, sched, torch.Generator().manual_seed(5))
    seen = []

    def perfect(x_t, t_model):
        seen.append(t_model)
        return training_target(x0, eps, sched, t, prediction).to(x_t)

    loss = diffusion_loss(perfect, x0, sched, prediction, t=t, eps=eps, min_snr_gamma=5.0)
    assert loss.item() == 0.0
    torch.testing.assert_close(seen[0], sched.model_time(t))
    if kind == "flow":
        assert 0 < seen[0].min() and seen[0].max() < 1000  # the network sees t·1000
    # A network that is off by a constant c has loss c² without weights.
    off = diffusion_loss(lambda x_t, tm: perfect(x_t, tm) + 0.5, x0, sched, prediction, t=t, eps=eps)
    assert off.item() == pytest.approx(0.25, rel=1e-12)


def test_prediction_names_are_checked():
    with pytest.raises(ValueError, match="choose one of"):
        training_target(*_data(), Schedule.vp("linear"), torch.zeros(4), "score")
    with pytest.raises(ValueError, match="prediction='flow'"):
        training_target(*_data(), Schedule.flow(), torch.zeros(4), "v")
    with pytest.raises(ValueError, match="Schedule.flow"):
        training_target(*_data(), Schedule.vp("linear"), torch.zeros(4), "flow")
