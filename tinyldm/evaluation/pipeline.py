"""From real data and generated images to numbers: the real reference, one set of images, TSTR, reconstructions.

The reference is the real data as the metrics see it: the train/validation split (the autoencoder's own split
for a run, so no validation image was ever trained on), the user-ID classifier trained on the train split and
early-stopped on the validation split, and the classifier's features of both splits. Generated images are
compared with the *validation* features: the classifier has not fitted them, so they are what a new recording
of the same people looks like in its eyes.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from tinyldm.data import DataError, UserImageFolder
from tinyldm.data.datasets import read_csv, scan_folder
from tinyldm.evaluation.classifier import (
    ClassifierConfig,
    UserClassifier,
    classifier_for,
    embed,
    stack_split,
    train_classifier,
)
from tinyldm.evaluation.image_metrics import psnr, ssim
from tinyldm.evaluation.memorisation import memorisation
from tinyldm.evaluation.metrics import PR_K, all_metrics, condition_accuracy, frechet_distance, need
from tinyldm.generate import DECODE_BATCH
from tinyldm.runs import inference_autocast

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class Reference:
    """Real data, its classifier and the classifier's view of it."""
    root: Path
    classes: list[str]                # user names; id = index
    image_size: int
    channels: int
    model: UserClassifier
    record: dict                      # the classifier's config.json (config, data, results)
    folder: Path                      # where the classifier is saved
    train_x: torch.Tensor             # (N_t, C, H, W) in [−1, 1]
    train_y: torch.Tensor             # (N_t,)
    val_x: torch.Tensor               # (N_v, C, H, W)
    val_y: torch.Tensor               # (N_v,)
    train_feats: torch.Tensor         # (N_t, D)
    val_feats: torch.Tensor           # (N_v, D)
    val_logits: torch.Tensor          # (N_v, K)
    device: str = "cpu"

    @property
    def ceiling(self) -> float:
        """Top-1 accuracy of the classifier on the real validation split: the best any generator can score."""
        return self.record["results"]["val_acc"]


def build_reference(root, image_size: int, channels: int, val_fraction: float = 0.1, split_seed: int = 0,
                    classifier_dir=None, seed: int = 0, device="cpu", retrain: bool = False,
                    cache: Path | None = None, aspect: str = "windows") -> Reference:
    """Load the real splits (wide images read as `aspect` says: UserImageFolder), take the classifier from the
    shared `cache` folder (None: none) or `classifier_dir` or train it (saved in both), embed both splits."""
    split = {"image_size": image_size, "channels": channels, "val_fraction": val_fraction, "seed": split_seed,
             "aspect": aspect}
    train_ds = UserImageFolder(root, split="train", **split)
    val_ds = UserImageFolder(root, split="val", **split)
    need(len(val_ds), PR_K + 1, "the evaluation", f"real validation images (val_fraction={val_fraction})",
         "raise --val-fraction or add real images")
    folder = Path(classifier_dir)
    model, record = classifier_for(folder, train_ds, val_ds, seed=seed, device=device, retrain=retrain, cache=cache)
    train_x, train_y = stack_split(train_ds)
    val_x, val_y = stack_split(val_ds)
    train_feats, _ = embed(model, train_x)
    val_feats, val_logits = embed(model, val_x)
    return Reference(Path(root), train_ds.classes, image_size, channels, model, record, folder, train_x, train_y,
                     val_x, val_y, train_feats, val_feats, val_logits, str(device))


def image_format(path: Path) -> tuple[int, int, int]:
    """(width, height, channels) of an image file from its header; grey modes count as 1 channel, others 3."""
    try:
        with Image.open(path) as img:
            return img.size[0], img.size[1], 1 if img.mode in GREY_MODES else 3
    except OSError as e:
        raise DataError(f"cannot read image {path} ({e}); delete or replace it") from None


def real_format(root) -> tuple[int, int]:
    """(image_size, channels) of a real data folder or CSV, from its first image. image_size is the shorter side:
    UserImageFolder cuts a wide (or tall) image into square windows of that size along its longer side."""
    root = Path(root)
    files = read_csv(root) if root.is_file() and root.suffix.lower() == ".csv" else scan_folder(root)
    w, h, c = image_format(next(iter(files.values()))[0])
    return min(w, h), c


def read_generated(folder, ref: Reference) -> tuple[torch.Tensor, torch.Tensor]:
    """A folder <user>/<image> (sample.py's layout) → (images (N, C, H, W) in [−1, 1], user ids of the reference)."""
    folder = Path(folder)
    files = scan_folder(folder)
    unknown = sorted(set(files) - set(ref.classes))
    if unknown:
        raise DataError(f"generated folder {folder} has user folders {unknown[:3]} that are not users of the "
                        f"real data {ref.root} (e.g. {ref.classes[:3]}); name each folder after a real user, as "
                        f"sample.py does")
    for paths in files.values():
        for p in paths:
            w, h, c = image_format(p)
            if (w, h, c) != (ref.image_size, ref.image_size, ref.channels):
                raise DataError(f"generated image {p} is {w}×{h} with {c} channel(s) but the real images are "
                                f"{ref.image_size}×{ref.image_size} with {ref.channels}; generate at the real size "
                                f"and channel count (or pass --image-size/--channels to match)")
    ds = UserImageFolder(folder, image_size=ref.image_size, channels=ref.channels, split="all")
    x, local_y = stack_split(ds)
    to_ref = torch.tensor([ref.classes.index(name) for name in ds.classes])
    return x, to_ref[local_y]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] floats → the values a PNG holds (x/127.5 − 1 for uint8 x), so in-memory numbers equal folder ones."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def tstr(ref: Reference, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> float | None:
    """Train-on-synthetic, test-on-real: a fresh classifier trained on the generated images only, scored on the real
    validation split. Same architecture, augmentation and number of optimizer steps as the reference classifier
    (its early-stopped step count), since the test split must not choose anything. None if a user is missing."""
    if len(set(y.tolist())) < len(ref.classes):
        return None
    config = ClassifierConfig(**ref.record["config"])
    model, _ = train_classifier(x, y, config, fixed_steps=ref.record["results"]["best_step"], seed=seed,
                                device=ref.device, desc="TSTR classifier")
    _, logits = embed(model, ref.val_x)
    return (logits.argmax(1) == ref.val_y).float().mean().item()


FLOOR_DRAWS = 16  # real subsets averaged for the floor: one draw moved a 6-class floor by 2× between seeds


def random_per_user(train_y: torch.Tensor, counts: list[int], generator: torch.Generator) -> torch.Tensor:
    """Indices of counts[k] random training images of user k, for every user k (all of them where k has fewer)."""
    picks = []
    for k, n in enumerate(counts):
        pool = (train_y == k).nonzero().flatten()  # training images of user k
        picks.append(pool[torch.randperm(len(pool), generator=generator)[:n]])
    return torch.cat(picks)


def real_floor(ref: Reference, y: torch.Tensor, seed: int = 0, draws: int = FLOOR_DRAWS) -> float:
    """Fréchet distance of real *training* images to the validation features, with as many images per user as
    the generated set has: what a generator that reproduced its training data would score at this sample size.
    The mean over `draws` random subsets: a single subset's FD is itself noisy at a few hundred images (the floor
    is an expectation; the features are cached, so a draw costs one FD)."""
    g = torch.Generator().manual_seed(seed)
    counts = [int((y == k).sum()) for k in range(len(ref.classes))]  # as many per user as generated
    subsets = [random_per_user(ref.train_y, counts, g) for _ in range(draws)]
    if len(subsets[0]) < 2:
        return float("nan")
    return sum(frechet_distance(ref.val_feats, ref.train_feats[idx]) for idx in subsets) / draws


def evaluate_images(ref: Reference, x: torch.Tensor, y: torch.Tensor, with_tstr: bool = True, seed: int = 0) -> dict:
    """All metrics of generated images x (N, C, H, W) made for users y (N,) against the reference."""
    need(len(y), PR_K + 1, f"precision/recall with k = {PR_K}", "generated images")
    if x.shape[1:] != ref.val_x.shape[1:]:
        raise DataError(f"generated images are {tuple(x.shape[1:])} (C, H, W) but the real images are "
                        f"{tuple(ref.val_x.shape[1:])}; generate at the real size and channel count")
    feats, logits = embed(ref.model, x)
    out = all_metrics(ref.val_feats, feats, logits, y, len(ref.classes), seed)
    # Per user: the Fréchet distance to that user's real validation images (noisy with few images: read it as a
    # ranking of users, not as a number to compare across runs).
    out["per_user_fd"] = [frechet_distance(ref.val_feats[ref.val_y == k], feats[y == k])
                          if (ref.val_y == k).sum() >= 2 and (y == k).sum() >= 2 else float("nan")
                          for k in range(len(ref.classes))]
    out["fd_real_floor"] = real_floor(ref, y, seed)
    out["memorisation"] = memorisation(x, ref.train_x, ref.val_x, feats, ref.train_feats, ref.val_feats)
    out["trtr"] = ref.ceiling
    out.update(measure_tstr(ref, x, y, seed) if with_tstr else {"tstr": None, "tstr_images": 0})
    return out


def measure_tstr(ref: Reference, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict:
    """{"tstr": tstr()'s accuracy, "tstr_images": how many images it trained on}; None, after a notice line, when a
    user has no generated images."""
    accuracy = tstr(ref, x, y, seed)
    if accuracy is None:
        missing = sorted(set(ref.classes) - {ref.classes[k] for k in y.tolist()})
        print(f"notice: TSTR skipped: no generated images of {len(missing)} users (e.g. {missing[0]}); a classifier "
              f"trained without them cannot be tested on all real users")
    return {"tstr": accuracy, "tstr_images": len(y) if accuracy is not None else 0}


MIN_GENERATED = 240  # images the main measurement draws at least, split evenly over the users
SPREAD_KEYS = ("top1", "fd", "fd_real_floor", "fd_ratio", "tstr", "tstr_ratio", "precision", "recall", "near_copies")


def images_per_user(num_users: int, n_per_user: int | None = None) -> int:
    """Generated images per user for the main measurement: as asked, else ≥ 8 and ≥ MIN_GENERATED in all. FD and
    top-1 are noisy with few images (FD is biased upwards as the count shrinks): 31 users get 8 each (248), a
    5-class set 48 each, not 8 (40 in all)."""
    return n_per_user if n_per_user is not None else max(8, math.ceil(MIN_GENERATED / num_users))


def headline(generated: dict) -> dict:
    """The numbers a run is judged by, from evaluate_images' result; FD and TSTR also as ratios to their floors;
    near_copies: the share of generated images that are near-copies of training images (memorisation.py)."""
    g = generated
    tstr_ratio = g["tstr"] / g["trtr"] if g.get("tstr") is not None and g["trtr"] else None
    return {"top1": g["condition_accuracy"]["top1"], "fd": g["fd"], "fd_real_floor": g["fd_real_floor"],
            "fd_ratio": g["fd"] / g["fd_real_floor"], "tstr": g.get("tstr"), "tstr_ratio": tstr_ratio,
            "precision": g["precision"], "recall": g["recall"], "near_copies": g["memorisation"]["near_copies"]}


def seed_spread(per_seed: list[dict]) -> dict:
    """{key: {mean, std, min, max, values}} over the headlines of the same evaluation at several seeds."""
    out = {}
    for key in SPREAD_KEYS:
        values = [h[key] for h in per_seed if h.get(key) is not None]
        if values:
            t = torch.tensor(values, dtype=torch.float64)
            out[key] = {"mean": t.mean().item(), "std": t.std().item() if len(t) > 1 else 0.0,
                        "min": t.min().item(), "max": t.max().item(), "values": values}
    return out


@torch.no_grad()
def reconstruction_metrics(vae, ref: Reference, batch_size: int = DECODE_BATCH) -> dict:
    """An autoencoder on the real validation split: PSNR, SSIM, Fréchet distance and classifier accuracy of the
    reconstructions (KL: decode the posterior mode; VQ: decode the quantised latents), as sampling decodes: in passes
    of DECODE_BATCH, in bf16 where the hardware has it."""
    recons, psnrs, ssims = [], [], []
    for start in range(0, len(ref.val_x), batch_size):
        x = ref.val_x[start:start + batch_size]  # (B, C, H, W)
        with inference_autocast(ref.device):
            mean, _ = vae.latent_moments(x.to(ref.device))  # (B, c, h, w)
            x_hat = quantize(vae.decode_latent(mean).float().contiguous().cpu())  # (B, C, H, W), as it would be saved
        recons.append(x_hat)
        psnrs.append(psnr(x_hat, x))  # per pass: SSIM over all 465 images at 256×256 at once took twice as long
        ssims.append(ssim(x_hat, x))
    feats, logits = embed(ref.model, torch.cat(recons))
    acc = condition_accuracy(logits, ref.val_y, len(ref.classes))
    return {"n": len(feats), "psnr": torch.cat(psnrs).mean().item(), "ssim": torch.cat(ssims).mean().item(),
            "fd": frechet_distance(ref.val_feats, feats), "condition_top1": acc["top1"]}
