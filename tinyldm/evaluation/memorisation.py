"""Near-copies of training images: does the generator draw new images, or give back the ones it was trained on?

The yardstick is fresh real data. Every real *validation* image (never trained on) has a nearest *training* image;
the 5th percentile of those nearest distances is the threshold τ. A generated image whose nearest training image
is closer than τ sits closer to the training set than 95 % of new recordings of the same people do: a near-copy.
This is the "authenticity" idea of Alaa et al. 2022 (How Faithful is your Synthetic Data?: a sample closer to
its nearest training point than real data would be is a copy, not a new sample; they compare with the training
point's own nearest real neighbour, we with held-out real data) and the extraction criterion of Carlini et al.
2023 (Extracting Training Data from Diffusion Models: a small Euclidean distance to one training image), made
relative to real data so that it needs no hand-set distance.

Notation: d(x) = min_j ‖x − t_j‖₂, the Euclidean distance of a flattened vector x to its nearest training vector t_j;
τ = 5th percentile of d over the validation images; x is a near-copy when d(x) < τ.

It is measured in two spaces, since a copy can hide from either:
- **pixels**, the images area-downscaled to at most PIXEL_SIZE × PIXEL_SIZE (each small pixel the mean of a
  block), so that 256 × 256 sets stay cheap (~5 s for 240 images against 4,200 training images on one core);
  an exact copy stays at distance 0, fine noise is averaged away;
- **features** of the user-ID classifier: a copy that is shifted or re-noised may be far in pixels but close here.
  Neither the validation nor the generated images were fitted by the classifier, so both are seen alike.

How to read the numbers. Per space, fresh real images are near-copies 5 % of the time *by construction* (τ is
their own 5th percentile); a generator that copies scores up to 100 %. The headline `near_copies` flags an image
that is a near-copy in *both* spaces: as close to a training image in pixels as almost no new recording is, and
the classifier agrees it is that image, not merely a dark or empty one that is near everything in pixels. An exact
copy is flagged in both. Its baseline is the same "both" share of the validation images themselves (at most 5 %;
0.25 % if the two spaces flagged unrelated images), measured and reported beside it as `near_copies_real`.
Read near_copies well above near_copies_real as copying; the per-space shares say which kind of closeness.
A share at or below the baseline is no proof of quality: a poor generator that draws images far from all real
data also scores 0 %. `median_ratio` = median d(generated) / median d(validation) says the same for the whole
set: < 1, the generated images sit closer to the training images than new real data does.
"""

import torch
from PIL import Image

from tinyldm.data import DataError
from tinyldm.evaluation.metrics import need
from tinyldm.viz import image_rows, scale_for, thumbnails

PIXEL_SIZE = 64  # pixel-space distances are taken on images area-downscaled to at most 64 × 64
QUANTILE = 0.05  # τ = this quantile of the validation images' nearest-training distances
CLOSEST = 8  # closest (generated, training) pairs kept per space, for near_copies.png
CHUNK = 256  # query rows per cdist call: a (256, N_t) float64 block, ~8.6 MB for 4,200 training images


def pixel_vectors(x: torch.Tensor, size: int = PIXEL_SIZE) -> torch.Tensor:
    """(N, C, H, W) → (N, C·h·w) float64: images larger than size × size as area-averaged thumbnails of that size
    (viz.thumbnails: each pixel the mean of its block), smaller ones kept as they are."""
    return thumbnails(x, size).flatten(1).double()


def nearest(queries: torch.Tensor, keys: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, D) queries, (N, D) keys → each query's distance to its nearest key (Q,) and that key's index (Q,).

    float64: cdist computes ‖q‖² + ‖k‖² − 2 qᵀk, which in float32 reads an exact copy of a 12,288-value image as
    ~0.04 away instead of 0. Chunked over the queries so memory stays at one (chunk, N) block.
    """
    queries, keys = queries.double(), keys.double()
    dist, index = [], []
    for start in range(0, len(queries), chunk):
        d, j = torch.cdist(queries[start:start + chunk], keys).min(dim=1)  # (c,), (c,)
        dist.append(d)
        index.append(j)
    return torch.cat(dist), torch.cat(index)


def one_space(gen: torch.Tensor, train: torch.Tensor, val: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Vectors (N, D), (N_t, D), (N_v, D) of one space → (its numbers, near-copy flags of the generated (N,) and
    of the validation images (N_v,))."""
    d_gen, j_gen = nearest(gen, train)  # (N,), (N,)
    d_val, _ = nearest(val, train)  # (N_v,)
    tau = torch.quantile(d_val, QUANTILE)  # linear interpolation between the two nearest order statistics
    gen_flags, val_flags = d_gen < tau, d_val < tau
    order = d_gen.argsort()[:CLOSEST]
    numbers = {"near_copies": gen_flags.double().mean().item(),
               "near_copies_real": val_flags.double().mean().item(),  # ≈ QUANTILE by construction
               "threshold": tau.item(),
               "median_generated": d_gen.median().item(), "median_real": d_val.median().item(),
               "median_ratio": (d_gen.median() / d_val.median()).item(),
               "closest": [[int(i), int(j_gen[i]), d_gen[i].item()] for i in order]}  # [generated, training, d]
    return numbers, gen_flags, val_flags


def memorisation(x: torch.Tensor, train_x: torch.Tensor, val_x: torch.Tensor, feats: torch.Tensor,
                 train_feats: torch.Tensor, val_feats: torch.Tensor) -> dict:
    """Near-copies of training images among generated images x (N, C, H, W), in pixels and in the classifier's
    features (N, D), against the training (N_t, …) and validation (N_v, …) splits; see the module docstring.

    → {"pixels": {…}, "features": {…}, "near_copies": share flagged in both spaces, "near_copies_real": the same
    share of the validation images (the baseline), "pixel_size": [h, w]}; each space holds near_copies,
    near_copies_real, threshold τ, median_generated, median_real, median_ratio and the closest pairs
    [[generated index, training index, distance], …], nearest first.
    """
    need(len(val_x), 1, "the near-copy threshold", "real validation images", "raise --val-fraction")
    need(len(train_x), 1, "near-copies of training images", "real training images")
    if not x.shape[1:] == train_x.shape[1:] == val_x.shape[1:]:
        raise DataError(f"generated images {tuple(x.shape[1:])}, training {tuple(train_x.shape[1:])} and validation "
                        f"{tuple(val_x.shape[1:])} (C, H, W) differ; compare images of one size and channel count")
    if not (len(feats), len(train_feats), len(val_feats)) == (len(x), len(train_x), len(val_x)):
        raise ValueError(f"{len(feats)}, {len(train_feats)}, {len(val_feats)} feature rows for {len(x)}, "
                         f"{len(train_x)}, {len(val_x)} images; give one feature row per image")
    pixel_size = list(thumbnails(x[:1], PIXEL_SIZE).shape[-2:])  # [h, w] the pixel space compares
    pixels, gen_px, val_px = one_space(pixel_vectors(x), pixel_vectors(train_x), pixel_vectors(val_x))
    features, gen_ft, val_ft = one_space(feats, train_feats, val_feats)
    return {"pixels": pixels, "features": features,
            "near_copies": (gen_px & gen_ft).double().mean().item(),
            "near_copies_real": (val_px & val_ft).double().mean().item(),
            "pixel_size": pixel_size}


def near_copies_picture(x: torch.Tensor, train_x: torch.Tensor, closest: list, threshold: float, space: str = "pixels",
                        min_size: int = 128, pad: int = 2) -> Image.Image:
    """The closest pairs as a 2-row table: generated images above their nearest training images, each column headed
    by the two indices and the distance (and "near-copy" when it is below `threshold`).

    x (N, C, H, W), train_x (N_t, C, H, W) in [−1, 1]; closest: [[generated index, training index, distance], …]
    (memorisation's "closest" and "threshold" of one space, named in the title). Images are shown at full
    resolution, enlarged (nearest neighbour) to ≥ min_size px.
    """
    if not closest:
        raise ValueError("no pairs to draw; memorisation() keeps the closest pairs of a non-empty generated set")
    gen = torch.stack([x[i] for i, _, _ in closest])  # (k, C, H, W)
    train = torch.stack([train_x[j] for _, j, _ in closest])  # (k, C, H, W)
    header = [f"#{i} / #{j}\nd = {d:.3g}" + ("\nnear-copy" if d < threshold else "") for i, j, d in closest]
    title = f"closest pairs in {space}, #generated / #training (near-copy: d < {threshold:.3g})"
    return image_rows([gen, train], ["generated", "training"], scale=scale_for(x.shape[-2], min_size), pad=pad,
                      title=title, column_labels=header)
