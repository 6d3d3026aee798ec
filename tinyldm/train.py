"""Training pieces shared by train_vae.py and train_ldm.py: DDP, LR schedule, EMA, RNG state, resuming, the
divergence guard. The checkpoints themselves are tinyldm/checkpoints.py."""

import argparse
import hashlib
import json
import math
import os
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tinyldm.checkpoints import CHECKPOINT_WEIGHTS, latest_checkpoint, load_checkpoint
from tinyldm.runs import (
    RunError,
    atomic_write_json,
    check_new_run_folder,
    check_out_not_in_data,
    check_writable,
    lock_run,
    read_config,
    read_log,
    resolve_device,
    unlock_run,
)


def init_distributed(device_name: str = "auto") -> tuple[int, int, torch.device]:
    """→ (rank, world_size, device). Under `torchrun` (WORLD_SIZE > 1) joins the process group: NCCL with one GPU
    per process on CUDA, gloo on CPU. A plain `python script.py` is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, resolve_device(device_name)
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def lr_at(step: int, base_lr: float, warmup: int = 0, total: int = 0, kind: str = "constant") -> float:
    """Linear warmup over `warmup` steps, then constant or half-cosine decay to 0 at `total` steps."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return base_lr
    if kind == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"lr schedule {kind!r}: choose 'constant' or 'cosine'")


# ---- EMA of the weights --------------------------------------------------------------------------------

def ema_decay_at(step: int, decay: float = 0.9999, warmup: bool = True) -> float:
    """Decay for the EMA's `step`-th update (0-based): min(decay, (1 + k)/(10 + k)) with warmup, so the early
    average is not dominated by the random init (the schedule of the original LDM/TF EMA code)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← d·θ_ema + (1 − d)·θ for parameters; buffers are copied."""
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - decay)
    for b_ema, b in zip(ema_model.buffers(), model.buffers()):
        b_ema.copy_(b)


# ---- RNG state: every source of randomness a training step touches, so resume is exact -------------------

def rng_state() -> dict:
    version, mt_words, gauss_next = random.getstate()
    _, np_words, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": list(mt_words),  # Mersenne-Twister words (the last one is the position)
        "python_gauss": gauss_next,
        "numpy": torch.from_numpy(np_words.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_gauss": [int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- the data order --------------------------------------------------------------------------------------

EPOCH_SEED_STRIDE = 100_003  # epoch e of a run with seed s shuffles with seed s·100,003 + e (a prime: no collisions)


def apply_recipe(args: argparse.Namespace, recipe: dict) -> None:
    """Fill each option not given on the command line (None) from the preset's recipe (the scripts' RECIPES:
    the settings measured fastest to quality for the CPU presets, the seed's own for the seed preset). The recipe's
    training length (max_steps or epochs) is used only when neither --max-steps nor --epochs was given."""
    length_given = getattr(args, "max_steps", None) is not None or getattr(args, "epochs", None) is not None
    for key, value in recipe.items():
        if key in ("epochs", "max_steps") and length_given:
            continue
        if getattr(args, key) is None:
            setattr(args, key, value)


def training_length(args: argparse.Namespace, n: int, batch: int) -> tuple[int, str]:
    """→ (optimizer steps in all, why that many) for n training items in batches of `batch`. --max-steps counts
    steps whatever the data's size (the CPU recipes' unit: a smaller set gets as many steps, not fewer); --epochs
    counts passes over the data (the seed's unit), n // batch steps each."""
    steps_per_epoch = n // batch
    if args.max_steps is not None:
        return args.max_steps, f"{args.max_steps} optimizer steps (= {args.max_steps / steps_per_epoch:.1f} epochs " \
                               f"of these {n} items)"
    total = args.epochs * steps_per_epoch
    return total, f"{args.epochs} epochs × {steps_per_epoch} steps (of these {n} items) = {total} optimizer steps"


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of optimizer step `step`'s batch: a fresh permutation of the n items each epoch, cut into
    n // batch_size batches (the rest of an epoch is dropped). A function of the step, so resume is exact."""
    epoch, i = divmod(step, n // batch_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch))
    return order[i * batch_size:(i + 1) * batch_size]  # (batch_size,)


def adamw(params, lr: float, weight_decay: float = 0.0, fused: bool = True) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019). fused: PyTorch's one-kernel implementation of the same update (the tiny
    DiT's bf16 training step 1.13× faster on 2 CPU cores, docs/speedrun.md); False: PyTorch's default, what runs
    written before --fused-optimizer trained with, so that resuming them stays exact."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# ---- resuming ------------------------------------------------------------------------------------------

def resume_args(saved: dict, cli: argparse.Namespace, defaults: argparse.Namespace, allowed: tuple[str, ...],
                where: str) -> argparse.Namespace:
    """The settings of a resumed run: the saved ones, plus the few options in `allowed` that the command line
    sets. Any other option set on the command line to a different value is an error, not a silent change."""
    merged = {**vars(defaults), **saved, "stop_after": None}  # an option the run never stored keeps its default
    for key, value in vars(cli).items():
        if key == "resume" or value == getattr(defaults, key):
            continue  # not given on the command line
        if key in allowed:
            merged[key] = value
        elif str(value) != str(saved.get(key)):
            flag = "--" + key.replace("_", "-")
            raise RunError(f"{where} was trained with {flag} {saved.get(key)}, not {value}; a resumed run keeps "
                           f"its settings (drop {flag}, or start a new run with another --out)")
    merged["resume"] = cli.resume
    return argparse.Namespace(**merged)


def args_record(args: argparse.Namespace, stored_elsewhere: dict[str, tuple[str, ...]]) -> dict:
    """The options for config.json's "args": every option not stored elsewhere in config.json (`stored_elsewhere`
    maps an option to its path there), so each setting is written once; paths as text."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in stored_elsewhere}


def saved_args(config: dict, stored_elsewhere: dict[str, tuple[str, ...]]) -> dict:
    """The inverse of `args_record`: a run's options, read from "args" and from where the others are stored.
    An option whose path is absent (e.g. the β schedule of a flow run) keeps the command line's default."""
    saved = dict(config["args"])
    for option, path in stored_elsewhere.items():
        node = config
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            saved[option] = node
    return saved


# ---- the data a run reads: the same on --resume -----------------------------------------------------------

def data_fingerprint(*splits) -> dict:
    """What identifies the images a run reads (UserImageFolder splits), for config.json: the images per user and
    sha256 over the sorted (user, file name, size in bytes) of every file. Paths are left out, so a moved data
    folder (--data on --resume) has the same fingerprint; contents are not read (that would cost a pass over the
    data), so an image edited in place at the same size goes unnoticed."""
    files = {path: (ds.classes[user], path.name, path.stat().st_size) for ds in splits for path, user, _ in ds.samples}
    per_user = {}
    for user, _, _ in files.values():
        per_user[user] = per_user.get(user, 0) + 1
    digest = hashlib.sha256(json.dumps(sorted(files.values())).encode()).hexdigest()
    return {"images": len(files), "images_per_user": dict(sorted(per_user.items())), "sha256": digest}


def check_same_data(run_dir: Path, data: Path, now: dict) -> None:
    """--resume: refuse data that is not what the run started on (config.json's "data_fingerprint"; `now`: the
    data's fingerprint today), naming what changed. Runs written before fingerprints are compared by users only."""
    saved = read_config(run_dir)
    before = saved.get("data_fingerprint")
    if before is not None and before["sha256"] == now["sha256"]:
        return
    users = saved["classes"] if "classes" in saved else saved.get("data", {}).get("classes", [])  # ldm / autoencoder
    old = before["images_per_user"] if before is not None else dict.fromkeys(users)
    new = now["images_per_user"]
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    if before is None and not added and not removed:
        return
    changes = [f"users {what} {', '.join(names[:3])}{'…' if len(names) > 3 else ''} ({len(names)})"
               for what, names in (("added", added), ("removed", removed)) if names]
    if before is not None:
        if before["images"] != now["images"]:
            changes.append(f"{before['images']} → {now['images']} images")
        changes += [f"{u}: {old[u]} → {new[u]} images" for u in sorted(old.keys() & new.keys()) if old[u] != new[u]
                    ][:2]
        if not changes:
            changes.append("the same users and numbers of images, but files renamed, replaced or resized")
    raise RunError(f"--resume {run_dir}: the data at {data} is not what the run started on ({'; '.join(changes)}); "
                   "a resumed run must see the same images: restore them (if the data moved, pass --data with its "
                   "new folder), or start a new run with another --out")


def resume_run(run_dir: Path, kind: str, script: str, args: argparse.Namespace, defaults: argparse.Namespace,
               allowed: tuple[str, ...], stored_elsewhere: dict[str, tuple[str, ...]], added_later: dict | None = None
               ) -> tuple[argparse.Namespace, dict[str, dict], dict]:
    """--resume RUN → (the run's settings with the `allowed` command-line changes, weights, training state).
    added_later: options that did not exist when older runs were written → what those runs did, so that resuming
    them stays exact (e.g. a constant learning rate from before --lr-schedule)."""
    weights, train_state = load_checkpoint(run_dir, CHECKPOINT_WEIGHTS[kind])
    saved = read_config(run_dir)
    if saved.get("kind") != kind:
        raise RunError(f"--resume {run_dir}: a {saved.get('kind')!r} run, not a {script} run")
    missing = {"optimizer", "rng"} - train_state.keys()
    if missing:
        raise RunError(f"--resume {run_dir}: its checkpoint's train_state.pt lacks {sorted(missing)}; it is not a "
                       f"{script} training state")
    settings = {**(added_later or {}), **saved_args(saved, stored_elsewhere)}
    args = resume_args(settings, args, defaults, allowed, f"--resume {run_dir}")
    return args, weights, train_state


def claim_run_folder(run_dir: Path, script: str, data: Path, *, resuming: bool, overwrite: bool) -> None:
    """Make the run folder (never inside the data) and take its lock (one writer), before any long work, so a
    second writer is told at once. A new run never replaces a run already there unless `overwrite` (--overwrite)."""
    check_out_not_in_data(run_dir, data)
    check_writable(run_dir)
    lock_run(run_dir, script)
    if not resuming:
        try:
            check_new_run_folder(run_dir, script, overwrite)
        except RunError:
            unlock_run(run_dir)  # refused: the folder is left as it was
            raise


def start_run_folder(run_dir: Path, config: dict, step: int) -> None:
    """Write config.json into the claimed run folder; a new run starts a new log, a resumed one forgets the lines
    written after its checkpoint (they will be written again)."""
    if step == 0:
        (Path(run_dir) / "log.jsonl").unlink(missing_ok=True)
    else:
        truncate_log(run_dir, step)
    atomic_write_json(Path(run_dir) / "config.json", config)


def stopped_message(script: str, step: int, run_dir: Path) -> str:
    return f"stopped at step {step} (--stop-after); continue with: python {script} --resume {run_dir}"


def check_finite_step(loss: float, grad_norm: torch.Tensor, step: int, run_dir: Path, lr: float) -> None:
    """Stop at the first non-finite loss or gradient, before the optimizer step: the weights, and the checkpoints
    on disk, stay finite. Training on would only write NaN weights and black samples."""
    if math.isfinite(loss) and torch.isfinite(grad_norm):
        return
    what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm.item()}"
    raise diverged(f"{what} (learning rate {lr:g})", step, run_dir, "finite")


def diverged(what: str, step: int, run_dir: Path, kept: str) -> RunError:
    ckpt = latest_checkpoint(run_dir)
    keep = f"the last {kept} checkpoint is {ckpt}" if ckpt else "no checkpoint was written yet"
    return RunError(f"training diverged at step {step + 1}: {what}; {keep}. Lower --lr (and resume, or start "
                    "again), or check the data")


# The finite half of the divergence guard: a loss above DIVERGENCE_FACTOR (K) × its best so far for DIVERGENCE_STEPS
# (P) steps in a row, the best being the lowest median of DIVERGENCE_WINDOW consecutive losses (one lucky batch does
# not set it). The CPU recipes' curves (runs/*/log.jsonl of the tiny, compact and activities demos, VAE and DiT)
# reach at most 2.8× that best for one step and 1.7× for 5 in a row, the VAE's early steep fall included (it only
# lowers the best); a blow-up (the VAE at --lr 10 --grad-clip 0: 0.8 → 5·10⁶) passes 10× within a few steps.
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_STEPS = 5
DIVERGENCE_WINDOW = 10


@dataclass
class LossWatch:
    """What `check_loss_trend` remembers of a run's losses (since its start or resume)."""

    recent: list[float] = field(default_factory=list)  # the last DIVERGENCE_WINDOW losses
    best: float = math.inf  # the lowest median of DIVERGENCE_WINDOW consecutive losses so far
    above: int = 0  # steps in a row with a loss above DIVERGENCE_FACTOR × best

    @property
    def suspect(self) -> bool:
        """The last loss was above K × best: a periodic checkpoint waits (it might hold diverging weights)."""
        return self.above > 0


def check_loss_trend(watch: LossWatch, loss: float, step: int, run_dir: Path, lr: float) -> None:
    """Stop a run whose loss stays finite but blows up: above K × its best for P steps in a row (see above). The
    periodic checkpoints skip the suspect steps, so the last one on disk predates the rise."""
    watch.above = watch.above + 1 if loss > DIVERGENCE_FACTOR * watch.best else 0
    watch.recent = (watch.recent + [loss])[-DIVERGENCE_WINDOW:]
    watch.best = min(watch.best, statistics.median(watch.recent))
    if watch.above >= DIVERGENCE_STEPS:
        raise diverged(f"the loss {loss:.3g} has stayed above {DIVERGENCE_FACTOR:g}× its best ({watch.best:.3g}) "
                       f"for {DIVERGENCE_STEPS} steps (learning rate {lr:g})", step, run_dir, "good")


def truncate_log(run_dir: Path, up_to_step: int) -> None:
    """On resume, forget log lines written after the checkpoint (they will be written again)."""
    records = read_log(run_dir, up_to_step)
    path = Path(run_dir) / "log.jsonl"
    tmp = path.with_name(".log.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
