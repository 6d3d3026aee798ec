"""No silent failure, no lost work: divergence, Ctrl-C/SIGTERM, an unfinished autoencoder, one data contract,
locked run folders, and damaged run-folder files — each a one-line message and a non-zero exit, never a traceback."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_stage2 import LDM, ROOT, error_of, run_script, vae_run  # noqa: F401  (vae_run is a fixture)
from test_train_vae import make_folder

import sample as sample_script
import train_ldm
import train_vae


@pytest.fixture(scope="module")
def ldm_run(vae_run, tmp_path_factory):  # noqa: F811
    """A finished 3-step DiT run with a checkpoint at every step."""
    run = tmp_path_factory.mktemp("robust") / "ldm"
    assert train_ldm.main(["--vae", str(vae_run), "--out", str(run), "--max-steps", "3", "--batch-size", "4",
                           "--grad-accum", "2", "--sample-every", "1000", "--ckpt-every", "1"]) == 0
    return run


def error_after_training(main, argv, capsys):
    """The one error line of a run that fails mid-training (stderr also holds the progress bar's lines)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def copy_run(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def all_finite(path):
    return all(torch.isfinite(v).all() for v in load_file(str(path)).values())


# ---- 1. divergence ---------------------------------------------------------------------------------------------------

def test_a_diverging_ldm_run_stops_with_its_last_finite_checkpoint(vae_run, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "ldm"
    msg = error_after_training(train_ldm.main, ["--vae", str(vae_run), "--out", str(run), "--lr", "1e30",
                                                "--max-steps", "30", "--ckpt-every", "1", "--batch-size", "4",
                                                "--grad-accum", "1", "--sample-every", "1000"], capsys)
    assert "training diverged at step" in msg and "lower --lr" in msg.lower()
    for path in run.glob("**/*.safetensors"):  # everything written is finite
        assert all_finite(path), path


def test_a_diverging_autoencoder_stops_with_one_line(tmp_path, capsys):
    data = make_folder(tmp_path / "data", users=2, per_user=4, size=32)
    msg = error_after_training(train_vae.main, ["--data", str(data), "--out", str(tmp_path / "vae"), "--image-size",
                                                "32", "--batch-size", "4", "--val-fraction", "0", "--lr", "1e30",
                                                "--max-steps", "20", "--ckpt-every", "1"], capsys)
    assert "training diverged at step" in msg


def test_sampling_refuses_non_finite_weights_and_guidance(ldm_run, tmp_path, capsys):
    run = copy_run(ldm_run, tmp_path)
    assert "finite number" in error_of(sample_script.main, ["--run", str(run), "--cfg-scale", "nan"], capsys)
    state = load_file(str(run / "ema.safetensors"))
    name = next(iter(state))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(run / "ema.safetensors"))
    assert "non-finite weights" in error_of(sample_script.main, ["--run", str(run)], capsys)


# ---- 2. Ctrl-C and SIGTERM -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_checkpoints_and_exits_130(vae_run, tmp_path, sig):  # noqa: F811
    run = tmp_path / "ldm"
    args = [sys.executable, "train_ldm.py", "--vae", str(vae_run), "--out", str(run), "--max-steps", "100000",
            "--ckpt-every", "100000", *LDM]
    check_signal_stop(args, run, sig, ["train_ldm.py", "--resume", str(run)])


def test_ctrl_c_in_the_autoencoder_checkpoints_and_exits_130(tmp_path):
    data = make_folder(tmp_path / "data", users=2, per_user=4, size=32)
    run = tmp_path / "vae"
    args = [sys.executable, "train_vae.py", "--data", str(data), "--out", str(run), "--image-size", "32",
            "--batch-size", "4", "--val-fraction", "0", "--max-steps", "100000", "--ckpt-every", "100000"]
    check_signal_stop(args, run, signal.SIGINT, ["train_vae.py", "--resume", str(run)])


def check_signal_stop(args, run, sig, resume):
    """Start a training run, signal it once its log has a line, check it kept every step and can resume."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (run / "log.jsonl").is_file():
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    steps = max(json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines())
    assert (run / "checkpoints" / f"step_{steps:08d}" / "train_state.pt").is_file()  # no step lost
    assert f"--resume {run}" in out and not (run / ".lock").exists()
    resumed = run_script([*resume, "--max-steps", str(steps + 1)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]


# ---- 3. an autoencoder that never finished ---------------------------------------------------------------------------

def test_an_unfinished_autoencoder_gets_its_latent_scale_measured(tmp_path, capsys):
    data = make_folder(tmp_path / "data", users=3, per_user=8, size=32)
    vae = tmp_path / "vae"
    assert train_vae.main(["--data", str(data), "--out", str(vae), "--image-size", "32", "--batch-size", "4",
                           "--val-fraction", "0.25", "--max-steps", "6", "--stop-after", "3"]) == 0
    assert "results" not in json.loads((vae / "config.json").read_text())
    capsys.readouterr()
    assert train_ldm.main(["--vae", str(vae), "--out", str(tmp_path / "ldm"), "--max-steps", "1", *LDM]) == 0
    assert "measured here" in capsys.readouterr().out
    scale = json.loads((tmp_path / "ldm" / "config.json").read_text())["scaling_factor"]
    cache = load_file(str(next((vae / "latent_cache").glob("*.safetensors"))))
    z = cache["mean"] + cache["std"] * torch.randn(cache["mean"].shape, generator=torch.Generator().manual_seed(0))
    assert scale == pytest.approx(1 / z.double().std().item()) and scale != 0.18215


# ---- 4. one data contract --------------------------------------------------------------------------------------------

def test_both_stages_accept_the_same_mixed_folder(tmp_path, capsys):
    data = make_folder(tmp_path / "data", users=3, per_user=8, size=32)
    Image.open(data / "user_00" / "000.png").convert("L").save(data / "user_00" / "000.png")  # greyscale
    Image.open(data / "user_01" / "000.png").resize((40, 40)).save(data / "user_01" / "000.png")  # another size
    Image.fromarray((torch.rand(32, 32) * 65535).numpy().astype("uint16")).save(data / "user_02" / "000.png")  # 16 bit
    vae = tmp_path / "vae"
    assert train_vae.main(["--data", str(data), "--out", str(vae), "--image-size", "32", "--batch-size", "4",
                           "--val-fraction", "0.25", "--max-steps", "2"]) == 0
    assert train_ldm.main(["--vae", str(vae), "--out", str(tmp_path / "ldm"), "--max-steps", "1", *LDM]) == 0


# ---- 5. one writer per run folder ------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_and_a_stale_lock_replaced(vae_run, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "ldm"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": other.pid, "host": socket.gethostname(), "script": "train_ldm.py"}
        (run / ".lock").write_text(json.dumps(lock))
        msg = error_of(train_ldm.main, ["--vae", str(vae_run), "--out", str(run), "--max-steps", "1", *LDM], capsys)
        assert "in use by train_ldm.py" in msg and str(other.pid) in msg
    finally:
        other.kill()
        other.wait()
    assert train_ldm.main(["--vae", str(vae_run), "--out", str(run), "--max-steps", "1", *LDM]) == 0  # now stale
    assert "which is gone; taking it over" in capsys.readouterr().out
    assert not (run / ".lock").exists()


def test_two_training_processes_on_one_folder(vae_run, tmp_path):  # noqa: F811
    run = tmp_path / "ldm"
    args = ["train_ldm.py", "--vae", str(vae_run), "--out", str(run), "--max-steps", "100000", *LDM]
    first = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (run / "log.jsonl").is_file():
            time.sleep(0.05)
        second = run_script(args)
        assert second.returncode == 2 and "in use by train_ldm.py" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=240)


def test_out_inside_the_data_folder_is_refused(vae_run, tmp_path, capsys):  # noqa: F811
    data = make_folder(tmp_path / "data", users=2, per_user=4, size=32)
    msg = error_of(train_vae.main, ["--data", str(data), "--out", str(data / "run"), "--image-size", "32"], capsys)
    assert "inside the data folder" in msg
    msg = error_of(train_ldm.main, ["--vae", str(vae_run), "--data", str(data), "--out", str(data / "run")], capsys)
    assert "inside the data folder" in msg
    assert not (data / "run").exists()  # refused before anything is written there


# ---- 6. damaged run-folder files -------------------------------------------------------------------------------------

def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def huge_header(path):
    path.write_bytes((10**15).to_bytes(8, "little") + b"{}")


def wrong_shape(path):
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.dim() == 2)
    state[name] = torch.zeros(3, 3)
    save_file(state, str(path))


def edit_config(change):
    def edit(run):
        cfg = json.loads((run / "config.json").read_text())
        change(cfg)
        (run / "config.json").write_text(json.dumps(cfg))
    return edit


def not_a_state_dict(path):
    torch.save({"step": 1, "optimizer": {}, "rng": {}, "model": torch.nn.Linear(2, 2)}, path)


DAMAGED_FOR_SAMPLING = {  # what is damaged → what the one line says
    "truncated weights": (lambda run: truncate(run / "ema.safetensors"), "not a readable safetensors"),
    "zero-byte weights": (lambda run: (run / "ema.safetensors").write_bytes(b""), "not a readable safetensors"),
    "huge safetensors header": (lambda run: huge_header(run / "ema.safetensors"), "not a readable safetensors"),
    "tensor of another shape": (lambda run: wrong_shape(run / "ema.safetensors"), "does not fit"),
    "weights missing": (lambda run: (run / "ema.safetensors").unlink(), "does not exist"),
    "config.json not JSON": (lambda run: (run / "config.json").write_text("{"), "not valid JSON"),
    "config.json missing a key": (edit_config(lambda c: c.pop("schedule")), "lacks ['schedule']"),
    "config value of a wrong type": (edit_config(lambda c: c["backbone_config"].update(depth="four")),
                                     "cannot use"),
    "config value of an unknown name": (edit_config(lambda c: c["backbone_config"].update(colour=1)), "cannot use"),
}


@pytest.mark.parametrize("case", DAMAGED_FOR_SAMPLING)
def test_damaged_files_give_one_line_when_sampling(ldm_run, tmp_path, case):
    run = copy_run(ldm_run, tmp_path)
    damage, expected = DAMAGED_FOR_SAMPLING[case]
    damage(run)
    out = run_script(["sample.py", "--run", str(run), "--users", "0", "--n-per-user", "1", "--steps", "2"])
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and expected in out.stderr, out.stderr


def newest_ckpt(run):
    return sorted((run / "checkpoints").glob("step_*"))[-1]


DAMAGED_FOR_RESUME = {
    "train_state.pt missing": (lambda run: (newest_ckpt(run) / "train_state.pt").unlink(), "incomplete"),
    "train_state.pt truncated": (lambda run: truncate(newest_ckpt(run) / "train_state.pt"), "cannot be read"),
    "a pickle that is not a state dict": (lambda run: not_a_state_dict(newest_ckpt(run) / "train_state.pt"),
                                          "not a tinyldm training state; it was not loaded"),
    "checkpoint weights truncated": (lambda run: truncate(newest_ckpt(run) / "model.safetensors"),
                                     "not a readable safetensors"),
}


@pytest.mark.parametrize("case", DAMAGED_FOR_RESUME)
def test_damaged_checkpoints_give_one_line_on_resume(ldm_run, tmp_path, case):
    run = copy_run(ldm_run, tmp_path)
    damage, expected = DAMAGED_FOR_RESUME[case]
    damage(run)
    out = run_script(["train_ldm.py", "--resume", str(run), "--max-steps", "4"])
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and expected in out.stderr, out.stderr
    assert "weights_only=False" not in out.stderr


def test_an_empty_newer_checkpoint_falls_back_to_the_one_before(ldm_run, tmp_path, capsys):
    run = copy_run(ldm_run, tmp_path)
    (run / "checkpoints" / "step_00000009").mkdir()  # e.g. made by hand or by a broken copy
    assert train_ldm.main(["--resume", str(run), "--max-steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "step_00000009 is incomplete" in out and "resumed" in out and "at step 3/4" in out
