"""Issue 33's lost-work cases: a finished run as --out of a new one, sample.py into the training data, SIGTERM during
sample.py, two sample.py into one folder, and --users that could mean two users. Each runs the scripts as a user
would (subprocesses on a tiny run) and judges what is on disk afterwards, so a verdict is measured, not claimed.
"""

import atexit
import functools
import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from probes import Case

ROOT = Path(__file__).resolve().parents[2]
# Users named by numbers, and one whose name holds a comma beside a user named like its first part.
USERS = ("1", "2", "3", "4", "smith", "smith,john")
VAE = ["--image-size", "32", "--batch-size", "4", "--val-fraction", "0.25", "--max-steps", "2"]
LDM = ["--batch-size", "4", "--max-steps", "2", "--sample-every", "1000", "--ckpt-every", "1"]
SAMPLE = ["--n-per-user", "1", "--steps", "2", "--compare-real", "0"]


def script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def digest(folder: Path) -> dict[str, str]:
    """Every file below folder → sha256 of its bytes: what a case must leave as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> tuple[str, str] | None:
    """The verdict of a command that must end in exit code 2 and one line naming `fragments`; None if it ran."""
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.splitlines() if "error:" in line or "Traceback" in line]
    if "Traceback" in proc.stderr:
        return "traceback", proc.stderr.strip().splitlines()[-1]
    line = lines[-1] if lines else proc.stderr.strip()[-200:]
    return ("clear error" if len(lines) == 1 and all(f in line for f in fragments) else "misleading"), line


@functools.cache
def tiny_runs() -> tuple[Path, Path, Path]:
    """(data, autoencoder run, diffusion run), trained for 2 steps each, once per process; cases use copies."""
    root = Path(tempfile.mkdtemp(prefix="probe-lost-work-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for k, user in enumerate(USERS):
        (root / "data" / user).mkdir(parents=True)
        for i in range(4):
            stripes = np.sin(2 * np.pi * (k + 1) * np.linspace(0, 1, 32) + rng.uniform(0, 6))  # (W,)
            img = np.broadcast_to(((stripes + 1) * 127.5).astype(np.uint8), (32, 32))
            Image.fromarray(np.stack([img] * 3, axis=-1)).save(root / "data" / user / f"{i:03d}.png")
    for args in (["train_vae.py", "--data", root / "data", "--out", root / "vae", *VAE],
                 ["train_ldm.py", "--vae", root / "vae", "--out", root / "ldm", *LDM]):
        done = script(*args)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip().splitlines()[-1]}")
    return root / "data", root / "vae", root / "ldm"


def copy_runs(tmp: Path) -> tuple[Path, Path, Path]:
    """The tiny runs copied into the case's scratch folder, the diffusion run pointing at its own copies."""
    data, vae, ldm = tiny_runs()
    copies = tuple(Path(shutil.copytree(p, tmp / p.name)) for p in (data, vae, ldm))
    for path in (copies[1] / "config.json", copies[2] / "config.json"):
        path.write_text(path.read_text().replace(str(data.parent), str(tmp)))
    return copies


def refused_untouched(folder: Path, lost: str, argv: tuple, *fragments: str) -> tuple[str, str]:
    """Run a script that must refuse (saying `fragments`) and leave `folder` byte for byte as it was; else the case
    is lost work (`lost` says what was lost)."""
    before = digest(folder)
    verdict = refused(script(*argv), *fragments)
    if verdict is None or digest(folder) != before:
        return "lost work", lost
    return verdict


# ---- 1. a finished run as --out --------------------------------------------------------------------------------------

def train_vae_into_a_finished_run(tmp: Path) -> tuple[str, str]:
    data, vae, _ = copy_runs(tmp)
    return refused_untouched(vae, "model.safetensors and config.json replaced",
                             ("train_vae.py", "--data", data, "--out", vae, *VAE),
                             "already holds a run", "--resume", "--overwrite")


def train_ldm_into_a_finished_run(tmp: Path) -> tuple[str, str]:
    _, vae, ldm = copy_runs(tmp)
    return refused_untouched(ldm, "the run's weights, config.json and checkpoints replaced",
                             ("train_ldm.py", "--vae", vae, "--out", ldm, *LDM),
                             "already holds a run", "--resume", "--overwrite")


# ---- 2. sample.py into the training data -----------------------------------------------------------------------------

def sample_into_the_training_data(tmp: Path) -> tuple[str, str]:
    data, _, ldm = copy_runs(tmp)
    return refused_untouched(data, "training images replaced, grid.png written into the data root",
                             ("sample.py", "--run", ldm, *SAMPLE, "--out", data), "inside the data folder")


# ---- 3. SIGTERM during sample.py -------------------------------------------------------------------------------------

def first_image(out: Path, proc: subprocess.Popen, seconds: float = 60) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if any(out.glob("*/*.png")):
            return True
        time.sleep(0.02)
    return False


def sigterm_during_sample(tmp: Path) -> tuple[str, str]:
    _, _, ldm = copy_runs(tmp)
    out = tmp / "samples"
    proc = start("sample.py", "--run", ldm, "--n-per-user", "40", "--batch-size", "1", "--steps", "4", "--out", out)
    if not first_image(out, proc):
        proc.kill()
        return "lost work", f"no image written before the end (exit {proc.wait()})"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    pngs = sorted(out.glob("*/*.png"))
    try:
        for png in pngs:
            Image.open(png).load()
    except OSError as e:
        return "lost work", f"a cut-short PNG: {e}"
    said = [line for line in stdout.splitlines() if "stopped:" in line]
    if proc.returncode != 130 or not said or f"{len(pngs)} of" not in said[0]:
        return "silently wrong", f"exit {proc.returncode}, {len(pngs)} images, said {said or stderr[-200:]!r}"
    return "handled", f"exit 130, every PNG whole; said: {said[0].replace(str(tmp), '…')}"


# ---- 4. two sample.py into one --out at once -------------------------------------------------------------------------

def two_samples_into_one_out(tmp: Path) -> tuple[str, str]:
    _, _, ldm = copy_runs(tmp)
    out = tmp / "samples"
    first = start("sample.py", "--run", ldm, "--n-per-user", "40", "--batch-size", "1", "--steps", "4", "--out", out)
    try:
        if not first_image(out, first):
            return "traceback", f"the first sample.py wrote nothing (exit {first.poll()})"
        second = script("sample.py", "--run", ldm, *SAMPLE, "--seed", "1", "--out", out)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    verdict = refused(second, "in use by sample.py")
    if verdict is None:
        return "silently wrong", "both wrote into one folder"
    return verdict[0], verdict[1].replace(str(tmp), "…")


# ---- 5. --users that could mean two users ----------------------------------------------------------------------------

def users_by_number(tmp: Path) -> tuple[str, str]:
    _, _, ldm = copy_runs(tmp)
    done = script("sample.py", "--run", ldm, *SAMPLE, "--users", "0,1", "--out", tmp / "samples")
    return refused(done, "ambiguous", "'1' (id:0)", "'2' (id:1)") or ("silently wrong", "sampled without a word")


def user_name_with_a_comma(tmp: Path) -> tuple[str, str]:
    _, _, ldm = copy_runs(tmp)
    done = script("sample.py", "--run", ldm, *SAMPLE, "--users", "smith,john", "--out", tmp / "samples")
    return refused(done, "ambiguous", "'smith,john' (id:", "'smith' (id:") or ("silently wrong", "sampled smith")


CASES = [
    Case("lost work", "train_vae.py --out <a finished run>", "model.safetensors and config.json replaced, no word",
         train_vae_into_a_finished_run),
    Case("lost work", "train_ldm.py --out <a finished run>", "the run replaced, no word",
         train_ldm_into_a_finished_run),
    Case("lost work", "sample.py --out <the run's training data>", "training images overwritten, grid.png in the "
         "data root, exit 0", sample_into_the_training_data),
    Case("lost work", "SIGTERM during sample.py", "exit 143, no message, images only at the end, last PNG truncated",
         sigterm_during_sample),
    Case("silently wrong", "two sample.py into one --out at once", "both said 'wrote 32 images'; one run's left",
         two_samples_into_one_out),
    Case("misleading", "--users 0,1 with user folders named 1…4", "ambiguous, no word", users_by_number),
    Case("misleading", "--users smith,john beside a user smith", "ambiguous, no word", user_name_with_a_comma),
]
