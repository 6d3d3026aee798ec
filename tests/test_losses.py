"""Loss values against hand computations, gradients against their closed forms, and the perceptual fallback."""

import logging
import math
import sys
import types

import pytest
import torch
from torch import nn

from tinyldm.losses import (
    AutoencoderLossWeights,
    autoencoder_loss,
    frequency_loss,
    kl_loss,
    load_perceptual_loss,
    perceptual_loss,
    reconstruction_loss,
    vq_loss,
)


def test_reconstruction_loss_of_a_constant_error():
    x, c = torch.zeros(2, 3, 4, 4), -0.5
    x_hat = x + c
    assert reconstruction_loss(x, x_hat, "l1").item() == pytest.approx(abs(c))
    assert reconstruction_loss(x, x_hat, "mse").item() == pytest.approx(c**2)
    with pytest.raises(ValueError, match="choose one of"):
        reconstruction_loss(x, x_hat, "huber")


def test_kl_loss_hand_computed():
    # Per element KL = ½ (μ² + σ² − 1 − log σ²). Sample 0: μ = 1, log σ² = 0 → ½. Sample 1: μ = 0, σ² = 4.
    shape = (3, 4, 5)
    n = math.prod(shape)
    mean = torch.stack([torch.ones(shape), torch.zeros(shape)])  # (2, 3, 4, 5)
    logvar = torch.stack([torch.zeros(shape), torch.full(shape, math.log(4.0))])
    per_sample = [0.5 * n, 0.5 * (4.0 - 1.0 - math.log(4.0)) * n]  # summed over (C, H, W)
    assert kl_loss(mean, logvar).item() == pytest.approx(sum(per_sample) / 2, rel=1e-6)  # batch mean
    assert kl_loss(torch.zeros(2, *shape), torch.zeros(2, *shape)).item() == 0.0  # q = prior


def test_kl_loss_is_the_batch_mean_of_the_posterior_kl():
    from tinyldm.models.autoencoder_kl import DiagonalGaussian

    moments = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    posterior = DiagonalGaussian(moments)
    assert kl_loss(posterior.mean, posterior.logvar).item() == pytest.approx(posterior.kl().mean().item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["real", "logmag"])
def test_frequency_loss_of_identical_images_is_zero(kind):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert frequency_loss(x, x.clone(), kind).item() == 0.0


@pytest.mark.parametrize("norm", ["backward", "ortho"])
def test_frequency_loss_of_a_constant_offset_touches_only_the_dc_term(norm):
    # fft2 of a constant c on H×W is c·H·W ("backward") or c·√(H·W) ("ortho") at (0, 0) and 0 elsewhere,
    # so the mean over the H·W coefficients is dc² / (H·W).
    B, C, H, W, c = 2, 3, 8, 6, 0.3
    dc = c * H * W if norm == "backward" else c * math.sqrt(H * W)
    x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0))
    real = dc**2 / (H * W)
    assert frequency_loss(x, x + c, "real", norm).item() == pytest.approx(real, rel=1e-5)
    zero = torch.zeros(B, C, H, W)
    logmag = math.log1p(dc) ** 2 / (H * W)
    assert frequency_loss(zero, zero + c, "logmag", norm).item() == pytest.approx(logmag, rel=1e-5)


def test_ortho_frequency_loss_obeys_parseval():
    # Orthonormal FFT: Σ|F(e)|² = Σ e², and for a real error Re and Im split it; the real part of a
    # symmetric (even) error carries all of it, so "real" equals the pixel MSE there.
    e = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    even = (e + torch.roll(torch.flip(e, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))) / 2  # e[-n] = e[n]
    zero = torch.zeros_like(even)
    assert frequency_loss(zero, even, "real", "ortho").item() == pytest.approx(even.pow(2).mean().item(), rel=1e-5)


def test_real_frequency_loss_is_blind_to_sine_errors():
    # A sine along W has a purely imaginary spectrum: "real" (the seed's loss) cannot see it, "logmag" can.
    W = 8
    sine = torch.sin(2 * math.pi * torch.arange(W) / W).expand(1, 1, 4, W)  # (1, 1, 4, W)
    zero = torch.zeros_like(sine)
    assert frequency_loss(zero, sine, "real").item() == pytest.approx(0.0, abs=1e-10)
    assert frequency_loss(zero, sine, "logmag").item() > 0.1


def test_vq_loss_puts_beta_on_the_commitment_term():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    z_q = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    beta = 0.25
    loss = vq_loss(z, z_q, beta)
    assert loss.item() == pytest.approx((1 + beta) * (z - z_q).pow(2).mean().item(), rel=1e-6)
    loss.backward()
    n = z.numel()
    torch.testing.assert_close(z.grad, 2 * beta * (z - z_q).detach() / n)  # encoder side: scaled by β
    torch.testing.assert_close(z_q.grad, 2 * (z_q - z).detach() / n)  # codebook side: weight 1


def test_loss_weights_validate():
    with pytest.raises(ValueError, match="rec_kind"):
        AutoencoderLossWeights(rec_kind="l2")
    with pytest.raises(ValueError, match="freq_kind"):
        AutoencoderLossWeights(freq_kind="imag")
    with pytest.raises(ValueError, match="use 0 to switch it off"):
        AutoencoderLossWeights(kl=-1.0)


class HalfAbsDiff(nn.Module):
    """Stand-in for LPIPS: ½ mean |a − b| per sample, (B, 1, 1, 1); records the channel count it saw."""

    def forward(self, a, b):
        self.channels = a.shape[1]
        return 0.5 * (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_autoencoder_loss_is_the_weighted_sum_of_its_logged_terms():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g)
    x_hat = torch.randn(2, 1, 8, 8, generator=g, requires_grad=True)
    mean, logvar = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    w = AutoencoderLossWeights(rec=1.0, kl=0.5, perceptual=0.1, freq=0.05, vq=2.0, rec_kind="mse")
    lpips_stub = HalfAbsDiff()
    total, terms = autoencoder_loss(x, x_hat, w, posterior_mean=mean, posterior_logvar=logvar,
                                    vq_loss=torch.tensor(0.7), perceptual=lpips_stub)
    assert set(terms) == {"rec", "kl", "perceptual", "freq", "vq", "total"}
    assert lpips_stub.channels == 3  # grayscale repeated to RGB
    assert terms["rec"].item() == pytest.approx((x - x_hat).pow(2).mean().item(), rel=1e-6)
    assert terms["kl"].item() == pytest.approx(kl_loss(mean, logvar).item(), rel=1e-6)
    assert terms["perceptual"].item() == pytest.approx(0.5 * (x - x_hat).abs().mean().item(), rel=1e-6)
    weighted = sum(getattr(w, k) * terms[k].item() for k in ("rec", "kl", "perceptual", "freq", "vq"))
    assert total.item() == pytest.approx(weighted, rel=1e-6)
    assert terms["total"].item() == pytest.approx(total.item())
    total.backward()
    assert x_hat.grad is not None and not terms["rec"].requires_grad  # logged terms are detached


def test_autoencoder_loss_skips_absent_terms():
    x = torch.zeros(1, 3, 4, 4)
    total, terms = autoencoder_loss(x, x + 1.0, AutoencoderLossWeights())
    assert set(terms) == {"rec", "freq", "total"}
    # L1 = 1; only the DC term differs: ortho FFT gives 1·√16 = 4 there, so the mean square is 4²/16 = 1.
    assert total.item() == pytest.approx(1.0 * 1.0 + 0.05 * (4.0**2 / 16), rel=1e-6)
    with pytest.raises(ValueError, match="both posterior_mean and posterior_logvar"):
        autoencoder_loss(x, x, AutoencoderLossWeights(), posterior_mean=x)


def test_perceptual_loss_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="1 or 3 image channels"):
        perceptual_loss(HalfAbsDiff(), torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4))


def test_perceptual_loss_is_off_without_lpips(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` raise ImportError
    with caplog.at_level(logging.INFO, logger="tinyldm.losses"):
        assert load_perceptual_loss("cpu") is None
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "\n" not in line and 'pip install -e ".[perceptual]"' in line and "download" in line


def test_perceptual_loss_is_off_when_its_weights_cannot_be_downloaded(monkeypatch, caplog):
    def offline_lpips(**kwargs):
        raise OSError("no network")

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=offline_lpips))
    with caplog.at_level(logging.INFO, logger="tinyldm.losses"):
        assert load_perceptual_loss("cpu") is None
    assert len(caplog.records) == 1 and "no network" in caplog.records[0].getMessage()


def test_perceptual_module_is_frozen_and_in_eval_mode(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=lambda **kwargs: nn.Linear(2, 2)))
    module = load_perceptual_loss("cpu")
    assert not module.training and not any(p.requires_grad for p in module.parameters())
