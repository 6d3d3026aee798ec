"""Checkpoints: a training run's resumable state, written atomically and read back with one-line errors.

Inside a run folder (tinyldm/runs.py):

    checkpoints/step_00000400/     the latest complete training state, for --resume
        model.safetensors  [ema.safetensors]  train_state.pt

A checkpoint folder is complete before it gets its final name, and the previous checkpoint is deleted only
after the new one is in place. The training state goes through `torch.load(weights_only=True)`.
"""

import os
import pickle
import shutil
from pathlib import Path

import torch

from tinyldm.runs import RunError, atomic_save_weights, is_disk_full, load_weights


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, dict], train_state: dict) -> Path:
    """Write checkpoints/step_<step>/ completely, rename it into place, export the weights, drop older ones.

    weights: {"model": state_dict, "ema": state_dict, ...} → <name>.safetensors each.
    train_state: tensors, numbers, strings, lists and dicts only (optimizer state, step, RNG states).
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    previous = latest_checkpoint(run_dir)
    try:
        tmp.mkdir()
        for name, sd in weights.items():
            atomic_save_weights(tmp / f"{name}.safetensors", sd, {"step": step})
        torch.save(train_state, tmp / "train_state.pt")
        with open(tmp / "train_state.pt", "rb") as f:
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # a full disk: drop the partial folder, the previous checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_disk_full(e):
            raise
        kept = f"the previous checkpoint {previous} is intact" if previous else "no checkpoint was written yet"
        raise RunError(f"disk full while writing the checkpoint of step {step} ({tmp}); {kept}: free space and "
                       f"continue with --resume {run_dir}") from None
    if final.exists():  # same step saved twice (e.g. the end of a resumed run): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    # The new checkpoint is complete; now the exported weights and the older checkpoints can change.
    try:
        for name, sd in weights.items():
            atomic_save_weights(Path(run_dir) / f"{name}.safetensors", sd, {"step": step})
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        raise RunError(f"disk full while writing {run_dir}'s weights of step {step}; the checkpoint {final} is "
                       f"complete: free space and continue with --resume {run_dir}") from None
    for old in ckpt_root.glob("step_*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("step_*"))
    return ckpts[-1] if ckpts else None


# The weights files a run's checkpoint holds, by kind of run (besides train_state.pt).
CHECKPOINT_WEIGHTS = {"autoencoder": ("model",), "ldm": ("model", "ema")}


def _read_checkpoint(ckpt: Path, needs: tuple[str, ...]) -> tuple[dict[str, dict], dict]:
    """One checkpoint folder → (weights, train_state); anything missing or damaged is a RunError naming the file."""
    state_path = ckpt / "train_state.pt"
    files = [f"{name}.safetensors" for name in needs] + ["train_state.pt"]
    missing = [f for f in files if not (ckpt / f).is_file()]
    if missing:
        raise RunError(f"{ckpt} is incomplete: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                       f"missing (a checkpoint holds {', '.join(files)})")
    weights = {p.stem: load_weights(p) for p in sorted(ckpt.glob("*.safetensors"))}
    try:
        train_state = torch.load(state_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(f"{state_path} is not a tinyldm training state; it was not loaded") from None
    except (EOFError, RuntimeError, OSError) as e:
        raise RunError(f"{state_path} cannot be read ({str(e).splitlines()[0][:80]}): it was cut short or damaged"
                       ) from None
    if not isinstance(train_state, dict) or "step" not in train_state:
        raise RunError(f"{state_path} is not a tinyldm training state (no step); it was not used")
    return weights, train_state


def load_checkpoint(run_dir: Path, needs: tuple[str, ...] = ("model",)) -> tuple[dict[str, dict], dict]:
    """→ ({"model": state_dict, ...}, train_state) of the newest complete checkpoint of a run (one with the weights
    files `needs` names); a newer folder that is incomplete or damaged is passed over, with a notice, for the one
    before it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"--resume {run_dir}: no such folder")
    if not (run_dir / "config.json").is_file():
        raise RunError(f"--resume {run_dir}: not a tinyldm run (no config.json); pass the folder a training run wrote")
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), reverse=True)
    if not ckpts:
        raise RunError(f"--resume {run_dir}: the run has no checkpoint yet (checkpoints/step_*); start it afresh "
                       "with --overwrite")
    for i, ckpt in enumerate(ckpts):
        try:
            loaded = _read_checkpoint(ckpt, needs)
        except RunError as e:
            if i == len(ckpts) - 1:
                raise
            print(f"notice: {e}; resuming from the checkpoint before it, {ckpts[i + 1].name}", flush=True)
            continue
        return loaded


def restore(module, state: dict, what: str) -> None:
    """module.load_state_dict(state) for a model or an optimizer; a checkpoint that does not fit is one line."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise RunError(f"the checkpoint's {what} does not fit this run ({str(e).splitlines()[0][:100]}); was the "
                       "checkpoint folder damaged or mixed with another run?") from None
