"""Issue 33's training-run cases: a finite divergence, a missing latent scale, data changed or moved under --resume,
a full disk, out of memory, a config.json that is a list, a device this machine lacks, a missing EMA file. Each runs
the scripts as a user would (subprocesses, tiny data, a few steps) and judges the exit code and the one error line.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from probes import Case

ROOT = Path(__file__).resolve().parents[2]
LDM = ["--batch-size", "4", "--grad-accum", "1", "--sample-every", "1000", "--ckpt-every", "1"]


def script(*args, env_code: str | None = None) -> subprocess.CompletedProcess:
    """python <script> args in the repository (or, with env_code, python -c code args), one thread."""
    cmd = [sys.executable, *(["-c", env_code] if env_code else []), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def folder(root: Path, users: int = 3, per_user: int = 8) -> Path:
    """Coloured stripes, a frequency per user, 32×32."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32
    for u in range(users):
        (root / f"user_{u:02d}").mkdir(parents=True)
        for i in range(per_user):
            base = np.sin(2 * np.pi * (u + 1) * xx + rng.uniform(0, 6.3)) * np.cos(2 * np.pi * yy)
            img = np.stack([base, np.roll(base, 3, axis=1), -base], axis=-1)
            Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(root / f"user_{u:02d}" / f"{i:03d}.png")
    return root


def vae(tmp: Path, steps: int = 2, **kw) -> Path:
    run = tmp / "vae"
    out = script("train_vae.py", "--data", folder(tmp / "data", **kw), "--out", run, "--image-size", "32",
                 "--batch-size", "4", "--val-fraction", "0.25", "--max-steps", steps)
    assert out.returncode == 0, out.stderr[-500:]
    return run


def ldm_stopped(tmp: Path) -> Path:
    """A DiT run of 3 steps stopped after 1 (resumable)."""
    run = tmp / "ldm"
    out = script("train_ldm.py", "--vae", vae(tmp), "--out", run, "--max-steps", 3, "--stop-after", 1, *LDM)
    assert out.returncode == 0, out.stderr[-500:]
    return run


def error_line(out: subprocess.CompletedProcess) -> str:
    """The script's one error line (without the progress bar drawn before it on the same line)."""
    found = re.search(r"[\w.]+: error: .*", out.stderr)
    return found.group(0) if found else out.stderr.strip()[-200:]


def judged(out: subprocess.CompletedProcess, *fragments: str, misleading: tuple[str, ...] = ()) -> tuple[str, str]:
    """A case that must end in exit 2 and one error line holding every fragment (and none of `misleading`)."""
    if "Traceback" in out.stderr:
        return "traceback", out.stderr.strip().splitlines()[-1]
    if out.returncode == 0:
        return "silently wrong", "exit 0: " + (out.stdout.strip().splitlines() or [""])[-1][:150]
    line = error_line(out)
    ok = out.returncode == 2 and all(f in line for f in fragments) and not any(m in line for m in misleading)
    return ("clear error" if ok else "misleading"), line


def edit_config(run: Path, change) -> None:
    cfg = json.loads((run / "config.json").read_text())
    change(cfg)
    (run / "config.json").write_text(json.dumps(cfg))


# ---- the cases ----------------------------------------------------------------------------------------------------

def finite_divergence(tmp: Path):
    out = script("train_vae.py", "--data", folder(tmp / "data", 2, 16), "--out", tmp / "vae", "--image-size", 32,
                 "--batch-size", 4, "--val-fraction", 0, "--lr", 10, "--grad-clip", 0, "--max-steps", 30,
                 "--ckpt-every", 1)
    return judged(out, "training diverged", "stayed above", "Lower --lr")


def missing_scale(tmp: Path):
    run = vae(tmp)
    edit_config(run, lambda c: c["model"].pop("scaling_factor"))
    out = script("train_ldm.py", "--vae", run, "--out", tmp / "ldm", "--max-steps", 1, *LDM)
    line = next((x for x in out.stdout.splitlines() if "scaling_factor" in x), "")
    if out.returncode != 0:
        return judged(out, "scaling_factor")
    scale = json.loads((tmp / "ldm" / "config.json").read_text())["scaling_factor"]
    if "measured by train_vae.py" in line or scale == 0.18215:
        return "silently wrong", line
    return "handled", line.split("; ", 1)[-1]


def data_changed(tmp: Path):
    run = ldm_stopped(tmp)
    shutil.rmtree(tmp / "data" / "user_02")
    return judged(script("train_ldm.py", "--resume", run), "not what the run started on", "users removed user_02",
                  misleading=("damaged",))


def resume_with(run: Path, patch: str):
    """train_ldm.py --resume RUN in a Python where `patch` (run after `import sys, torch, train_ldm`) replaced
    something, e.g. torch.save by a function that fails as a full disk does."""
    code = f"import sys, torch, train_ldm\n{patch}\nsys.exit(train_ldm.main(sys.argv[1:]))"
    return script("--resume", run, env_code=code)


def disk_full(tmp: Path):
    run = ldm_stopped(tmp)
    out = resume_with(run, "def full(*a, **k): raise RuntimeError('PytorchStreamWriter failed writing file data/3: "
                           "file write failed; basic_ios::clear: iostream error')\ntorch.save = full")
    intact = (run / "checkpoints" / "step_00000001" / "train_state.pt").is_file()
    verdict, line = judged(out, "disk full while writing", "--resume")
    return (verdict if intact else "lost work"), line


def out_of_memory(tmp: Path):
    run = ldm_stopped(tmp)
    out = resume_with(run, "def oom(tr): raise RuntimeError(\"DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 7340032000 bytes. Error code 12 (Cannot allocate memory)\")\n"
                           "train_ldm.training_step = oom")
    return judged(out, "out of memory", "--batch-size")


def config_is_a_list(tmp: Path):
    run = ldm_stopped(tmp)
    (run / "config.json").write_text("[1, 2, 3]")
    return judged(script("sample.py", "--run", run, "--n-per-user", 1, "--steps", 2), "JSON list")


def missing_device(tmp: Path):
    run = ldm_stopped(tmp)
    out = script(run, env_code="import sys; from tinyldm.runs import run_cli; from tinyldm.loading import load_ldm\n"
                               "sys.exit(run_cli('load_ldm', lambda r: load_ldm(r, device='cuda:7'), sys.argv[1]))")
    return judged(out, "cuda:7")


def moved_data_resume(tmp: Path):
    run = ldm_stopped(tmp)
    moved = (tmp / "data").rename(tmp / "moved")
    refused = script("train_ldm.py", "--resume", run)
    if "pass --data" not in error_line(refused):
        return judged(refused, "pass --data")
    out = script("train_ldm.py", "--resume", run, "--data", moved)
    if out.returncode != 0:
        return judged(out, "pass --data")
    other = folder(tmp / "other", users=4)
    wrong = script("train_ldm.py", "--resume", run, "--data", other)
    verdict, line = judged(wrong, "not what the run started on")
    return ("handled" if verdict == "clear error" else verdict), f"--data MOVED resumes; other data: {line}"


def moved_data_evaluate(tmp: Path):
    run = vae(tmp)
    (tmp / "data").rename(tmp / "moved")
    refused = script("evaluate.py", "--run", run, "--no-cache", "--no-tstr")
    line = error_line(refused)
    if "pass --data" in line:
        help_text = script("evaluate.py", "--help").stdout
        return ("clear error" if "--data DIR" in help_text else "misleading"), line + " (evaluate.py has --data)"
    return judged(refused, "pass --data")


def missing_ema(tmp: Path):
    run = ldm_stopped(tmp)
    (run / "checkpoints" / "step_00000001" / "ema.safetensors").unlink()
    return judged(script("train_ldm.py", "--resume", run), "ema.safetensors is missing", misleading=("does not fit",))


CASES = [
    Case("silently wrong", "train_vae.py --lr 10 --grad-clip 0 (finite blow-up)",
         "loss 0.8 → 5e6, exit 0, scaling_factor 0.0000", finite_divergence),
    Case("silently wrong", "autoencoder config.json without scaling_factor",
         "trained with the preset 0.18215, said '(measured by train_vae.py)'", missing_scale),
    Case("silently wrong", "--resume after a user folder was removed",
         "resumed on the new set without a word / 'damaged or mixed with another run?'", data_changed),
    Case("raw traceback", "disk full while writing a checkpoint", "RuntimeError: basic_ios::clear traceback",
         disk_full),
    Case("raw traceback", "out of memory in a training step", "DefaultCPUAllocator: can't allocate memory traceback",
         out_of_memory),
    Case("raw traceback", "config.json that is a JSON list", "AttributeError traceback", config_is_a_list),
    Case("raw traceback", "load_ldm(device='cuda:7') on a CPU build", "AssertionError traceback", missing_device),
    Case("misleading", "train_ldm.py --resume after the data moved", "'pass --data DIR', but --resume refused --data",
         moved_data_resume),
    Case("misleading", "evaluate.py --run after the data moved", "'pass --data DIR', but evaluate had no --data",
         moved_data_evaluate),
    Case("misleading", "--resume with the checkpoint's ema.safetensors gone", "'the checkpoint's EMA does not fit'",
         missing_ema),
]
