"""Near-copies of training images (tinyldm.evaluation.memorisation) on small synthetic sets: copies are found,
fresh draws of the training distribution are flagged at the rate the threshold's definition gives, the threshold
is the validation percentile computed by hand, large images are compared area-downscaled, the picture's geometry."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinyldm.data import DataError
from tinyldm.evaluation.memorisation import (
    CLOSEST,
    PIXEL_SIZE,
    QUANTILE,
    memorisation,
    near_copies_picture,
    nearest,
    pixel_vectors,
)
from tinyldm.viz import LINE_H, label_width, scale_for, to_uint8, upscale

PROJECTION = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(99))  # a stand-in classifier


def draw(n: int, seed: int, size: int = 8) -> torch.Tensor:
    """n images (n, 3, size, size) of one distribution: independent uniform pixels in [−1, 1]."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def features(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, 8, 8) → (N, 16): a fixed random projection, so feature distances are not pixel distances."""
    return torch.tanh(x.flatten(1) @ PROJECTION / 8)


def measure(gen: torch.Tensor, train: torch.Tensor, val: torch.Tensor) -> dict:
    return memorisation(gen, train, val, features(gen), features(train), features(val))


def hand_nearest(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Each query's distance to its nearest key, one query at a time: min_j ‖q − k_j‖₂."""
    q, k = queries.flatten(1).double(), keys.flatten(1).double()
    return torch.stack([(row - k).norm(dim=1).min() for row in q])


TRAIN, VAL = draw(300, 0), draw(200, 1)


def test_the_threshold_is_the_5th_percentile_of_the_validation_images_nearest_training_distances():
    gen = draw(50, 2)
    m = measure(gen, TRAIN, VAL)
    for space, embed in (("pixels", lambda x: x), ("features", features)):
        d_val, d_gen = hand_nearest(embed(VAL), embed(TRAIN)), hand_nearest(embed(gen), embed(TRAIN))
        tau = torch.quantile(d_val, QUANTILE)
        s = m[space]
        assert s["threshold"] == pytest.approx(tau.item(), rel=1e-9), space
        assert s["near_copies"] == pytest.approx((d_gen < tau).double().mean().item()), space
        assert s["median_ratio"] == pytest.approx((d_gen.median() / d_val.median()).item(), rel=1e-9), space
        # 200 validation images: τ lies between the 10th and 11th smallest (position 0.05 · 199 = 9.95), so exactly
        # 10 of them are below it.
        assert s["near_copies_real"] == 10 / 200, space


def test_fresh_images_of_the_training_distribution_are_flagged_at_the_validation_rate():
    gen = draw(400, 3)
    m = measure(gen, TRAIN, VAL)
    # A fresh draw is exchangeable with the validation images: its share differs from theirs only by sampling
    # noise, ≤ 4 binomial standard deviations of both sets.
    def tolerance(p):
        return 4 * math.sqrt(p * (1 - p) * (1 / len(VAL) + 1 / len(gen)))

    for space in ("pixels", "features"):
        p = m[space]["near_copies_real"]
        assert abs(m[space]["near_copies"] - p) < tolerance(p), (space, m[space])
        assert m[space]["median_ratio"] == pytest.approx(1, abs=0.05), space
    # Both spaces: at most the smaller per-space share, at least what the two must share.
    px, ft = m["pixels"]["near_copies_real"], m["features"]["near_copies_real"]
    assert max(px + ft - 1, 0) <= m["near_copies_real"] <= min(px, ft)
    # Fresh draws are flagged in both spaces no more often than the validation images are, up to sampling noise
    # (the noise of a share near the per-space rate: the "both" share itself is often 0 on 200 images).
    assert abs(m["near_copies"] - m["near_copies_real"]) < tolerance(QUANTILE)
    assert m["near_copies"] <= min(m["pixels"]["near_copies"], m["features"]["near_copies"])


def test_one_copied_training_image_is_flagged_in_both_spaces():
    gen = torch.cat([draw(20, 4), TRAIN[3:4]])  # 20 fresh images, then a copy of training image 3
    m = measure(gen, TRAIN, VAL)
    for space in ("pixels", "features"):
        i, j, d = m[space]["closest"][0]  # the closest pair of all
        assert (i, j) == (20, 3) and d == pytest.approx(0, abs=1e-5), space
        assert d < m[space]["threshold"] and m[space]["near_copies"] >= 1 / 21, space


def test_a_set_of_exact_copies_is_all_near_copies():
    perm = torch.randperm(len(TRAIN), generator=torch.Generator().manual_seed(5))[:50]
    m = measure(TRAIN[perm], TRAIN, VAL)
    assert m["near_copies"] == 1.0 and m["pixels"]["near_copies"] == 1.0 and m["features"]["near_copies"] == 1.0
    for space in ("pixels", "features"):
        closest = m[space]["closest"]
        assert len(closest) == CLOSEST and m[space]["median_ratio"] == pytest.approx(0, abs=1e-6)
        assert all(j == perm[i] and d == pytest.approx(0, abs=1e-5) for i, j, d in closest), space


def test_nearest_is_the_same_in_every_chunking():
    d, j = nearest(VAL.flatten(1), TRAIN.flatten(1))
    d3, j3 = nearest(VAL.flatten(1), TRAIN.flatten(1), chunk=3)
    assert torch.equal(j, j3) and torch.allclose(d, d3, rtol=1e-12)
    assert torch.allclose(d, hand_nearest(VAL, TRAIN), rtol=1e-9)


def test_large_images_are_compared_area_downscaled_to_64():
    big = draw(36, 6, size=2 * PIXEL_SIZE)  # (36, 3, 128, 128)
    half = F.avg_pool2d(big, 2)  # 2 × 2 block means: the area downscale, written another way
    assert torch.allclose(pixel_vectors(big), half.flatten(1).double(), atol=1e-6)
    small = draw(4, 7, size=32)
    assert torch.equal(pixel_vectors(small), small.flatten(1).double())  # ≤ 64 px: kept as it is
    # Distances in pixel space: a 128 × 128 set measures as its area-downscaled 64 × 64 version.
    feats = features(F.avg_pool2d(big, 16))  # any features, the same for both
    args = (feats[:6], feats[6:26], feats[26:])
    m_big, m_half = memorisation(big[:6], big[6:26], big[26:], *args), memorisation(half[:6], half[6:26], half[26:],
                                                                                   *args)
    assert m_big["pixel_size"] == [PIXEL_SIZE, PIXEL_SIZE]
    assert m_big["pixels"]["threshold"] == pytest.approx(m_half["pixels"]["threshold"], rel=1e-5)
    assert [p[:2] for p in m_big["pixels"]["closest"]] == [p[:2] for p in m_half["pixels"]["closest"]]


def test_mismatched_inputs_get_one_clear_error():
    with pytest.raises(DataError, match="differ; compare images of one size"):
        memorisation(VAL[:5], TRAIN, VAL[:, :, :4], features(VAL[:5]), features(TRAIN), features(VAL))
    with pytest.raises(ValueError, match="give one feature row per image"):
        memorisation(VAL[:5], TRAIN, VAL, features(VAL[:4]), features(TRAIN), features(VAL))


def test_the_picture_shows_each_generated_image_above_its_nearest_training_image():
    gen = torch.cat([draw(20, 9, size=16), draw(300, 10, size=16)[[7, 2]]])
    train = draw(300, 10, size=16)
    m = memorisation(gen, train, draw(40, 11, size=16), *(torch.randn(n, 4) for n in (22, 300, 40)))
    closest, pad = m["pixels"]["closest"][:5], 2
    img = near_copies_picture(gen, train, closest, m["pixels"]["threshold"], pad=pad)
    # viz.image_rows' geometry: a name column, cells of 16·s px, `pad` between; a title line and three header
    # lines ("#i / #j", "d = …", "near-copy") over the cells.
    s, label_w, top = scale_for(16), label_width(["generated", "training"]), LINE_H * (1 + 3)
    cell = 16 * s
    assert img.size == (label_w + 5 * (cell + pad) + pad, top + 2 * (cell + pad) + pad)
    arr = np.asarray(img)
    for col, (i, j, _) in enumerate(closest):
        x0 = label_w + pad + col * (cell + pad)
        for row, image in enumerate((gen[i], train[j])):
            y0 = top + pad + row * (cell + pad)
            assert np.array_equal(arr[y0:y0 + cell, x0:x0 + cell], to_uint8(upscale(image[None], s))[0]), (col, row)
    assert sorted(p[:2] for p in closest[:2]) == [[20, 7], [21, 2]]  # the two copies come first
