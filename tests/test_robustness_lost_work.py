"""Nothing a user made is overwritten or lost (issue 33): a run folder is not replaced without --overwrite, sample.py
never writes into data, writes each image atomically as it is made, stops cleanly on SIGTERM, holds a lock on its
--out, and reads --users one way only."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from test_robustness import ldm_run  # noqa: F401  (a fixture)
from test_stage2 import LDM, ROOT, error_of, vae_run  # noqa: F401  (vae_run is a fixture)
from test_train_vae import make_folder

import sample as sample_script
import train_ldm
import train_vae
from tinyldm.runs import file_sha256

SAMPLE = ["--n-per-user", "1", "--steps", "2", "--compare-real", "0"]


# ---- 1. a finished (or unfinished) run is not replaced by a new one ------------------------------------------------

def test_train_vae_refuses_an_out_that_holds_a_run_unless_overwrite(vae_run, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "vae"
    shutil.copytree(vae_run, run)
    before = file_sha256(run / "model.safetensors")
    data = json.loads((run / "config.json").read_text())["data"]["root"]
    argv = ["--data", data, "--out", str(run), "--image-size", "32", "--batch-size", "4", "--val-fraction", "0.25",
            "--max-steps", "1"]
    msg = error_of(train_vae.main, argv, capsys)
    assert f"--out {run} already holds a run" in msg and "--resume" in msg and "--overwrite" in msg
    assert file_sha256(run / "model.safetensors") == before and not (run / ".lock").exists()
    assert train_vae.main([*argv, "--overwrite"]) == 0  # the user says so: replaced
    assert json.loads((run / "config.json").read_text())["args"]["max_steps"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]  # none of the old run's left


def test_train_ldm_refuses_a_run_folder_finished_or_not_and_resume_still_works(ldm_run, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "ldm"
    shutil.copytree(ldm_run, run)
    vae = json.loads((run / "config.json").read_text())["vae"]
    argv = ["--vae", vae, "--out", str(run), "--max-steps", "1", *LDM]
    before = file_sha256(run / "ema.safetensors")
    assert "already holds a run" in error_of(train_ldm.main, argv, capsys)
    (run / "model.safetensors").unlink()  # a run killed before its end: config.json and checkpoints only
    (run / "ema.safetensors").unlink()
    assert "already holds a run (config.json, checkpoints" in error_of(train_ldm.main, argv, capsys)
    assert train_ldm.main(["--resume", str(run), "--max-steps", "4"]) == 0  # continuing it is what --resume is for
    assert file_sha256(run / "ema.safetensors") != before
    with pytest.raises(SystemExit) as e:  # both at once cannot both be meant
        train_ldm.parse_args(["--resume", str(run), "--overwrite"])
    assert e.value.code == 2
    assert train_ldm.main([*argv, "--overwrite"]) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]


# ---- 2. sample.py never writes into data or over other files -------------------------------------------------------

def test_sample_refuses_the_runs_data_folder_and_folders_it_did_not_write(ldm_run, tmp_path, capsys):  # noqa: F811
    data = json.loads((ldm_run / "config.json").read_text())["data"]
    real = {p: p.read_bytes() for p in sorted(Path(data).rglob("*.png"))}
    for out in (data, f"{data}/user_00"):
        msg = error_of(sample_script.main, ["--run", str(ldm_run), *SAMPLE, "--out", out, "--overwrite"], capsys)
        assert "is inside the data folder" in msg
    assert {p: p.read_bytes() for p in real} == real and not (Path(data) / "grid.png").exists()
    other = make_folder(tmp_path / "other", users=2, per_user=2, size=32)  # someone's images, not the run's data
    for extra in ([], ["--overwrite"]):  # --overwrite replaces only sample.py's own output
        msg = error_of(sample_script.main, ["--run", str(ldm_run), *SAMPLE, "--out", str(other), *extra], capsys)
        assert "holds folders that sample.py did not write (user_00, user_01)" in msg
    assert len(list(other.rglob("*.png"))) == 4


def test_sample_replaces_its_earlier_output_of_other_settings_only_with_overwrite(ldm_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "samples"
    argv = ["--run", str(ldm_run), *SAMPLE, "--out", str(out)]
    assert sample_script.main([*argv, "--users", "0,2"]) == 0
    first = (out / "user_00" / "000.png").read_bytes()
    assert sample_script.main([*argv, "--users", "0,2"]) == 0  # the same settings: the same images again
    assert (out / "user_00" / "000.png").read_bytes() == first
    msg = error_of(sample_script.main, [*argv, "--users", "1"], capsys)
    assert "holds earlier samples of other users" in msg and "--overwrite" in msg
    assert sample_script.main([*argv, "--users", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["user_01"]  # no mix of two settings' images
    assert json.loads((out / "samples.json").read_text())["users"] == ["user_01"]


# ---- 3. and 4. SIGTERM during sample.py; its lock on --out ---------------------------------------------------------

def test_sigterm_during_sample_writes_whole_images_and_says_how_many(ldm_run, tmp_path):  # noqa: F811
    out = tmp_path / "samples"
    proc = subprocess.Popen([sys.executable, "sample.py", "--run", str(ldm_run), "--n-per-user", "60",
                             "--batch-size", "1", "--steps", "4", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("user_*/*.png")) and proc.poll() is None:
        time.sleep(0.02)
    lock = json.loads((out / ".lock").read_text())  # 4. a second sample.py into this --out is refused meanwhile
    assert lock["script"] == "sample.py" and lock["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    pngs = sorted(out.glob("user_*/*.png"))
    assert f"SIGTERM: stopped: {len(pngs)} of 180 images written to {out}; run the same command again" in stdout
    assert 0 < len(pngs) < 180 and not list(out.rglob(".*.tmp")) and "Traceback" not in stderr
    for png in pngs:
        Image.open(png).load()  # each one whole
    assert not (out / ".lock").exists()


def test_a_second_sample_into_a_locked_out_is_refused(ldm_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "samples"
    out.mkdir()
    # What a sample.py still running in another process leaves: its lock (pid 1 is always alive).
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "script": "sample.py"}))
    msg = error_of(sample_script.main, ["--run", str(ldm_run), *SAMPLE, "--out", str(out)], capsys)
    assert f"{out} is in use by sample.py (pid 1" in msg
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


# ---- 5. --users is read one way only ---------------------------------------------------------------------------------

def test_users_that_could_mean_two_users_are_refused_naming_both():
    numbered = ["1", "2", "3", "4"]
    with pytest.raises(ValueError, match=r"ambiguous at '1': it could mean '1' \(id:0\) or '2' \(id:1\)"):
        sample_script.parse_users("0,1", numbered)
    assert sample_script.parse_users("id:0,id:1", numbered) == [0, 1]
    assert sample_script.parse_users("0", numbered) == [0]  # no user is named 0: the id
    commas = ["smith,john", "smith", "john"]
    with pytest.raises(ValueError, match=r"could mean 'smith,john' \(id:0\) or 'smith' \(id:1\)"):
        sample_script.parse_users("smith,john", commas)
    assert sample_script.parse_users("john,id:0", commas) == [2, 0]
    assert sample_script.parse_users("alice,smith,john", ["alice", "smith,john"]) == [0, 1]  # written whole
    assert sample_script.parse_users("user_01,0", ["user_00", "user_01"]) == [1, 0]
    with pytest.raises(ValueError, match="id 7 is no user here"):
        sample_script.parse_users("id:7", numbered)
