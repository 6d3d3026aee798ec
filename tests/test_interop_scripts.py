"""The scripts with diffusers-format folders: train_ldm.py --vae on a diffusers autoencoder (its scale and shift, the
latent cache keyed by its weights, sample.py decoding with it), train_vae.py --init, `python -m tinyldm.interop.export`
and what it writes, runs written before all this, and bad input. diffusers is imported only by the one test that
compares with it live."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train_vae import make_folder

import sample as sample_script
import train_ldm
import train_vae
from tinyldm import AutoencoderKL, DiT, UNet2DConditionModel
from tinyldm.data import UserImageFolder
from tinyldm.diffusion import Schedule
from tinyldm.generate import decode_latents
from tinyldm.interop.diffusers_grids import diffusers_grid, diffusers_schedule
from tinyldm.interop.export import main as export_main
from tinyldm.interop.pretrained import WEIGHTS
from tinyldm.loading import load_autoencoder, load_ldm, load_run_vae
from tinyldm.runs import autocast_dtype, file_sha256, inference_autocast, load_weights

FIXTURES = Path(__file__).parent / "fixtures" / "diffusers"
LDM = ["--batch-size", "4", "--grad-accum", "2", "--sample-every", "1000", "--ckpt-every", "1000"]
SCALE, SHIFT = 0.9, 0.1  # the test autoencoder's own latent normalisation, not tinyldm's defaults


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 users × 8 images of 16×16 (the diffusers test autoencoders' sample_size)."""
    return make_folder(tmp_path_factory.mktemp("interop") / "data", users=3, per_user=8, size=16)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A pipeline folder whose vae/ is a diffusers AutoencoderKL (16×16 → 8×8×4) with a shift_factor, written by
    tinyldm's save_pretrained."""
    root = tmp_path_factory.mktemp("interop") / "pipeline"
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, sample_size=16,
                        latent_channels=4, scaling_factor=SCALE, shift_factor=SHIFT,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    vae.save_pretrained(root / "vae")
    return root


@pytest.fixture(scope="module")
def runs(pipeline, data, tmp_path_factory):
    """Two finished stage-2 runs on the diffusers autoencoder: a UNet (VP, v-prediction, scaled-linear β) and a
    DiT (rectified flow, shift 3)."""
    root = tmp_path_factory.mktemp("interop")
    common = ["--vae", str(pipeline), "--data", str(data), "--max-steps", "2", *LDM]
    assert train_ldm.main(["--backbone", "unet", "--prediction", "v", "--schedule", "scaled_linear",
                           "--out", str(root / "unet"), *common]) == 0
    assert train_ldm.main(["--backbone", "dit", "--prediction", "flow", "--flow-shift", "3", "--patch-size", "2",
                           "--out", str(root / "dit"), *common]) == 0
    return {"unet": root / "unet", "dit": root / "dit"}


def one_line_error(capsys, main, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- train_ldm.py --vae on a diffusers folder, and sample.py ---------------------------------------------------------

def test_stage_2_on_a_diffusers_vae_uses_its_scale_and_shift_and_sample_decodes_with_it(pipeline, data, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("TINYLDM_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "ldm"
    assert train_ldm.main(["--vae", str(pipeline), "--data", str(data), "--out", str(run), "--patch-size", "2",
                           "--max-steps", "2", *LDM]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["vae"] == str(pipeline) and cfg["vae_source"]["format"] == "diffusers"
    assert cfg["vae_source"]["folder"] == str(pipeline / "vae")
    assert cfg["vae_source"]["sha256"] == file_sha256(pipeline / "vae" / WEIGHTS)
    assert (cfg["scaling_factor"], cfg["shift_factor"]) == (SCALE, SHIFT)
    assert cfg["latent_shape"] == [4, 8, 8] and (cfg["image_size"], cfg["channels"]) == (16, 3)
    assert cfg["split"] == {"val_fraction": train_ldm.PRETRAINED_VAL_FRACTION, "seed": 0, "strict_size": False,
                            "aspect": "windows"}

    # The latents are cached outside the (possibly read-only) download. Stage 2's data is (z − shift)·scale, and
    # decoding it with the run's record gives back the autoencoder's decode of z.
    cache = load_file(str(next((tmp_path / "cache" / "latents").glob("*.safetensors"))))
    vae = load_run_vae(cfg)
    z = cache["mean"][:2]  # (2, 4, 8, 8)
    with torch.no_grad():
        with inference_autocast("cpu"):  # decode_latents' precision on this CPU (bf16 where it has the hardware)
            direct = vae.decode_latent(z).float().clamp(-1, 1)
        assert torch.allclose(decode_latents(vae, (z - SHIFT) * SCALE, cfg["scaling_factor"], cfg["shift_factor"]),
                              direct, atol=1e-5)

    out = tmp_path / "samples"
    assert sample_script.main(["--run", str(run), "--users", "0,2", "--n-per-user", "1", "--steps", "2",
                               "--out", str(out)]) == 0
    assert (out / "user_02" / "000.png").is_file() and (out / "real_vs_generated.png").is_file()


def test_the_latent_cache_key_follows_the_vae_weights(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYLDM_CACHE", str(tmp_path / "cache"))
    vae = tmp_path / "vae"
    shutil.copytree(FIXTURES / "kl", vae)  # a diffusers folder itself, not a pipeline
    args = ["--vae", str(vae), "--data", str(data), "--patch-size", "2", "--max-steps", "1", *LDM]
    assert train_ldm.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "latents: encoded" in capsys.readouterr().out
    assert train_ldm.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "latents: reused" in capsys.readouterr().out
    # Other weights under the same name and config: the latents are encoded again.
    state = load_file(str(vae / WEIGHTS))
    state["decoder.conv_out.bias"] = state["decoder.conv_out.bias"] + 0.5
    state["encoder.conv_in.bias"] = state["encoder.conv_in.bias"] + 0.5
    save_file(state, str(vae / WEIGHTS))
    assert train_ldm.main([*args, "--out", str(tmp_path / "c")]) == 0
    assert "latents: encoded" in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "latents").glob("*.safetensors"))) == 2
    # Sampling the run trained before the change says that the decoder is not the one it trained with.
    assert sample_script.main(["--run", str(tmp_path / "a"), "--users", "0", "--n-per-user", "1", "--steps", "1",
                               "--out", str(tmp_path / "s"), "--compare-real", "0"]) == 0
    assert "changed since this run was trained" in capsys.readouterr().out


def test_an_existing_tinyldm_vae_run_keeps_its_cache_and_older_runs_load_and_resume_exactly(data, tmp_path):
    vae = tmp_path / "vae"
    assert train_vae.main(["--data", str(data), "--out", str(vae), "--image-size", "16", "--batch-size", "4",
                           "--val-fraction", "0.25", "--max-steps", "2", "--perceptual-weight", "0"]) == 0
    common = ["--vae", str(vae), "--max-steps", "4", "--patch-size", "2", *LDM, "--ckpt-every", "2"]
    assert train_ldm.main([*common, "--out", str(tmp_path / "straight")]) == 0
    ldm_cfg = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert ldm_cfg["vae_source"]["format"] == "tinyldm" and ldm_cfg["shift_factor"] == 0.0
    assert ldm_cfg["split"] == {"val_fraction": 0.25, "seed": 0, "strict_size": False, "aspect": "windows"}
    # The cache key is computed as before diffusers autoencoders (written out here as it was), so the caches users
    # already have stay valid; a CPU that encodes in bf16 (inference_autocast) prefixes one line, since its latents
    # differ from float32's.
    vae_cfg = json.loads((vae / "config.json").read_text())
    h = hashlib.sha256(b"bf16 autocast\n" if autocast_dtype(torch.device("cpu"), "auto") else b"")
    h.update(file_sha256(vae / "model.safetensors").encode())
    h.update(json.dumps({"model_type": vae_cfg["model_type"], "model": vae_cfg["model"]}, sort_keys=True).encode())
    split = {"image_size": 16, "channels": 3, "val_fraction": 0.25, "seed": 0}
    for path, user, _ in UserImageFolder(data, split="train", **split).samples:
        st = Path(path).stat()
        h.update(f"{path}|{user}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(split, sort_keys=True).encode())
    assert [p.name for p in (vae / "latent_cache").glob("*.safetensors")] == [f"{h.hexdigest()[:16]}.safetensors"]

    # A run written before "vae_source", "shift_factor" and "split" existed resumes exactly and samples.
    def as_older(run: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        for key in ("vae_source", "shift_factor", "split"):
            del cfg[key]
        del cfg["args"]["image_size"]
        (run / "config.json").write_text(json.dumps(cfg))

    old = tmp_path / "old"
    assert train_ldm.main([*common, "--out", str(old), "--stop-after", "2"]) == 0
    as_older(old)
    assert train_ldm.main(["--resume", str(old)]) == 0
    assert weights_equal(load_weights(tmp_path / "straight" / "ema.safetensors"), load_weights(old / "ema.safetensors"))
    as_older(old)
    assert sample_script.main(["--run", str(old), "--users", "1", "--n-per-user", "1", "--steps", "2",
                               "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "real_vs_generated.png").is_file()  # the split read from the autoencoder run


# ---- train_vae.py --init ---------------------------------------------------------------------------------------------

def test_train_vae_init_fine_tunes_a_diffusers_autoencoder(data, tmp_path, capsys):
    pretrained = AutoencoderKL.from_pretrained(FIXTURES / "kl16")  # 16 latent channels, no quant convs, a shift
    run = tmp_path / "ft"
    argv = ["--init", str(FIXTURES / "kl16"), "--data", str(data), "--out", str(run), "--batch-size", "4",
            "--val-fraction", "0.25", "--perceptual-weight", "0", "--lr", "1e-9", "--warmup", "0"]
    assert train_vae.main([*argv, "--max-steps", "2", "--stop-after", "1"]) == 0
    assert "fine-tuning the pretrained autoencoder" in capsys.readouterr().out
    assert train_vae.main(["--resume", str(run)]) == 0  # the architecture comes back from the run's config.json
    cfg = json.loads((run / "config.json").read_text())
    theirs = pretrained.config
    assert cfg["model_type"] == "kl" and cfg["model"]["latent_channels"] == 16 and not cfg["model"]["use_quant_conv"]
    assert cfg["model"]["block_out_channels"] == theirs.block_out_channels
    assert cfg["model"]["shift_factor"] == theirs.shift_factor and cfg["data"]["image_size"] == theirs.sample_size
    model, _ = load_autoencoder(run)
    ours = model.state_dict()  # two Adam steps of lr 1e-9 from the pretrained weights
    assert all(torch.allclose(ours[k], v, atol=1e-6) for k, v in pretrained.state_dict().items())

    # The fine-tuned run is a stage-1 run like any other, shift included.
    assert train_ldm.main(["--vae", str(run), "--out", str(tmp_path / "ldm"), "--patch-size", "2", "--max-steps",
                           "1", *LDM]) == 0
    assert json.loads((tmp_path / "ldm" / "config.json").read_text())["shift_factor"] == theirs.shift_factor

    # Architecture flags may repeat the pretrained model's, never change it.
    base = ["--init", str(FIXTURES / "kl16"), "--data", str(data), "--out", str(tmp_path / "x")]
    assert train_vae.main([*base, "--latent-channels", "16", "--channels", "3", "--max-steps", "1", "--batch-size",
                           "4", "--perceptual-weight", "0"]) == 0
    msg = one_line_error(capsys, train_vae.main, [*base, "--latent-channels", "4"])
    assert "--latent-channels 4 conflicts with --init" in msg and "16" in msg
    assert "--block-out-channels 8,16 conflicts" in one_line_error(
        capsys, train_vae.main, [*base, "--block-out-channels", "8,16"])
    assert "--model vq conflicts" in one_line_error(capsys, train_vae.main, [*base, "--model", "vq"])
    assert "--channels 1 conflicts" in one_line_error(capsys, train_vae.main, [*base, "--channels", "1"])
    assert "describes a diffusers UNet2DConditionModel" in one_line_error(
        capsys, train_vae.main, ["--init", str(FIXTURES / "unet"), "--data", str(data), "--out", str(tmp_path / "y")])


# ---- python -m tinyldm.interop.export ---------------------------------------------------------------------------

def test_export_writes_folders_that_load_back_equal_and_a_matching_scheduler(runs, pipeline, tmp_path, capsys):
    out = tmp_path / "unet"
    assert export_main(["--run", str(runs["unet"]), "--out", str(out)]) == 0
    model, cfg = load_ldm(runs["unet"])
    assert weights_equal(UNet2DConditionModel.from_pretrained(out / "unet").state_dict(), model.state_dict())
    vae = AutoencoderKL.from_pretrained(out / "vae")
    assert weights_equal(vae.state_dict(), AutoencoderKL.from_pretrained(pipeline / "vae").state_dict())
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (cfg["scaling_factor"], cfg["shift_factor"])

    # The scheduler has the run's β schedule and prediction, and tinyldm reproduces it step for step.
    sc = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sc["_class_name"] == "DPMSolverMultistepScheduler" and sc["prediction_type"] == "v_prediction"
    ours = Schedule.from_config(cfg["schedule"])
    assert torch.equal(diffusers_schedule(sc["_class_name"], **sc).alphas_cumprod, ours.alphas_cumprod)
    grid = diffusers_grid(sc["_class_name"], 10, ours, **sc)
    assert (grid.sampler, grid.prediction) == ("dpmpp_2m", "v")
    index = json.loads((out / "model_index.json").read_text())
    assert {k: v[1] for k, v in index.items() if isinstance(v, list)} == {
        "unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "scheduler": "DPMSolverMultistepScheduler"}

    # Another scheduler, and the raw weights.
    out = tmp_path / "unet_ddim"
    assert export_main(["--run", str(runs["unet"]), "--out", str(out), "--scheduler", "DDIMScheduler", "--weights",
                        "model"]) == 0
    sc = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert diffusers_grid("DDIMScheduler", 10, ours, **sc).sampler == "ddim"
    raw, _ = load_ldm(runs["unet"], weights="model")
    assert weights_equal(UNet2DConditionModel.from_pretrained(out / "unet").state_dict(), raw.state_dict())


def test_export_of_a_dit_says_the_timestep_is_approximate_and_writes_a_flow_scheduler(runs, tmp_path, capsys):
    out = tmp_path / "dit"
    msg = one_line_error(capsys, export_main, ["--run", str(runs["dit"]), "--out", str(out)])
    assert "timestep_freq_shift 0" in msg and "--approximate-timestep" in msg
    assert not out.exists()  # refused before anything is written
    assert export_main(["--run", str(runs["dit"]), "--out", str(out), "--approximate-timestep"]) == 0
    assert "notice: --approximate-timestep" in capsys.readouterr().out
    model, cfg = load_ldm(runs["dit"])
    back = DiT.from_pretrained(out / "transformer")
    assert back.config.timestep_freq_shift == 1.0  # diffusers' DiT, as diffusers will run it
    assert weights_equal(back.state_dict(), model.state_dict())
    sc = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sc["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert {k: sc[k] for k in ("shift", "num_train_timesteps")} == {"shift": 3.0, "num_train_timesteps": 1000}
    assert cfg["schedule"] == {"kind": "flow", "shift": 3.0, "num_train_timesteps": 1000}
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline" and list(index["id2label"].values()) == cfg["classes"]
    msg = one_line_error(capsys, export_main, ["--run", str(runs["dit"]), "--out", str(tmp_path / "x"),
                                               "--approximate-timestep", "--scheduler", "DDIMScheduler"])
    assert "rectified-flow run" in msg


def test_export_refuses_what_diffusers_cannot_hold_in_one_line(pipeline, data, runs, tmp_path, capsys):
    common = ["--vae", str(pipeline), "--data", str(data), "--max-steps", "1", "--patch-size", "2", *LDM]
    assert train_ldm.main(["--backbone", "mmdit", "--out", str(tmp_path / "mmdit"), *common]) == 0
    msg = one_line_error(capsys, export_main, ["--run", str(tmp_path / "mmdit"), "--out", str(tmp_path / "a")])
    assert "MMDiT" in msg
    assert train_ldm.main(["--backbone", "dit", "--cond", "tokens", "--out", str(tmp_path / "tokens"), *common]) == 0
    msg = one_line_error(capsys, export_main, ["--run", str(tmp_path / "tokens"), "--out", str(tmp_path / "b"),
                                               "--approximate-timestep"])
    assert "cond_type 'tokens' has no diffusers" in msg
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    msg = one_line_error(capsys, export_main, ["--run", str(runs["unet"]), "--out", str(other)])
    assert "holds other files" in msg
    msg = one_line_error(capsys, export_main, ["--run", str(runs["unet"]), "--out", str(tmp_path / "c"),
                                               "--scheduler", "PNDMScheduler"])
    assert "DPMSolverMultistepScheduler" in msg
    assert "not a tinyldm run" in one_line_error(capsys, export_main, ["--run", str(tmp_path), "--out",
                                                                       str(tmp_path / "d")])


# ---- bad input to train_ldm.py ---------------------------------------------------------------------------------------

def test_train_ldm_explains_a_vae_it_cannot_use(pipeline, data, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run"), "--max-steps", "1", *LDM]
    msg = one_line_error(capsys, train_ldm.main, ["--vae", str(pipeline), *out])
    assert "names no training data" in msg and "--data" in msg
    msg = one_line_error(capsys, train_ldm.main, ["--vae", str(pipeline), "--data", str(data), "--image-size", "15",
                                                  *out])
    assert "not a multiple of the autoencoder's downsampling factor 2" in msg and "14 or 16" in msg
    msg = one_line_error(capsys, train_ldm.main, ["--vae", str(FIXTURES / "unet"), "--data", str(data), *out])
    assert "describes a diffusers UNet2DConditionModel" in msg
    msg = one_line_error(capsys, train_ldm.main, ["--vae", str(tmp_path / "nothing"), "--data", str(data), *out])
    assert "nothing does not exist" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "neither a train_vae.py run folder nor a diffusers" in one_line_error(
        capsys, train_ldm.main, ["--vae", str(empty), "--data", str(data), *out])
    four = tmp_path / "four"
    AutoencoderKL(in_channels=4, out_channels=4, block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4,
                  sample_size=16, down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2).save_pretrained(four)
    msg = one_line_error(capsys, train_ldm.main, ["--vae", str(four), "--data", str(data), *out])
    assert "reads 4-channel images" in msg


# ---- with diffusers itself, where it is installed --------------------------------------------------------------------

def test_diffusers_loads_the_export_and_computes_the_same(runs, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    out = tmp_path / "unet"
    assert export_main(["--run", str(runs["unet"]), "--out", str(out)]) == 0
    model, cfg = load_ldm(runs["unet"])
    vae = load_run_vae(cfg)
    unet = diffusers.UNet2DConditionModel.from_pretrained(out, subfolder="unet").eval()
    their_vae = diffusers.AutoencoderKL.from_pretrained(out, subfolder="vae").eval()
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(out, subfolder="scheduler")
    x, t, y = torch.randn(2, *cfg["latent_shape"]), torch.tensor([3.0, 800.0]), torch.tensor([0, 3])
    with torch.no_grad():
        one_hot = torch.nn.functional.one_hot(y, unet.config.encoder_hid_dim).float()[:, None]  # (B, 1, N + 1)
        theirs = unet(x, t, encoder_hidden_states=one_hot, class_labels=unet.encoder_hid_proj(one_hot)[:, 0]).sample
        assert torch.allclose(theirs, model(x, t, y), atol=1e-5)
        decoded = their_vae.decode(x / their_vae.config.scaling_factor + their_vae.config.shift_factor).sample
        assert torch.allclose(decoded, vae.decode_latent(x / cfg["scaling_factor"] + cfg["shift_factor"]), atol=1e-5)
    ours = Schedule.from_config(cfg["schedule"]).alphas_cumprod
    assert torch.allclose(scheduler.alphas_cumprod.double(), ours, atol=1e-6)
