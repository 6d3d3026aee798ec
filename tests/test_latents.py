"""The latent transform between the stages (tinyldm/latents.py): the two functions invert each other, the scale
estimator gives unit variance, and both scripts use them."""

import ast
from pathlib import Path

import pytest
import torch

from tinyldm.latents import measure_scale, scale_latents, unscale_latents

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("scale, shift", [(0.18215, 0.0), (0.3611, 0.1159), (2.0, -1.5)])
def test_scale_and_unscale_invert_each_other_with_the_stated_formula(scale, shift):
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z0 = scale_latents(z, scale, shift)
    assert torch.allclose(z0, (z - shift) * scale)
    assert torch.allclose(unscale_latents(z0, scale, shift), z)


def test_measure_scale_makes_latents_unit_variance():
    z = 3.7 + 0.42 * torch.randn(64, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    scale = measure_scale(z)
    assert scale == pytest.approx(1 / 0.42, rel=0.01)
    assert (z * scale).double().std().item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("script, names", [("train_vae.py", {"measure_scale"}),
                                           ("train_ldm.py", {"measure_scale", "scale_latents"}),
                                           ("tinyldm/generate.py", {"unscale_latents"})])
def test_the_scripts_go_through_the_one_transform(script, names):
    """No second home for the scale: each script imports the functions from tinyldm.latents and calls them."""
    tree = ast.parse((ROOT / script).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "tinyldm.latents"
                for a in n.names}
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert names <= imported & called


def test_decoding_in_passes_is_decoding_each_latent_alone():
    # generate.decode_latents decodes at most DECODE_BATCH latents per pass: the images, in order, are those of
    # one latent at a time (the decoder treats each image on its own; GroupNorm is per image).
    from tinyldm.generate import DECODE_BATCH, decode_latents
    from tinyldm.loading import autoencoder_config, build_autoencoder
    from tinyldm.runs import inference_autocast

    torch.manual_seed(0)
    vae = build_autoencoder("kl", autoencoder_config("kl", "tiny")).eval()
    z0 = torch.randn(DECODE_BATCH + 3, 4, 8, 8)
    with torch.no_grad():
        x = decode_latents(vae, z0, 0.5, 0.1)
        with inference_autocast("cpu"):  # the precision decode_latents runs in on this CPU
            alone = torch.cat([vae.decode_latent(unscale_latents(z[None], 0.5, 0.1)) for z in z0])
        in_float32 = torch.cat([vae.decode_latent(unscale_latents(z[None], 0.5, 0.1)) for z in z0])
    assert x.shape == (DECODE_BATCH + 3, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x, alone.float().clamp(-1, 1), atol=1e-5)
    # bf16 (where the CPU has it) keeps ~3 significant digits: the images stay within a few uint8 levels of float32's.
    assert (x - in_float32.clamp(-1, 1)).abs().max() < 4 / 127.5


def test_the_frozen_autoencoder_in_channels_last_gives_the_same_images_and_contiguous_tensors():
    # inference_layout only changes the weights' memory layout: float32 values agree to round-off, bf16 ones within a
    # few uint8 levels, and what decode_latents returns is laid out as an image read from a PNG is.
    import copy

    from tinyldm.generate import decode_latents
    from tinyldm.loading import autoencoder_config, build_autoencoder, inference_layout

    torch.manual_seed(0)
    vae = build_autoencoder("kl", autoencoder_config("kl", "tiny")).eval()
    fast = inference_layout(copy.deepcopy(vae))
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in fast.parameters() if w.dim() == 4)
    x, z0 = torch.rand(3, 3, 16, 16) * 2 - 1, torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast.decode_latent(z0), vae.decode_latent(z0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast.latent_moments(x)[0], vae.latent_moments(x)[0], atol=1e-5, rtol=1e-5)
        images = decode_latents(fast, z0, 0.5, 0.1)  # in bf16 where the CPU has it
        assert images.is_contiguous() and (images - decode_latents(vae, z0, 0.5, 0.1)).abs().max() < 8 / 127.5


def test_inference_runs_in_bf16_exactly_where_training_would():
    from tinyldm.runs import autocast_dtype, inference_autocast

    conv = torch.nn.Conv2d(3, 3, 3)
    with torch.no_grad(), inference_autocast("cpu"):
        out = conv(torch.randn(1, 3, 8, 8))
    assert out.dtype == (autocast_dtype(torch.device("cpu"), "auto") or torch.float32)
