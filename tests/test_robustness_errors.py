"""Issue 33, second round: a finite divergence, an autoencoder without a latent scale, data changed or moved under
--resume, a full disk, out of memory, a config.json that is a list, a device this machine lacks, a missing EMA —
each stopped before it is written, or said in one true line, never a traceback."""

import json
import math
import random
import shutil

import pytest
import torch
from test_robustness import copy_run, error_after_training
from test_stage2 import LDM, error_of, vae_run  # noqa: F401  (vae_run is a fixture)
from test_train_vae import make_folder

import train_ldm
import train_vae
from tinyldm.checkpoints import load_checkpoint
from tinyldm.evaluation import evaluate_run
from tinyldm.evaluation import runs as evaluation_runs
from tinyldm.latents import measure_scale
from tinyldm.loading import load_ldm
from tinyldm.runs import RunError, read_config, resolve_device, resource_message
from tinyldm.train import (
    DIVERGENCE_STEPS,
    LossWatch,
    check_loss_trend,
)

EVERY_STEP = [*LDM, "--ckpt-every", "1"]  # test_stage2's small steps, with a checkpoint after every step

VAE = ["--image-size", "32", "--batch-size", "4", "--val-fraction", "0.25"]


def checkpoint_steps(run):
    return sorted(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))


@pytest.fixture(scope="module")
def ldm_stopped(vae_run, tmp_path_factory):  # noqa: F811
    """A 4-step DiT run on its own copy of the data, stopped after 2 steps (resumable), with a checkpoint a step."""
    tmp = tmp_path_factory.mktemp("errors")
    data = shutil.copytree(read_config(vae_run)["data"]["root"], tmp / "data")
    run = tmp / "ldm"
    assert train_ldm.main(["--vae", str(vae_run), "--data", str(data), "--out", str(run), "--max-steps", "4",
                           "--stop-after", "2", *EVERY_STEP]) == 0
    return run


def copy_ldm_with_data(ldm_stopped, tmp_path):
    """A copy of the stopped run and of its data, the copy's config.json naming the copied data."""
    run = copy_run(ldm_stopped, tmp_path)
    data = shutil.copytree(read_config(ldm_stopped)["data"], tmp_path / "data")
    cfg = read_config(run)
    cfg["data"] = str(data)
    (run / "config.json").write_text(json.dumps(cfg))
    return run, data


# ---- 1. a divergence that stays finite ---------------------------------------------------------------------------

def recipe_like_curve(start, end, steps, noise, seed):
    """A loss falling exponentially from start to end with multiplicative noise (lognormal, σ = noise)."""
    rng = random.Random(seed)
    return [(end + (start - end) * math.exp(-6 * k / steps)) * math.exp(rng.gauss(0, noise)) for k in range(steps)]


@pytest.mark.parametrize("curve", ["vae: steep fall", "ldm: noisy", "ldm: noisy, small batch"])
def test_the_divergence_guard_is_quiet_on_normal_curves_and_fires_on_a_blow_up(tmp_path, curve):
    # The recipes' curves (runs/*/log.jsonl): the VAE's total 0.79 → 0.09 with most of the fall in 100 steps, the
    # DiT's flow loss 2.0 → 0.25 with ±25 % noise a step; "small batch": twice that noise.
    losses = {"vae: steep fall": recipe_like_curve(0.8, 0.09, 834, 0.15, 0),
              "ldm: noisy": recipe_like_curve(2.0, 0.25, 2210, 0.25, 1),
              "ldm: noisy, small batch": recipe_like_curve(2.0, 0.25, 2210, 0.5, 2)}[curve]
    watch = LossWatch()
    for step, loss in enumerate(losses):
        check_loss_trend(watch, loss, step, tmp_path, 1e-3)  # never raises
    for step in range(DIVERGENCE_STEPS - 1):  # a finite blow-up: stopped after DIVERGENCE_STEPS steps
        check_loss_trend(watch, 5e6, len(losses) + step, tmp_path, 1e-3)
        assert watch.suspect
    with pytest.raises(RunError, match="training diverged at step .*stayed above 10× its best"):
        check_loss_trend(watch, 5e6, len(losses) + DIVERGENCE_STEPS, tmp_path, 1e-3)


def test_a_finite_blow_up_of_the_autoencoder_stops_before_it_is_written(tmp_path, capsys):
    data = make_folder(tmp_path / "data", users=2, per_user=16, size=32)  # 8 steps an epoch: no validation before
    run = tmp_path / "vae"
    msg = error_after_training(train_vae.main, ["--data", str(data), "--out", str(run), "--image-size", "32",
                                                "--batch-size", "4", "--val-fraction", "0", "--lr", "10",
                                                "--grad-clip", "0", "--max-steps", "16", "--ckpt-every", "1"], capsys)
    assert "training diverged at step" in msg and "stayed above" in msg and "Lower --lr" in msg
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    first_bad = min(r["step"] for r in log if r.get("total", 0) > 10 * log[0]["total"])
    assert checkpoint_steps(run) and max(checkpoint_steps(run)) < first_bad  # no checkpoint after the rise
    assert "results" not in read_config(run)  # no latent scale, no "done"


def test_a_finite_blow_up_of_the_diffusion_stops_with_its_last_good_checkpoint(vae_run, tmp_path, capsys,  # noqa: F811
                                                                              monkeypatch):
    calls = []

    def blowing_up(*args, **kwargs):  # the loss from step 3 on is 10⁶ × what it is
        calls.append(1)
        loss = diffusion_loss(*args, **kwargs)
        return loss * 1e6 if len(calls) > 2 * 2 else loss  # 2 micro-batches a step

    diffusion_loss = train_ldm.diffusion_loss
    monkeypatch.setattr(train_ldm, "diffusion_loss", blowing_up)
    run = tmp_path / "ldm"
    msg = error_after_training(train_ldm.main, ["--vae", str(vae_run), "--out", str(run), "--max-steps", "10",
                                                *EVERY_STEP], capsys)
    assert "training diverged at step 7" in msg and "last good checkpoint is" in msg and "step_00000002" in msg
    assert checkpoint_steps(run) == [2]


def test_an_absurd_latent_scale_is_refused_not_written(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="diverged or collapsed"):
        measure_scale(torch.randn(4, 4, 8, 8) * 1e6)
    with pytest.raises(ValueError, match="diverged or collapsed"):
        measure_scale(torch.zeros(4, 4, 8, 8))
    assert measure_scale(torch.randn(4, 4, 8, 8) * 2) == pytest.approx(0.5, rel=0.1)
    monkeypatch.setattr(train_vae, "posterior_samples", lambda *a: torch.randn(8, 4, 16, 16) * 1e7)
    data = make_folder(tmp_path / "data", users=2, per_user=4, size=32)
    msg = error_after_training(train_vae.main, ["--data", str(data), "--out", str(tmp_path / "vae"), *VAE,
                                                "--max-steps", "2"], capsys)
    assert "standard deviation is 1e+07" in msg or "standard deviation is 9.9" in msg
    assert "diverged or collapsed" in msg and "not written" in msg
    assert "results" not in read_config(tmp_path / "vae")


# ---- 2. an autoencoder whose config.json has no scaling_factor ---------------------------------------------------

def test_a_missing_latent_scale_is_measured_and_said_so(vae_run, tmp_path, capsys):  # noqa: F811
    vae = copy_run(vae_run, tmp_path)
    cfg = read_config(vae)
    del cfg["model"]["scaling_factor"]
    (vae / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert train_ldm.main(["--vae", str(vae), "--out", str(tmp_path / "ldm"), "--max-steps", "1", *LDM]) == 0
    out = capsys.readouterr().out
    assert "measured here" in out and "has no scaling_factor in its config.json" in out
    assert "measured by train_vae.py" not in out
    assert read_config(tmp_path / "ldm")["scaling_factor"] != 0.18215


# ---- 3. the data changed under --resume --------------------------------------------------------------------------

def test_resuming_the_autoencoder_on_changed_data_is_refused_naming_the_change(tmp_path, capsys):
    data = make_folder(tmp_path / "data", users=3, per_user=8, size=32)
    run = tmp_path / "vae"
    assert train_vae.main(["--data", str(data), "--out", str(run), *VAE, "--max-steps", "4", "--stop-after", "2"]) == 0
    fingerprint = read_config(run)["data_fingerprint"]
    assert fingerprint["images"] == 24 and list(fingerprint["images_per_user"]) == ["user_00", "user_01", "user_02"]
    shutil.rmtree(data / "user_02")
    (data / "user_00" / "007.png").unlink()
    msg = error_of(train_vae.main, ["--resume", str(run)], capsys)
    assert "not what the run started on" in msg and "users removed user_02 (1)" in msg and "24 → 15 images" in msg
    assert "user_00: 8 → 7 images" in msg and "start a new run with another --out" in msg


def test_resuming_the_diffusion_on_changed_data_is_refused_and_older_runs_still_resume(ldm_stopped, tmp_path,
                                                                                        capsys):
    run, data = copy_ldm_with_data(ldm_stopped, tmp_path)
    shutil.copy(data / "user_00" / "000.png", data / "user_01" / "100.png")  # one more image for user_01
    msg = error_after_training(train_ldm.main, ["--resume", str(run)], capsys)
    assert "not what the run started on" in msg and "user_01: 6 → 7 images" in msg
    (data / "user_01" / "100.png").unlink()
    cfg = read_config(run)
    del cfg["data_fingerprint"]  # a run written before fingerprints
    (run / "config.json").write_text(json.dumps(cfg))
    assert train_ldm.main(["--resume", str(run)]) == 0
    assert "data_fingerprint" in read_config(run) and checkpoint_steps(run) == [4]


def test_a_removed_user_is_named_not_called_a_damaged_checkpoint(ldm_stopped, tmp_path, capsys):
    run, data = copy_ldm_with_data(ldm_stopped, tmp_path)
    shutil.rmtree(data / "user_02")
    msg = error_after_training(train_ldm.main, ["--resume", str(run)], capsys)
    assert "users removed user_02" in msg and "damaged" not in msg and "does not fit" not in msg


# ---- 4. and 5. a full disk, out of memory ------------------------------------------------------------------------

def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(vae_run, tmp_path, capsys,  # noqa: F811
                                                                       monkeypatch):
    saves, save = [], torch.save

    def disk_fills_up(*args, **kwargs):  # what torch.save raises when the disk is full
        saves.append(1)
        if len(saves) == 3:
            raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                               "data/12: file write failed; basic_ios::clear: iostream error")
        return save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    run = tmp_path / "ldm"
    msg = error_after_training(train_ldm.main, ["--vae", str(vae_run), "--out", str(run), "--max-steps", "5",
                                                *EVERY_STEP], capsys)
    assert "disk full while writing the checkpoint of step 3" in msg and "step_00000002 is intact" in msg
    assert f"free space and continue with --resume {run}" in msg
    monkeypatch.setattr(torch, "save", save)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]  # no half-written folder
    weights, state = load_checkpoint(run, ("model", "ema"))
    assert state["step"] == 2


@pytest.mark.parametrize("error", [RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                                "7340032000 bytes. Error code 12 (Cannot allocate memory)"),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")])
def test_out_of_memory_is_one_line_and_the_checkpoint_stays(vae_run, tmp_path, capsys, monkeypatch,  # noqa: F811
                                                            error):
    steps, step = [], train_ldm.training_step

    def runs_out(tr):
        steps.append(1)
        if len(steps) == 3:
            raise error
        return step(tr)

    monkeypatch.setattr(train_ldm, "training_step", runs_out)
    run = tmp_path / "ldm"
    msg = error_after_training(train_ldm.main, ["--vae", str(vae_run), "--out", str(run), "--max-steps", "5",
                                                *EVERY_STEP], capsys)
    assert "out of memory" in msg and "lower --batch-size" in msg and "--resume" in msg
    assert load_checkpoint(run)[1]["step"] == 2
    assert resource_message(ValueError("x")) is None and resource_message(RuntimeError("a bug")) is None


# ---- 6. and 7. a config.json that is a list; a device this machine lacks -----------------------------------------

def test_a_config_json_that_is_a_list_is_one_line(ldm_stopped, tmp_path, capsys):
    run = copy_run(ldm_stopped, tmp_path)
    (run / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(RunError, match="holds a JSON list, not an object"):
        load_ldm(run)
    assert "holds a JSON list" in error_of(train_ldm.main, ["--resume", str(run)], capsys)


@pytest.mark.skipif(torch.cuda.device_count() >= 8, reason="this machine has a cuda:7")
def test_a_device_this_machine_lacks_is_one_clear_error(ldm_stopped):
    expected = "CUDA is not available" if not torch.cuda.is_available() else "CUDA device"
    with pytest.raises(ValueError, match=expected):
        load_ldm(ldm_stopped, device="cuda:7")
    with pytest.raises(ValueError, match=expected):
        resolve_device(torch.device("cuda", 7))
    assert resolve_device("cpu") == torch.device("cpu")


# ---- 8. the data moved ----------------------------------------------------------------------------------------

def test_resume_accepts_the_moved_data_and_refuses_other_data(ldm_stopped, tmp_path, capsys):
    run, data = copy_ldm_with_data(ldm_stopped, tmp_path)
    moved = data.rename(tmp_path / "moved")
    msg = error_after_training(train_ldm.main, ["--resume", str(run)], capsys)
    assert "does not exist; pass --data DIR" in msg
    other = make_folder(tmp_path / "other", users=3, per_user=8, size=32, seed=5)  # same names, other files
    for png in other.glob("*/*.png"):
        png.write_bytes(png.read_bytes() + b"\0")  # another size
    msg = error_after_training(train_ldm.main, ["--resume", str(run), "--data", str(other)], capsys)
    assert "not what the run started on" in msg and "renamed, replaced or resized" in msg
    assert train_ldm.main(["--resume", str(run), "--data", str(moved)]) == 0
    assert read_config(run)["data"] == str(moved) and checkpoint_steps(run) == [4]


def test_evaluate_reads_a_runs_moved_data_from_data(vae_run, tmp_path, capsys, monkeypatch):  # noqa: F811
    vae = copy_run(vae_run, tmp_path)
    moved = shutil.copytree(read_config(vae)["data"]["root"], tmp_path / "moved")
    cfg = read_config(vae)
    cfg["data"]["root"] = str(tmp_path / "gone")
    (vae / "config.json").write_text(json.dumps(cfg))
    from tinyldm.evaluation.__main__ import main as evaluate

    assert "does not exist; pass --data DIR" in error_of(evaluate, ["--run", str(vae), "--no-cache"], capsys)
    assert "--data is for --run" in error_of(evaluate, ["--real", str(moved), "--generated", str(moved),
                                                        "--out", str(tmp_path / "e"), "--data", str(moved)], capsys)
    read_from = []

    def build_reference(root, *args):  # the classifier is not trained here: only where the data is read from
        read_from.append(root)
        raise RunError("stop here")

    monkeypatch.setattr(evaluation_runs, "build_reference", build_reference)
    with pytest.raises(RunError, match="stop here"):
        evaluate_run(vae, tmp_path / "eval", data=moved, quiet=True, use_cache=False)
    assert read_from == [moved]


# ---- 9. a missing EMA file ----------------------------------------------------------------------------------------

def test_a_missing_ema_file_is_called_missing(ldm_stopped, tmp_path, capsys):
    run = copy_run(ldm_stopped, tmp_path)
    (run / "checkpoints" / "step_00000002" / "ema.safetensors").unlink()
    msg = error_after_training(train_ldm.main, ["--resume", str(run)], capsys)
    assert "step_00000002 is incomplete: ema.safetensors is missing" in msg and "does not fit" not in msg
