"""SpectrogramAugment: every operation checked against what it must do to a spectrogram, and no flips."""

import pytest
import torch

from tinyldm.data import SpectrogramAugment
from tinyldm.data.transforms import random_crops


def image(C=3, H=8, W=12, seed=0):
    return torch.rand(C, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_everything_off_is_the_identity():
    x = image()
    assert torch.equal(SpectrogramAugment(time_shift=None, gain=0, gamma=0)(x), x)


def test_circular_shift_is_a_roll_along_time_never_a_flip():
    x = image()
    aug = SpectrogramAugment(time_shift="circular", gain=0, gamma=0)
    shifts = set()
    for seed in range(20):
        y = aug(x, generator=torch.Generator().manual_seed(seed))
        k = [k for k in range(x.shape[-1]) if torch.equal(torch.roll(x, k, dims=-1), y)]
        assert len(k) == 1  # rows (Doppler) untouched, columns in the same cyclic order
        shifts.add(k[0])
    assert len(shifts) > 5


def test_crop_takes_a_window_of_columns():
    x = image(W=30)
    y = SpectrogramAugment(time_shift="crop", gain=0, gamma=0)(x, generator=torch.Generator().manual_seed(1))
    assert y.shape == (3, 8, 8)  # crop_width defaults to the height: square
    assert any(torch.equal(x[:, :, t:t + 8], y) for t in range(23))
    with pytest.raises(ValueError, match="crop_width 40 is wider"):
        SpectrogramAugment(time_shift="crop", crop_width=40)(x)


def test_gain_and_gamma_stay_small_and_in_range():
    x = image()
    u = (x + 1) / 2
    for seed in range(10):
        y = SpectrogramAugment(time_shift=None, gain=0.1, gamma=0.1)(x, generator=torch.Generator().manual_seed(seed))
        assert y.min() >= -1 and y.max() <= 1
        v = (y + 1) / 2
        # u -> g u^e with g in [0.9, 1.1], e in [exp(-0.1), exp(0.1)]: bounded by the extreme combinations.
        lo = (0.9 * u ** torch.exp(torch.tensor(0.1))).clamp(0, 1)
        hi = (1.1 * u ** torch.exp(torch.tensor(-0.1))).clamp(0, 1)
        assert torch.all(v >= lo - 1e-6) and torch.all(v <= hi + 1e-6)
        assert torch.all(v.flatten()[u.flatten().argsort()].diff() >= 0)  # monotone: brighter stays brighter


def test_masks_paint_the_background_colour():
    x = -torch.ones(3, 16, 20)
    x[:, 6:8, :] = 1.0  # a bright "torso line" on a dark background
    aug = SpectrogramAugment(time_shift=None, gain=0, gamma=0, time_mask=4, freq_mask=3)
    y = aug(x, generator=torch.Generator().manual_seed(0))
    changed_cols = (y != x).any(0).any(0).nonzero().flatten()
    assert 1 <= len(changed_cols) <= 4 and torch.all(y[:, :, changed_cols][:, 6:8] == -1)  # median = background
    assert torch.all((y == -1) | (y == x))  # nothing but background was painted


def test_same_generator_same_result_and_bad_settings():
    x = image()
    aug = SpectrogramAugment(time_mask=3, freq_mask=2)
    a = aug(x, generator=torch.Generator().manual_seed(5))
    b = aug(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    for kwargs, msg in [({"time_shift": "flip"}, "time_shift must be"), ({"gain": 1.5}, "gain must be in"),
                        ({"freq_mask": -1}, "freq_mask must be >= 0")]:
        with pytest.raises(ValueError, match=msg):
            SpectrogramAugment(**kwargs)


def test_gaussian_blur_has_the_asked_width_and_keeps_flat_images():
    from tinyldm.data.transforms import gaussian_blur
    delta = torch.zeros(1, 1, 33, 33)
    delta[0, 0, 16, 16] = 1.0
    for sigma in (0.7, 1.5, 2.5):
        y = gaussian_blur(delta, sigma)[0, 0]
        assert abs(y.sum().item() - 1) < 1e-6  # normalised kernel, mass kept away from the borders
        k = torch.arange(33, dtype=torch.float32) - 16
        var_time = (y.sum(0) * k**2).sum().item()  # second moment of the column profile
        var_doppler = (y.sum(1) * k**2).sum().item()
        # A Gaussian sampled at integers and cut at 3σ: its variance is σ² up to the truncation (< 3 %).
        assert var_time == pytest.approx(sigma**2, rel=0.03) and var_doppler == pytest.approx(sigma**2, rel=0.03)
    flat = torch.full((2, 3, 8, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)  # reflect padding: no dark border
    assert torch.equal(gaussian_blur(flat, 0.0), flat)
    # One σ per image: each image of a batch blurred as if alone (σ = 0: untouched).
    x = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    y = gaussian_blur(x, torch.tensor([0.0, 0.8, 1.5]))
    assert torch.equal(y[0], x[0])
    for b, sigma in ((1, 0.8), (2, 1.5)):
        torch.testing.assert_close(y[b], gaussian_blur(x[b:b + 1], sigma)[0], atol=1e-3, rtol=0)


def test_blur_is_applied_to_about_half_the_images_and_never_shifts_them():
    x = image(H=16, W=16)
    aug = SpectrogramAugment(time_shift=None, gain=0, gamma=0, blur=1.5)
    outs = [aug(x, generator=torch.Generator().manual_seed(s)) for s in range(200)]
    untouched = sum(torch.equal(y, x) for y in outs)
    assert 70 < untouched < 130  # probability 1/2
    for y in outs:  # blurring keeps the mean of every channel (up to the border), never moves the image
        torch.testing.assert_close(y.mean((1, 2)), x.mean((1, 2)), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="blur must be >= 0"):
        SpectrogramAugment(blur=-1)


def test_a_batch_draws_per_image_and_each_image_is_a_valid_augmentation():
    x = image(H=16, W=16)
    batch = x.expand(64, -1, -1, -1)  # one image, 64 times
    y = SpectrogramAugment(time_shift="circular", gain=0, gamma=0)(batch, generator=torch.Generator().manual_seed(0))
    shifts = [[k for k in range(16) if torch.equal(torch.roll(x, k, dims=-1), y[b])] for b in range(64)]
    assert all(len(k) == 1 for k in shifts)  # every image is a roll of its own input
    assert len({k[0] for k in shifts}) > 8  # with its own shift, not one for the batch
    level = torch.linspace(-0.9, 0.5, 64)[:, None, None, None]  # (64, 1, 1, 1): a background level per image
    x = level.expand(64, 3, 8, 8).clone()
    x[:, :, 3, :] = 1.0  # and one bright Doppler row
    masked = SpectrogramAugment(time_shift=None, gain=0, gamma=0, time_mask=4)(x, torch.Generator().manual_seed(0))
    painted = (masked != x).any(1).any(1)  # (64, 8): columns changed
    for b, c in painted.nonzero().tolist():  # a painted column is that image's own background, bright row too
        assert torch.all(masked[b, :, :, c] == level[b])
    assert torch.all((1 <= painted.sum(1)) & (painted.sum(1) <= 4)) and len(set(painted.sum(1).tolist())) > 1
    y = SpectrogramAugment(time_shift="crop", crop_width=6, gain=0, gamma=0)(
        torch.arange(10.0).expand(32, 3, 4, 10), generator=torch.Generator().manual_seed(2))
    starts = {int(y[b, 0, 0, 0]) for b in range(32)}
    assert y.shape == (32, 3, 4, 6) and starts <= set(range(5)) and len(starts) > 2  # per-image windows in range
    assert torch.equal(y - y[:, :, :, :1], torch.arange(6.0).expand(32, 3, 4, 6))  # consecutive columns, no wrap


def test_random_crops_are_aligned_windows_of_each_image():
    x = torch.rand(16, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    y = random_crops(x, 8, 2, torch.Generator().manual_seed(1))
    assert y.shape == (16, 3, 8, 8)
    offsets = set()
    for b in range(16):  # each crop is exactly one window of its own image, at even offsets
        hits = [(t, s) for t in range(0, 5) for s in range(0, 13) if torch.equal(x[b, :, t:t + 8, s:s + 8], y[b])]
        assert len(hits) == 1 and all(v % 2 == 0 for v in hits[0]), hits
        offsets.add(hits[0])
    assert len(offsets) > 8  # per-image offsets, not one for the batch
    assert torch.equal(y, random_crops(x, 8, 2, torch.Generator().manual_seed(1)))  # a function of the generator
    tall = random_crops(x, 12, 4, torch.Generator().manual_seed(2))  # H = 12 = size: only the columns move
    starts = [[s for s in (0, 4, 8) if torch.equal(x[b, :, :, s:s + 12], tall[b])] for b in range(16)]
    assert all(len(s) == 1 for s in starts), starts


def test_random_crops_refuse_a_size_off_the_grid_or_too_large():
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="multiple of 2"):
        random_crops(x, 5, 2, torch.Generator())
    with pytest.raises(ValueError, match="at most the image size"):
        random_crops(x, 10, 2, torch.Generator())
