"""Stage 2 end to end on a tiny autoencoder: train_ldm.py and sample.py, caching, DDP parity, crash + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_vae import make_folder

import sample as sample_script
import train_ldm
import train_vae
from tinyldm.runs import load_weights

ROOT = Path(__file__).resolve().parents[1]
LDM = ["--batch-size", "4", "--grad-accum", "2", "--sample-every", "1000", "--ckpt-every", "1000"]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A tiny KL autoencoder (32×32 → 16×16×4, f = 2) trained for a few steps on 3 users' stripes."""
    tmp = tmp_path_factory.mktemp("stage2")
    data = make_folder(tmp / "data", users=3, per_user=8, size=32)
    run = tmp / "vae"
    rc = train_vae.main(["--data", str(data), "--out", str(run), "--image-size", "32", "--batch-size", "4",
                         "--val-fraction", "0.25", "--max-steps", "4"])
    assert rc == 0
    return run


def weights_equal(a: Path, b: Path, atol: float = 0.0) -> bool:
    wa, wb = load_weights(a), load_weights(b)
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=atol, rtol=0) for k in wa)


@pytest.mark.parametrize("backbone", ["dit", "unet", "mmdit"])
def test_train_then_sample_end_to_end(vae_run, tmp_path, backbone):
    run = tmp_path / "ldm"
    rc = train_ldm.main(["--backbone", backbone, "--vae", str(vae_run), "--out", str(run), "--max-steps", "3", *LDM])
    assert rc == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["backbone"] == backbone and cfg["latent_shape"] == [4, 16, 16] and cfg["num_classes"] == 3
    for name in ("model.safetensors", "ema.safetensors", "loss_curves.png", "samples/grid_step_000003.png"):
        assert (run / name).is_file(), name
    out = tmp_path / "samples"
    argv = ["--run", str(run), "--users", "0,2", "--n-per-user", "2", "--steps", "4", "--out", str(out),
            "--trajectory", "--seed", "7"]
    assert sample_script.main(argv) == 0
    for f in ("user_00/000.png", "user_00/001.png", "user_02/001.png", "grid.png", "trajectory.png"):
        assert (out / f).is_file(), f
    first = (out / "user_02" / "001.png").read_bytes()
    assert sample_script.main(argv) == 0  # same seed → same images
    assert (out / "user_02" / "001.png").read_bytes() == first
    assert sample_script.main([*argv[:-1], "8", "--overwrite"]) == 0  # another seed → other images
    assert (out / "user_02" / "001.png").read_bytes() != first


def test_a_flow_run_samples_with_euler_heun_and_dpm_solver_pp_through_sample_py(vae_run, tmp_path):
    # Euler and Heun step in t on a flow schedule, so they start at t = 1 (their convergence orders from t = 1
    # are in test_diffusion_convergence.py); sample.py needs no flag for it.
    run = tmp_path / "flow"
    assert train_ldm.main(["--backbone", "mmdit", "--vae", str(vae_run), "--out", str(run), "--max-steps", "2",
                           *LDM]) == 0
    assert json.loads((run / "config.json").read_text())["schedule"]["kind"] == "flow"
    for sampler in ("euler", "heun", "dpmpp_2m"):
        out = tmp_path / sampler
        assert sample_script.main(["--run", str(run), "--users", "1", "--n-per-user", "1", "--steps", "3",
                                   "--sampler", sampler, "--out", str(out)]) == 0
        assert (out / "user_01" / "000.png").is_file()


@pytest.mark.parametrize("backbone,prediction,schedule", [("mmdit", "eps", "vp"), ("mmdit", "v", "vp"),
                                                         ("unet", "flow", "flow"), ("dit", "flow", "flow")])
def test_any_backbone_trains_and_samples_with_any_objective(vae_run, tmp_path, backbone, prediction, schedule):
    run = tmp_path / "run"
    assert train_ldm.main(["--backbone", backbone, "--prediction", prediction, "--vae", str(vae_run), "--out",
                           str(run), "--max-steps", "1", *LDM]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["prediction"] == prediction and cfg["schedule"]["kind"] == schedule
    assert sample_script.main(["--run", str(run), "--users", "0", "--n-per-user", "1", "--steps", "2",
                               "--out", str(tmp_path / "s")]) == 0


def test_latent_cache_is_reused_and_invalidated(vae_run, tmp_path, capsys):
    args = ["--vae", str(vae_run), "--max-steps", "1", *LDM]
    assert train_ldm.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert train_ldm.main([*args, "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "latents: reused" in out
    # Change one image: the data changed, so the cache must be rebuilt.
    cfg = json.loads((vae_run / "config.json").read_text())
    image = sorted(Path(cfg["data"]["root"]).glob("user_01/*.png"))[0]
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert train_ldm.main([*args, "--out", str(tmp_path / "c")]) == 0
    assert "latents: encoded" in capsys.readouterr().out


def test_max_minutes_stops_on_the_training_clock_and_counts_across_resumes(vae_run, tmp_path, capsys):
    run = tmp_path / "timed"

    def train_s():
        return [json.loads(line)["train_s"] for line in (run / "log.jsonl").read_text().splitlines()]

    # A budget of ~0 is spent by the first step: one step, then a finished run (checkpoint, EMA weights, grid).
    assert train_ldm.main(["--vae", str(vae_run), "--out", str(run), "--max-steps", "50", "--max-minutes", "1e-9",
                           *LDM]) == 0
    assert "(--max-minutes 1e-09 spent)" in capsys.readouterr().out
    assert len(train_s()) == 1 and train_s()[0] > 0
    assert (run / "ema.safetensors").is_file() and (run / "samples" / "grid_step_000001.png").is_file()
    assert (run / "checkpoints" / "step_00000001").is_dir()
    # Resuming with the same budget trains nothing more: the clock is saved in the checkpoint.
    assert train_ldm.main(["--resume", str(run)]) == 0
    assert len(train_s()) == 1
    # A larger budget continues the same clock up to --max-steps.
    assert train_ldm.main(["--resume", str(run), "--max-minutes", "10", "--max-steps", "3"]) == 0
    times = train_s()
    assert len(times) == 3 and times == sorted(times) and times[0] > 0


def test_resume_is_exact_after_a_crash_during_a_checkpoint_write(vae_run, tmp_path, monkeypatch):
    common = ["--vae", str(vae_run), "--max-steps", "6", "--batch-size", "4", "--grad-accum", "2",
              "--sample-every", "1000", "--ckpt-every", "2"]
    assert train_ldm.main([*common, "--out", str(tmp_path / "straight")]) == 0
    # Die inside the second checkpoint write (step 4), after some of its files are renamed into place.
    real_replace, calls = os.replace, {"n": 0}

    def crashing_replace(src, dst):
        calls["n"] += 1
        if "step_00000004" in str(src) and calls["n"] > 1:
            raise KeyboardInterrupt("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        train_ldm.main([*common, "--out", str(tmp_path / "crashed")])
    monkeypatch.setattr(os, "replace", real_replace)
    torch.manual_seed(999)  # the resumed run must restore every RNG itself
    assert train_ldm.main(["--resume", str(tmp_path / "crashed")]) == 0
    for name in ("model.safetensors", "ema.safetensors", "guide.safetensors"):
        assert weights_equal(tmp_path / "straight" / name, tmp_path / "crashed" / name), name


def test_the_guide_is_the_ema_at_a_quarter_of_the_steps_and_survives_a_resume(vae_run, tmp_path):
    assert [train_ldm.guide_step(n) for n in (1, 3, 8, 2210, 4420)] == [1, 1, 2, 552, 1105]
    common = ["--vae", str(vae_run), "--max-steps", "8", *LDM, "--no-choose-guidance"]
    assert train_ldm.main([*common, "--out", str(tmp_path / "straight")]) == 0
    run = tmp_path / "stopped"
    assert train_ldm.main([*common, "--out", str(run), "--stop-after", "2"]) == 0  # guide_step(8) = 2
    assert weights_equal(run / "guide.safetensors", run / "ema.safetensors")  # the EMA weights at that step
    assert train_ldm.main(["--resume", str(run)]) == 0
    assert weights_equal(run / "guide.safetensors", tmp_path / "straight" / "guide.safetensors")
    assert not weights_equal(run / "guide.safetensors", run / "ema.safetensors")  # the end's EMA is another


def run_script(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def test_sigkill_then_resume_equals_uninterrupted(vae_run, tmp_path):
    common = ["train_ldm.py", "--vae", str(vae_run), "--max-steps", "10", "--batch-size", "4", "--grad-accum", "2",
              "--sample-every", "1000", "--ckpt-every", "1", "--no-choose-guidance"]
    straight = run_script([*common, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, *common, "--out", str(tmp_path / "killed")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not any(ckpts.glob("step_0000000[3-9]")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_script(["train_ldm.py", "--resume", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert weights_equal(tmp_path / "straight" / "ema.safetensors", tmp_path / "killed" / "ema.safetensors")


def test_two_process_ddp_equals_one_process(vae_run, tmp_path):
    common = ["--vae", str(vae_run), "--max-steps", "3", "--batch-size", "4", "--grad-accum", "2",
              "--sample-every", "1000", "--ckpt-every", "1000", "--device", "cpu", "--no-choose-guidance",
              "--precision", "fp32"]  # the DDP math to 1e-5; bf16 rounds the two batch splits differently
    one = run_script(["train_ldm.py", *common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_ldm.py", *common,
                      "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    assert weights_equal(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors", atol=1e-5)
    # --max-minutes: rank 0's clock decides for both ranks, so they stop at the same step (else they would hang).
    timed = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_ldm.py", *common,
                        "--max-minutes", "1e-9", "--out", str(tmp_path / "timed")])
    assert timed.returncode == 0, timed.stderr[-3000:]
    assert len((tmp_path / "timed" / "log.jsonl").read_text().splitlines()) == 1


def error_of(main, argv, capsys):
    capsys.readouterr()  # forget earlier output
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_gets_one_line(vae_run, tmp_path, capsys):
    # Data of another image size than the autoencoder's is read as train_vae.py reads it: resized, with a notice.
    other = make_folder(tmp_path / "other", users=3, per_user=8, size=48)
    assert train_ldm.main(["--vae", str(vae_run), "--data", str(other), "--out", str(tmp_path / "x"),
                           "--max-steps", "1", *LDM]) == 0
    assert "are 48×48 (aspect 1.00): resized to 32×32" in capsys.readouterr().out
    # A run to resume with another backbone.
    run = tmp_path / "dit"
    assert train_ldm.main(["--vae", str(vae_run), "--out", str(run), "--max-steps", "1", *LDM]) == 0
    msg = error_of(train_ldm.main, ["--resume", str(run), "--backbone", "unet"], capsys)
    assert "--backbone dit, not unet" in msg
    # A checkpoint whose weights belong to another backbone.
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "backbone": "unet", "backbone_config": {
        **json.loads(json.dumps(train_ldm.backbone_config("unet", "tiny", 4, 8, 3)))}}))
    assert "does not fit a unet" in error_of(sample_script.main, ["--run", str(run)], capsys)
    (run / "config.json").write_text(json.dumps(cfg))
    # Users, steps and samplers that do not exist.
    assert "ids must lie in 0…2" in error_of(sample_script.main, ["--run", str(run), "--users", "3"], capsys)
    assert "at least 1 sampling step" in error_of(sample_script.main, ["--run", str(run), "--steps", "0"], capsys)
    assert "choose one of" in error_of(sample_script.main, ["--run", str(run), "--sampler", "magic"], capsys)
    # A run folder that cannot be written, and no autoencoder at all.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    msg = error_of(train_ldm.main, ["--vae", str(vae_run), "--out", str(blocker / "run"), *LDM], capsys)
    assert "not writable" in msg
    msg = error_of(train_ldm.main, ["--vae", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")], capsys)
    assert "nothing" in msg


def test_wide_recordings_train_both_stages_as_square_windows(tmp_path):
    """A folder of wide images (the activity family's shape) runs end to end: each image becomes 2 square windows
    in stage 1, and stage 2 trains on (and the evaluation would read) the same windows."""
    from PIL import Image

    square = make_folder(tmp_path / "square", users=2, per_user=6, size=32)
    wide = tmp_path / "wide"
    for f in square.rglob("*.png"):  # 53×32: aspect 1.66, like 1000×600 recordings
        (wide / f.parent.name).mkdir(parents=True, exist_ok=True)
        img = Image.open(f)
        Image.fromarray(np.concatenate([np.asarray(img), np.asarray(img)[:, :21]], axis=1)).save(
            wide / f.parent.name / f.name)
    vae, ldm = tmp_path / "vae", tmp_path / "ldm"
    assert train_vae.main(["--data", str(wide), "--out", str(vae), "--image-size", "32", "--batch-size", "4",
                           "--val-fraction", "0.25", "--max-steps", "2"]) == 0
    cfg = json.loads((vae / "config.json").read_text())
    assert (cfg["data"]["n_train"], cfg["data"]["n_val"]) == (2 * 8, 2 * 4)  # 2 windows of each file, per split
    assert train_ldm.main(["--vae", str(vae), "--out", str(ldm), "--max-steps", "2", *LDM]) == 0
    cfg = json.loads((ldm / "config.json").read_text())
    assert cfg["latent_shape"] == [4, 16, 16]  # square windows: the same latents as square images
    assert json.loads((ldm / "log.jsonl").read_text().splitlines()[-1])["stopped"].startswith(
        "the training length: 2 optimizer steps")
