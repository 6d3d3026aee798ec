"""The user-ID classifier that every generated-image metric is measured with: a small ResNet-style CNN.

Inception features (FID) are out of domain for spectrograms and need a download, so tinyldm measures in the
feature space of a classifier trained on the real data, as radar papers do for synthetic micro-Doppler.
Its real-validation accuracy is the ceiling that every figure on generated images is read against.

    x (B, C, H, W) in [−1, 1]
      shrink area average to S × S                  (B, C, S, S)         S = min(H, 64): INPUT_SIZE
      stem   conv 3×3 stride 2                      (B, w0, S/2, S/2)
      stages BasicBlock per width, stride 2 after the first
      pool   mean over time (columns) only          (B, w_last, H')      Doppler position is identity, keep it
      embed  flatten → Linear → ReLU = features f   (B, D)               the penultimate features
      head   dropout → Linear                       (B, num_classes)

Pooling over time alone makes the features (nearly) invariant to the circular time shift of the augmentation
while keeping *where* in Doppler the energy lies (walking speed, limb swing), which is what tells people apart.

Larger images are seen as 64×64 thumbnails (INPUT_SIZE; the augmentation too). At 256×256 the classifier then costs
what it costs at 64×64 (16× fewer pixels per image), and what it reads — the shape of the Doppler envelope over
the gait cycle — survives a 4× area average (docs/evaluation.md: its ceiling and cost at 256×256).
"""

import copy
import hashlib
import inspect
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tinyldm.data import DataError, SpectrogramAugment
from tinyldm.runs import (
    RunError,
    atomic_save_weights,
    atomic_write_json,
    autocast_dtype,
    autocast_to,
    load_weights,
    read_config,
)
from tinyldm.threads import share_cores

INPUT_SIZE = 64  # the side larger images are area-downscaled to before the classifier sees them
MIN_EPOCH_STEPS = 10  # optimizer steps per "epoch" (and per early-stopping check) on small data sets
# The classifier's augmentation. The blur matters: trained without it, the classifier reads identity partly off
# the speckle of the noise floor, which every autoencoder smooths; on the tiny set its accuracy on real images
# blurred by σ = 1 px fell from 98 % to 39 %, with it it stays at 97 % (docs/evaluation.md).
AUGMENT = SpectrogramAugment(blur=1.5)
# Training computes in bf16 where the CPU (or GPU) multiplies it in hardware, as the models do (tinyldm.runs.
# autocast_dtype "auto"); the weights stay float32 and the metrics embed in float32 (`embed`).
TRAIN_PRECISION = "auto"


@dataclass
class ClassifierConfig:
    num_classes: int                                 # users
    in_channels: int = 3                             # 1 (grey) or 3 (RGB)
    image_size: int = 64                             # H = W of the images it is given
    input_size: int | None = None                    # S: the side they are area-downscaled to (None: image_size)
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # channels per stage; stage i>0 halves H, W
    feature_dim: int = 64                            # D, the penultimate features the metrics use
    dropout: float = 0.2                             # on the features, before the head

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"a user-ID classifier needs at least 2 users, got num_classes={self.num_classes}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        min_size = 2 ** len(self.widths)
        if self.size % min_size:
            raise ValueError(f"the classifier's input size {self.size} must be divisible by {min_size} "
                             f"(the stem and {len(self.widths) - 1} stride-2 stages); use e.g. 32, 64 or 128")

    @property
    def size(self) -> int:
        """S, the side of what the stem sees."""
        return self.input_size or self.image_size


def shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C, size, size) by area averaging (each output pixel the mean of the input pixels it
    covers); unchanged when it already has that size."""
    return x if x.shape[-2:] == (size, size) else F.interpolate(x, size=(size, size), mode="area")


class BasicBlock(nn.Module):
    """He et al. 2016: relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)), shortcut a 1×1 conv when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))  # (B, c_out, H/s, W/s)
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class UserClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        self.stem = nn.Sequential(nn.Conv2d(c.in_channels, c.widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(c.widths[0]), nn.ReLU())
        blocks, c_in = [], c.widths[0]
        for i, w in enumerate(c.widths):
            blocks.append(BasicBlock(c_in, w, stride=1 if i == 0 else 2))
            c_in = w
        self.blocks = nn.Sequential(*blocks)
        rows = c.size // 2 ** len(c.widths)  # H' after the stem and the strided stages
        self.embed = nn.Linear(c.widths[-1] * rows, c.feature_dim)
        self.head = nn.Linear(c.feature_dim, c.num_classes)
        self.dropout = nn.Dropout(c.dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [−1, 1] → penultimate features f (B, D)."""
        x = shrink(x, self.config.size)  # (B, C, S, S)
        h = self.blocks(self.stem(x))  # (B, w_last, H', W')
        h = h.mean(dim=-1).flatten(1)  # (B, w_last·H'): mean over time
        return F.relu(self.embed(h))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))  # (B, num_classes) logits


@torch.no_grad()
def embed(model: UserClassifier, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, C, H, W) in [−1, 1] → (features (N, D), logits (N, num_classes)), in eval mode, float32."""
    model.eval()
    device = next(model.parameters()).device
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(images[start:start + batch_size].to(device).float())  # (b, D)
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless index batches (batch_size,): a seeded shuffle per pass; the last partial batch of a pass is dropped
    (BatchNorm dislikes tiny batches)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for b in range(n // batch_size):
            yield order[b * batch_size:(b + 1) * batch_size]


def train_classifier(train_x: torch.Tensor, train_y: torch.Tensor, config: ClassifierConfig,
                     val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
                     max_epochs: int = 15, patience: int = 5, fixed_steps: int | None = None, batch_size: int = 64,
                     lr: float = 2e-3, weight_decay: float = 5e-4, seed: int = 0, device="cpu",
                     desc: str = "classifier") -> tuple[UserClassifier, dict]:
    """Train on (train_x (N, C, H, W), train_y (N,)) with AUGMENT; → (best model in eval mode, history).

    With a validation set: keep the weights of the epoch with the best validation accuracy (ties: lower
    validation loss) and stop after `patience` epochs without improvement. With `fixed_steps` instead (TSTR,
    where the real validation set is the test set and must not choose anything): train exactly that many
    optimizer steps and keep the last weights. Deterministic for a seed (own generator; global RNG untouched).
    """
    if (val_x is None) == (fixed_steps is None):
        raise ValueError("give either a validation set (early stopping) or fixed_steps, not both or neither")
    n = len(train_x)
    if n < 2:
        raise DataError(f"training a classifier needs at least 2 images, got {n}")
    train_x = shrink(train_x, config.size)  # (N, C, S, S): augmented at the size the classifier sees
    g = torch.Generator().manual_seed(seed)
    # An "epoch" is one pass over the data, but at least MIN_EPOCH_STEPS steps, so that small sets still train.
    steps_per_epoch = max(n // batch_size, MIN_EPOCH_STEPS)
    total = fixed_steps if fixed_steps is not None else max_epochs * steps_per_epoch
    with torch.random.fork_rng(devices=[]):  # init and dropout draw from the global RNG: seed it, then restore it
        torch.manual_seed(seed)
        model = UserClassifier(config).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
        history = {"epochs": [], "best_epoch": 0, "best_val_acc": 0.0, "best_step": 0}
        best_key, best_state, step, epoch, t0 = None, None, 0, 0, time.time()
        batches = shuffled_batches(n, min(batch_size, n), g)
        amp = autocast_dtype(torch.device(device), TRAIN_PRECISION)  # bf16 or None (float32)
        bar = tqdm(total=total, desc=desc, unit="step", leave=False)
        while step < total:
            # One epoch of steps, one fresh augmentation per image.
            epoch += 1
            n_steps = min(steps_per_epoch, total - step)
            train_loss = train_epoch(model, opt, sched, train_x, train_y, batches, n_steps, g, device, bar, amp)
            step += n_steps
            record = {"epoch": epoch, "step": step, "train_loss": train_loss}
            if val_x is not None:
                # Early stopping on the real validation split.
                _, logits = embed(model, val_x)
                record["val_acc"] = (logits.argmax(1) == val_y).float().mean().item()
                record["val_loss"] = F.cross_entropy(logits, val_y).item()
                key = (record["val_acc"], -record["val_loss"])
                if best_key is None or key > best_key:
                    best_key, best_state = key, copy.deepcopy(model.state_dict())
                    history.update(best_epoch=epoch, best_val_acc=record["val_acc"], best_step=step)
                bar.set_postfix(val_acc=f"{record['val_acc']:.3f}", best=f"{best_key[0]:.3f}")
            history["epochs"].append(record)
            if val_x is not None and epoch - history["best_epoch"] >= patience:
                break
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    history.update(steps=step, train_seconds=time.time() - t0)
    return model.eval(), history


def train_epoch(model, opt, sched, train_x, train_y, batches, n_steps: int, g: torch.Generator, device, bar,
                amp: torch.dtype | None = None) -> float:
    """n_steps optimizer steps on batches drawn from `batches`, one fresh augmentation per image, the forward pass
    autocast to `amp` (None: float32) → mean loss."""
    model.train()
    losses = []
    for _ in range(n_steps):
        share_cores()
        idx = next(batches)
        x = AUGMENT(train_x[idx].float(), generator=g).to(device)  # (B, C, S, S), each image its own draws
        with autocast_to(device, amp):
            loss = F.cross_entropy(model(x), train_y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.update(1)
    return sum(losses) / len(losses)


# ---- saving and reusing the classifier of a data set ----------------------------------------------------------

def stack_split(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """A UserImageFolder → (images (N, C, H, W) in [−1, 1], user ids (N,)); filled in place, one image at a time
    (a list of images, then a stack, would hold the split twice: 6.6 GB for 4,185 images at 256×256)."""
    x = torch.empty(len(ds), ds.channels, ds.image_size, ds.image_size)
    ys = []
    for i in range(len(ds)):
        x[i], user_id = ds[i]
        ys.append(user_id)
    return x, torch.tensor(ys)


def data_key(train_ds, val_ds) -> dict:
    """What a saved classifier must match to be reused: its data split and its augmentation."""
    return {"root": str(Path(train_ds.root).resolve()), "image_size": train_ds.image_size,
            "channels": train_ds.channels, "classes": train_ds.classes, "val_fraction": train_ds.val_fraction,
            "seed": train_ds.seed, "n_train": len(train_ds), "n_val": len(val_ds), "augment": asdict(AUGMENT)}


def load_classifier(folder: Path, device="cpu") -> tuple[UserClassifier, dict]:
    """A saved classifier folder (config.json + model.safetensors) → (model in eval mode, its config.json)."""
    saved = read_config(folder)
    if saved.get("kind") != "classifier":
        raise RunError(f"{folder} holds a {saved.get('kind')!r} run, not a user-ID classifier; choose another folder")
    model = UserClassifier(ClassifierConfig(**saved["config"]))
    model.load_state_dict(load_weights(Path(folder) / "model.safetensors"))
    return model.to(device).eval(), saved


def save_classifier(folder: Path, model: UserClassifier, saved: dict) -> None:
    """model.safetensors + config.json (the record) into folder, each file written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_weights(folder / "model.safetensors", model.state_dict())
    atomic_write_json(folder / "config.json", saved)


# ---- the shared cache: one classifier per data set and settings, for every run folder -------------------------

def cache_root() -> Path:
    """Where classifiers are shared between run folders: $TINYLDM_CACHE/classifier, else ~/.cache/tinyldm/classifier."""
    return Path(os.environ.get("TINYLDM_CACHE") or Path.home() / ".cache" / "tinyldm") / "classifier"


def cache_key(train_x, train_y, val_x, val_y, data: dict, config: ClassifierConfig, seed: int, device,
              train_kwargs: dict) -> dict:
    """Everything the trained weights depend on, so that a cache hit is bit-identical to training afresh: the
    pixels and labels of both splits (a changed, added or removed image changes them; where the data lies does
    not), the split and augmentation, the architecture, seed and training settings, the device type and the precision
    it trains in (bf16 only where the hardware has it), the torch version and the training code itself (this file and
    the augmentation's)."""
    pixels = hashlib.sha256()
    for t in (train_x, train_y, val_x, val_y):  # (N, C, H, W) float32 and (N,) int64
        pixels.update(t.contiguous().numpy())  # the array's own buffer: .tobytes() would copy 3.3 GB at 256×256 first
    code = hashlib.sha256(Path(__file__).read_bytes() + Path(inspect.getfile(SpectrogramAugment)).read_bytes())
    key = {"data": {k: v for k, v in data.items() if k != "root"}, "pixels": pixels.hexdigest(),
           "config": asdict(config), "seed": seed, "train": dict(sorted(train_kwargs.items())),
           "device": torch.device(device).type, "torch": torch.__version__, "code": code.hexdigest(),
           "precision": str(autocast_dtype(torch.device(device), TRAIN_PRECISION) or torch.float32)}
    return json.loads(json.dumps(key))  # as config.json will hold it (tuples → lists), so the two compare equal


def cache_entry(cache: Path, key: dict) -> Path:
    """cache/<first 16 hex digits of the key's SHA-256>/"""
    return Path(cache) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_cached(entry: Path, key: dict, device="cpu") -> tuple[UserClassifier, dict] | None:
    """The classifier in a cache entry; None if there is none, or (with one notice) if it is damaged."""
    if not entry.exists():
        return None
    try:
        model, saved = load_classifier(entry, device)
        if saved.get("cache_key") != key or "val_acc" not in saved.get("results", {}):
            raise RunError("its config.json does not describe the classifier filed under this key")
        return model, saved
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as e:  # RunError is a ValueError
        print(f"notice: the cached classifier {entry} is damaged ({str(e).splitlines()[0][:120]}); training it again")
        return None


def store_cached(entry: Path, model: UserClassifier, saved: dict) -> None:
    """Write the entry completely under a temporary name, then rename it into place, so that another process
    never sees half a classifier; an entry already there (retrain=True, or a damaged one) is moved aside first."""
    tmp, old = (entry.with_name(f".{entry.name}.{os.getpid()}.{end}") for end in ("tmp", "old"))
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        save_classifier(tmp, model, saved)
        if entry.exists():
            os.replace(entry, old)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            # Another process cached the same classifier meanwhile (identical: same key, deterministic): keep theirs.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def classifier_for(folder: Path, train_ds, val_ds, seed: int = 0, device="cpu", retrain: bool = False,
                   cache: Path | None = None, **train_kwargs) -> tuple[UserClassifier, dict]:
    """The classifier of (train_ds, val_ds), early-stopped on val_ds and kept in `folder`. → (model, saved record
    with "results": val_acc, best_step, ...).

    Looked up, in order: in the shared `cache` folder (cache_root(); None = no cache) under cache_key(), a hit being
    copied into `folder`; in `folder` if it was trained on the same data; else trained and saved to `folder` and
    the cache. retrain=True skips both look-ups and refreshes both copies.
    """
    folder = Path(folder)
    key = data_key(train_ds, val_ds)
    config = ClassifierConfig(num_classes=len(train_ds.classes), in_channels=train_ds.channels,
                              image_size=train_ds.image_size, input_size=min(train_ds.image_size, INPUT_SIZE))
    entry, full_key = None, None
    # 1. The shared cache, keyed by everything the weights depend on.
    if cache is not None:
        train_x, train_y = stack_split(train_ds)
        val_x, val_y = stack_split(val_ds)
        full_key = cache_key(train_x, train_y, val_x, val_y, key, config, seed, device, train_kwargs)
        entry = cache_entry(cache, full_key)
        hit = None if retrain else load_cached(entry, full_key, device)
        if hit is not None:
            model, saved = hit
            saved = {**saved, "data": key}  # this data's root, so that `folder` on its own reuses its copy too
            save_classifier(folder, model, saved)
            print(f"classifier: from the cache {entry} (real-validation accuracy {saved['results']['val_acc']:.1%}); "
                  f"copied to {folder}")
            return model, saved
    # 2. The folder's own classifier, if it was trained on the same data split.
    if not retrain and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        model, saved = load_classifier(folder, device)
        if saved.get("data") == key and saved.get("seed") == seed:
            print(f"classifier: reused {folder} (real-validation accuracy {saved['results']['val_acc']:.1%})")
            return model, saved
        print(f"classifier: {folder} was trained on other data, augmentation or seed; training a new one")
    # 3. Train, save to the folder and the cache.
    if cache is None:
        train_x, train_y = stack_split(train_ds)
        val_x, val_y = stack_split(val_ds)
    model, history = train_classifier(train_x, train_y, config, val_x, val_y, seed=seed, device=device,
                                      **train_kwargs)
    results = {"val_acc": history["best_val_acc"], "best_epoch": history["best_epoch"],
               "best_step": history["best_step"], "steps": history["steps"],
               "train_seconds": round(history["train_seconds"], 1)}
    saved = {"kind": "classifier", "config": asdict(config), "data": key, "seed": seed, "results": results,
             "history": history["epochs"]}
    if full_key is not None:
        saved["cache_key"] = full_key
    save_classifier(folder, model, saved)
    where = f"saved to {folder}"
    if entry is not None:
        try:
            store_cached(entry, model, saved)
            where += f" and cached in {entry}"
        except OSError as e:
            where += f" (not cached in {entry}: {e}; set TINYLDM_CACHE to a writable folder)"
    print(f"classifier: trained in {results['train_seconds']:.0f} s, best epoch {results['best_epoch']}, "
          f"real-validation accuracy {results['val_acc']:.1%}; {where}")
    return model, saved
