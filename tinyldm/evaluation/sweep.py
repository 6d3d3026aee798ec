"""Quality against cost: condition accuracy and Fréchet distance over guidance scales, and over samplers × steps;
and the choice of a run's guidance scales on its training images (choose_guidance).

Every point samples the same users and the same initial noise (generate's per-image seeds), so points differ
only by the setting swept. NFE counts network evaluations (`tinyldm.diffusion.nfe`); with guidance each one
runs on a batch twice as large (conditional and unconditional together).
"""

import math
import time
from dataclasses import asdict, replace

import torch
from tqdm import tqdm

from tinyldm.diffusion import SamplingConfig, nfe
from tinyldm.evaluation.classifier import embed
from tinyldm.evaluation.metrics import condition_accuracy, frechet_distance, kid, precision_recall
from tinyldm.evaluation.pipeline import Reference, images_per_user, quantize
from tinyldm.generate import DEFAULT_SAMPLING, GUIDANCE_FILE, generate
from tinyldm.runs import atomic_write_json

GUIDANCE_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
SWEEP_SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m")
SWEEP_STEPS = (10, 20, 50)
# The guidance choice: scales tried in this order (the first is SamplingConfig's default w), and its sampling seed,
# one the evaluation (seeds 0, 1, 2, …) does not draw, so the images that choose w are not the ones that measure it.
CHOICE_SCALES = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
CHOICE_SEED = 1000
# Autoguidance w_a tried on top of the chosen w (after w_a = 1, none): the best measured were 1.5–2
# (docs/speedrun.md, eleventh round).
AG_CHOICE_SCALES = (1.5, 2.0, 2.5, 3.0)


def sample_users(model, vae, run_config: dict, n_per_user: int, sampling: SamplingConfig, device="cpu",
                 batch_size: int = 64, progress: bool = False, guide=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """n_per_user images of every user with sample.py's code path → (images (U·n, C, H, W) as PNG values,
    user ids (U·n,), seconds spent sampling). guide: for autoguidance (sampling.ag_scale ≠ 1)."""
    users = list(range(run_config["num_classes"]))
    t0 = time.time()
    x, _ = generate(model, vae, run_config, users, n_per_user, sampling, batch_size=batch_size, device=device,
                    progress=progress, guide=guide)  # (U, n, C, H, W)
    seconds = time.time() - t0
    y = torch.arange(len(users)).repeat_interleave(n_per_user)  # (U·n,)
    return quantize(x.flatten(0, 1)), y, seconds


def measure_point(ref: Reference, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict:
    """The sweep's lighter set of metrics for one setting (no TSTR, no per-user lists)."""
    feats, logits = embed(ref.model, x)
    acc = condition_accuracy(logits, y, len(ref.classes))
    kid_mean, _ = kid(ref.val_feats, feats, generator=torch.Generator().manual_seed(seed))
    precision, recall = precision_recall(ref.val_feats, feats)
    return {"top1": acc["top1"], "top5": acc["top5"], "fd": frechet_distance(ref.val_feats, feats), "kid": kid_mean,
            "precision": precision, "recall": recall}


def guidance_sweep(model, vae, run_config: dict, ref: Reference, scales=GUIDANCE_SCALES, n_per_user: int = 4,
                   sampling: SamplingConfig = DEFAULT_SAMPLING, device="cpu", guide=None) -> list[dict]:
    """One point per guidance scale w, the other settings (autoguidance w_a too) as in `sampling`."""
    points = []
    for w in tqdm(scales, desc="guidance sweep", unit="scale"):
        point = replace(sampling, cfg_scale=w)
        x, y, seconds = sample_users(model, vae, run_config, n_per_user, point, device, guide=guide)
        points.append({**settings_record(point), "seconds_per_image": seconds / len(y),
                       **measure_point(ref, x, y, point.seed)})
    return points


def sampler_sweep(model, vae, run_config: dict, ref: Reference, samplers=SWEEP_SAMPLERS, steps_list=SWEEP_STEPS,
                  n_per_user: int = 4, sampling: SamplingConfig = DEFAULT_SAMPLING, device="cpu", guide=None
                  ) -> list[dict]:
    """One point per (sampler, steps), the other settings (guidance w and w_a, seed) as in `sampling`."""
    grid = [replace(sampling, sampler=s, steps=n) for s in samplers for n in steps_list]
    points = []
    for point in tqdm(grid, desc="sampler sweep", unit="setting"):
        x, y, seconds = sample_users(model, vae, run_config, n_per_user, point, device, guide=guide)
        points.append({**settings_record(point), "seconds_per_image": seconds / len(y),
                       **measure_point(ref, x, y, point.seed)})
    return points


def settings_record(sampling: SamplingConfig) -> dict:
    """What a report says about how its images were sampled: every setting, and the network calls."""
    return {**asdict(sampling), "nfe": nfe(sampling.sampler, sampling.steps)}


def best_guidance(points: list[dict]) -> dict:
    """The guidance scales with the highest condition accuracy and with the lowest Fréchet distance."""
    finite = [p for p in points if math.isfinite(p["fd"])]
    return {"by_accuracy": max(points, key=lambda p: (p["top1"], -p["fd"]))["cfg_scale"],
            "by_fd": min(finite, key=lambda p: p["fd"])["cfg_scale"] if finite else None}


# ---- Choosing a run's guidance scale ---------------------------------------------------------------------------
# The best w depends on the data: on the walking simulator FD is lowest at w = 1.25 and rises fast above it, on the
# activities it falls until w = 2 (docs/speedrun.md, ninth round). So a run chooses its own, on its training images:
# the evaluation's real validation images play no part, and its sampling seeds are not the choice's.

def first_minimum(scales, score) -> tuple[float, list[tuple[float, float]]]:
    """Walk up `scales` (ascending), scoring each with score(w) (lower is better), and stop at the first that
    scores no better than the one before → (the best scale seen, [(scale, score), …] as measured). FD against w
    falls, then rises (Ho & Salimans 2022, fig. 4; both built-in families), so the first rise ends the search."""
    points = []
    for w in scales:
        points.append((w, score(w)))
        if len(points) > 1 and points[-1][1] >= points[-2][1]:  # a tie goes to the smaller w
            break
    best = min(points, key=lambda p: p[1])
    return best[0], points


def choose_guidance(model, vae, run_config: dict, ref: Reference, scales=CHOICE_SCALES, n_per_user: int | None = None,
                    sampling: SamplingConfig = DEFAULT_SAMPLING, device="cpu", guide=None,
                    ag_scales=AG_CHOICE_SCALES) -> dict:
    """The guidance whose samples are closest to the real *training* images: Fréchet distance in the evaluation
    classifier's features, images_per_user(U) images per user at every setting tried, the other settings as in
    `sampling`, noise from CHOICE_SEED → {"cfg_scale": w, "ag_scale": w_a, "points": [...], ...}.

    First the classifier-free w (first_minimum over `scales`, no autoguidance); then, with the run's `guide`, the
    autoguidance w_a added to that w (first_minimum over 1, then `ag_scales`: 1 is the w just measured, so a run
    that autoguidance does not bring closer to its data keeps w_a = 1)."""
    n = images_per_user(len(ref.classes), n_per_user)
    points = []

    def fd_to_training_images(w: float, w_a: float = 1.0) -> float:
        for p in points:
            if (p["cfg_scale"], p["ag_scale"]) == (w, w_a):  # measured already
                return p["fd_train"]
        point = replace(sampling, cfg_scale=w, ag_scale=w_a, seed=CHOICE_SEED)
        x, y, seconds = sample_users(model, vae, run_config, n, point, device, guide=guide)
        feats, logits = embed(ref.model, x)
        points.append({"cfg_scale": w, "ag_scale": w_a, "fd_train": frechet_distance(ref.train_feats, feats),
                       "top1": condition_accuracy(logits, y, len(ref.classes))["top1"], "seconds": seconds})
        return points[-1]["fd_train"]

    best, _ = first_minimum(tqdm(scales, desc="choosing guidance", unit="scale", leave=False), fd_to_training_images)
    best_a = 1.0
    if guide is not None:
        best_a, _ = first_minimum(tqdm((1.0, *ag_scales), desc="choosing autoguidance", unit="scale", leave=False),
                                  lambda w_a: fd_to_training_images(best, w_a))
    return {"cfg_scale": best, "ag_scale": best_a,
            "chosen_by": "lowest Fréchet distance to the training images (classifier features)",
            "n_per_user": n, "seed": CHOICE_SEED, "sampler": sampling.sampler, "steps": sampling.steps,
            "points": points}


def save_guidance(run_dir, choice: dict) -> None:
    """RUN/guidance.json: the chosen w and w_a, which sample.py and evaluate.py use when --cfg-scale and --ag-scale
    are not given."""
    atomic_write_json(run_dir / GUIDANCE_FILE, choice)
