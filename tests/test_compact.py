"""The users' 256×256 setting (the compact preset) wired through every stage, on small stand-ins: the f = 8
autoencoder's shapes, the shared data folder, both training scripts, the demo's folders, the classifier's
thumbnails, the grid's thumbnails, and the start-up malloc setting."""

import json
import platform

import pytest
import torch
from PIL import Image
from test_train_vae import make_folder

import demo
import sample as sample_script
import train_ldm
import train_vae
from tinyldm.evaluation.classifier import ClassifierConfig, UserClassifier, shrink
from tinyldm.loading import autoencoder_config, build_autoencoder
from tinyldm.malloc import keep_freed_memory
from tinyldm.viz import thumbnails


def test_the_compact_autoencoder_maps_256_images_to_the_seeds_32x32x4_latents():
    cfg = autoencoder_config("kl", "compact")
    vae = build_autoencoder("kl", cfg).eval()
    assert vae.config.downsample_factor == 8 and cfg["sample_size"] == 256 and not cfg["mid_block_add_attention"]
    with torch.no_grad():
        mean, _ = vae.latent_moments(torch.zeros(1, 3, 256, 256))
        assert mean.shape == (1, 4, 32, 32)  # the seed UNet's sample_size=32, in_channels=4
        assert vae.decode_latent(mean).shape == (1, 3, 256, 256)
    params = sum(p.numel() for p in vae.parameters())
    assert params < 5e6  # a CPU model: the SD VAE (the seed preset) has 83.7 M


def test_compact_and_seed_share_one_data_folder(tmp_path, monkeypatch, capsys):
    import tinyldm.data.datasets as datasets

    monkeypatch.setattr(datasets, "PRESETS", {**datasets.PRESETS, "compact": (2, 2, 16), "seed": (2, 2, 16)})
    out = datasets.default_data_dir("compact", root=tmp_path, workers=1)
    assert out == tmp_path / "microdoppler-v1-seed" and "generating" in capsys.readouterr().out
    assert datasets.default_data_dir("seed", root=tmp_path) == out
    assert "generating" not in capsys.readouterr().out  # the second preset reuses the first one's images


@pytest.fixture(scope="module")
def compact_vae(tmp_path_factory):
    """The compact autoencoder (f = 8) trained 2 steps on 3 users' 64×64 stripes: 8×8×4 latents."""
    tmp = tmp_path_factory.mktemp("compact")
    data = make_folder(tmp / "data", users=3, per_user=8, size=64)
    run = tmp / "vae"
    rc = train_vae.main(["--preset", "compact", "--data", str(data), "--out", str(run), "--image-size", "64",
                         "--batch-size", "4", "--val-fraction", "0.25", "--max-steps", "2"])
    assert rc == 0
    return run


@pytest.mark.parametrize("backbone", ["unet", "mmdit"])
def test_the_other_backbones_train_on_the_compact_latents(compact_vae, tmp_path, backbone):
    run = tmp_path / "ldm"
    rc = train_ldm.main(["--preset", "compact", "--backbone", backbone, "--vae", str(compact_vae), "--out", str(run),
                         "--max-steps", "2", "--batch-size", "4", "--sample-every", "1000", "--ckpt-every", "1000"])
    assert rc == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["backbone"] == backbone and cfg["latent_shape"] == [4, 8, 8]


def test_train_vae_train_ldm_and_sample_run_the_compact_preset(compact_vae, tmp_path):
    vae_run = compact_vae
    cfg = json.loads((vae_run / "config.json").read_text())
    assert cfg["model"]["block_out_channels"] == [16, 32, 64, 128] and cfg["args"]["crop_size"] == 64
    ldm_run = tmp_path / "ldm"
    rc = train_ldm.main(["--preset", "compact", "--vae", str(vae_run), "--out", str(ldm_run), "--max-steps", "2",
                         "--batch-size", "4", "--sample-every", "1000", "--ckpt-every", "1000"])
    assert rc == 0
    ldm = json.loads((ldm_run / "config.json").read_text())
    assert ldm["latent_shape"] == [4, 8, 8] and ldm["backbone_config"]["hidden_size"] == 128  # tiny's DiT
    out = tmp_path / "samples"
    assert sample_script.main(["--run", str(ldm_run), "--n-per-user", "2", "--steps", "2", "--out", str(out)]) == 0
    grid = Image.open(out / "grid.png")
    assert Image.open(out / "user_00" / "000.png").size == (64, 64)
    assert grid.height < 3 * (64 + 2) + 8  # 3 users' rows of 64 px images (no thumbnails needed at 64 px)


def test_spread_takes_every_user_of_a_sorted_split():
    x = torch.arange(10)
    assert train_vae.spread(x, 4).tolist() == [0, 3, 6, 9] and train_vae.spread(x, 20).tolist() == list(range(10))


@pytest.mark.parametrize("preset,family,out", [("tiny", "walking", "runs/demo"),
                                               ("tiny", "activities", "runs/demo-activities"),
                                               ("compact", "walking", "runs/demo-256"),
                                               ("compact", "activities", "runs/demo-256-activities")])
def test_the_demo_names_its_folder_after_preset_and_family(preset, family, out):
    assert str(demo.default_out(preset, family)) == out


def test_the_classifier_sees_larger_images_as_64_pixel_thumbnails():
    config = ClassifierConfig(num_classes=3, image_size=256, input_size=64)
    model = UserClassifier(config).eval()
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    small = x.reshape(2, 3, 64, 4, 64, 4).mean(dim=(3, 5))  # each pixel the mean of its 4×4 block
    assert torch.allclose(shrink(x, 64), small, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(model.features(x), model.features(small), atol=1e-5)
    assert model.embed.in_features == config.widths[-1] * 64 // 2 ** len(config.widths)  # sized for S = 64
    assert ClassifierConfig(num_classes=3, image_size=32).size == 32  # no input_size: the images' own size


def test_thumbnails_average_blocks_and_keep_small_images():
    x = torch.rand(2, 3, 256, 128) * 2 - 1
    t = thumbnails(x, 64)
    assert t.shape == (2, 3, 64, 32)
    assert torch.allclose(t, x.reshape(2, 3, 64, 4, 32, 4).mean(dim=(3, 5)), atol=1e-6)
    small = torch.rand(1, 3, 64, 64)
    assert thumbnails(small, 64) is small


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_is_accepted_by_glibc_and_can_be_repeated():
    assert keep_freed_memory() and keep_freed_memory()
