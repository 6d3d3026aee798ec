"""AutoencoderKL: shapes, the Stable Diffusion parameter count, the Gaussian posterior, save → load."""

import math

import pytest
import torch

from tinyldm.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian
from tinyldm.runs import atomic_save_weights, load_weights

SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
              layers_per_block=2, act_fn="silu", norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)


def test_seed_config_matches_stable_diffusion_vae():
    with torch.device("meta"):  # no memory, no compute: shapes only
        model = AutoencoderKL(**SD_VAE)
        z = model.encode(torch.empty(1, 3, 256, 256)).sample()
        x = model.decode(z)
    assert sum(p.numel() for p in model.parameters()) == 83_653_863
    assert z.shape == (1, 4, 32, 32)
    assert x.shape == (1, 3, 256, 256)
    assert model.config.downsample_factor == 8


def test_tiny_preset_shapes_and_gradients():
    torch.manual_seed(0)
    model = AutoencoderKL.from_preset("tiny")
    x = torch.randn(2, 3, 64, 64)
    x_hat, posterior = model(x)
    assert posterior.mean.shape == (2, 4, 32, 32)  # f = 2
    assert x_hat.shape == x.shape
    ((x_hat - x).abs().mean() + posterior.kl().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_gray_images():
    model = AutoencoderKL.from_preset("tiny", in_channels=1, out_channels=1)
    assert model(torch.randn(1, 1, 64, 64))[0].shape == (1, 1, 64, 64)


def test_diagonal_gaussian_kl_and_sampling():
    # μ = 1, log σ² = 0 → ½(1 + 1 − 1 − 0) = 0.5 per element; μ = 0, σ² = 4 → ½(4 − 1 − log 4) per element.
    mean = torch.ones(2, 3, 2, 2)
    moments = torch.cat([mean, torch.zeros_like(mean)], dim=1)
    assert torch.allclose(DiagonalGaussian(moments).kl(), torch.full((2,), 0.5 * 12))
    moments = torch.cat([torch.zeros_like(mean), torch.full_like(mean, math.log(4.0))], dim=1)
    assert torch.allclose(DiagonalGaussian(moments).kl(), torch.full((2,), 0.5 * (4 - 1 - math.log(4)) * 12))
    # Sampling: z = μ + σ ε has mean μ and std σ.
    moments = torch.cat([torch.full((1, 1, 200, 200), 2.0), torch.full((1, 1, 200, 200), math.log(0.25))], dim=1)
    z = DiagonalGaussian(moments).sample(torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.01 and abs(z.std().item() - 0.5) < 0.01
    # log-variance is clamped to [−30, 20].
    extreme = DiagonalGaussian(torch.cat([mean, torch.full_like(mean, 100.0)], dim=1))
    assert extreme.logvar.max().item() == 20.0


def test_save_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = AutoencoderKL.from_preset("tiny").eval()
    atomic_save_weights(tmp_path / "model.safetensors", model.state_dict())
    clone = AutoencoderKL(AutoencoderKLConfig(**vars(model.config))).eval()
    clone.load_state_dict(load_weights(tmp_path / "model.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, sample_posterior=False)[0], clone(x, sample_posterior=False)[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_out_channels=[128, 200], norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 2,
          up_block_types=["UpDecoderBlock2D"] * 2), "200 is not divisible by norm_num_groups 32"),
    (dict(block_out_channels=[64, 64], down_block_types=["DownEncoderBlock2D"] * 3), "give one per level"),
    (dict(act_fn="tanh"), "act_fn 'tanh' is not supported"),
    (dict(down_block_types=["CrossAttnDownBlock2D"] * 4), "only 'DownEncoderBlock2D'"),
])
def test_bad_configs_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderKL(**kwargs)


def test_latent_interface_is_the_posterior_and_the_decoder():
    torch.manual_seed(0)
    vae = AutoencoderKL.from_preset("tiny", sample_size=16).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, std = vae.latent_moments(x)
    posterior = vae.encode(x)
    assert torch.equal(mean, posterior.mean) and torch.equal(std, posterior.std)
    assert torch.equal(vae.decode_latent(mean), vae.decode(mean))
