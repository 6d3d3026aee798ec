"""Run folders: what training writes and inference reads, in one place (no training code needed to load a run).

A run folder looks like this:

    runs/<name>/
      config.json                    every setting; written atomically at the start and updated at the end
      model.safetensors              the latest weights (what sample.py / train_ldm.py load)
      ema.safetensors                the EMA weights (latent-diffusion runs)
      checkpoints/step_00000400/     the latest complete training state, for --resume (tinyldm/train.py)
      log.jsonl                      one line of losses per step (loss curves are drawn from it)

Writes never leave a half-written file behind: each file is written under a temporary name and renamed
(`os.replace` is atomic on POSIX). Loading never unpickles arbitrary objects: weights are safetensors.
Bad input is a `RunError` (a ValueError), which `run_cli` turns into one line on stderr and exit code 2.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class RunError(ValueError):
    """A run folder that cannot be used as asked (missing, not a run, different config)."""


def run_cli(script: str, body, *args) -> int:
    """Run a script's body; bad input (ValueError, which DataError and RunError are) becomes one line on stderr
    and exit code 2, never a traceback. Bugs (any other exception) still show their traceback."""
    try:
        body(*args)
    except ValueError as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        return 2
    return 0


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


# ---- atomic files and weights ---------------------------------------------------------------------------------------

def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def atomic_write_json(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    _fsync_replace(tmp, path)


def atomic_save_weights(path: Path, state_dict: dict, metadata: dict | None = None) -> None:
    """state_dict → safetensors under a temporary name, then renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    _fsync_replace(tmp, path)


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist; is this a finished tinyldm run folder?")
    return load_file(str(path), device=str(device))


def check_writable(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} is a file; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunError(f"run folder {run_dir} is not writable ({e.strerror}); choose another --out") from None


# ---- config.json ---------------------------------------------------------------------------------------

def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a tinyldm run folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); was it edited by hand?") from None


# ---- the loss log ---------------------------------------------------------------------------------------

def append_log(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill; it is written again after resume
            continue
    return [r for r in records if up_to_step is None or r.get("step", 0) <= up_to_step]
