"""Images that are not square keep their aspect: square windows along the longer side, or squash on request."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tinyldm.data import UserImageFolder, datasets, load_image, to_tensor
from tinyldm.data.images import square_windows, window_offsets
from tinyldm.evaluation.pipeline import real_format


def noise(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)  # (H, W, C)


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def resized(array, w, h):
    """The independent reference: PIL bicubic resize to w x h, as uint8 (h, w, C)."""
    return np.asarray(Image.fromarray(array).resize((w, h), Image.Resampling.BICUBIC))


def folder(root, w, h, users=("alice", "bob"), n=3):
    for k, name in enumerate(users):
        for i in range(n):
            save(root / name / f"{i:03d}.png", noise(w, h, seed=10 * k + i))
    return root


@pytest.mark.parametrize("size", [1, 7, 16, 64])
def test_window_offsets_cover_every_column_evenly(size):
    for long in range(1, 5 * size + 2):
        offsets = window_offsets(long, size)
        if long <= size:
            assert offsets == [0]
            continue
        assert len(offsets) == math.ceil(long / size) and offsets[0] == 0 and offsets[-1] == long - size
        covered = np.zeros(long, bool)
        for o in offsets:
            covered[o:o + size] = True
        assert covered.all(), (long, size, offsets)
        steps = np.diff(offsets)
        assert steps.max() - steps.min() <= 1 and steps.max() <= size  # evenly spread, least overlap


def test_a_wide_image_gives_windows_of_the_aspect_kept_resize():
    x = noise(1000, 600)
    windows = square_windows(Image.fromarray(x), 64)
    ref = resized(x, 107, 64)  # shorter side 64, aspect kept: 1000 * 64 / 600 = 106.7
    assert len(windows) == 2 and all(w.shape == (64, 64, 3) and w.dtype == np.uint8 for w in windows)
    np.testing.assert_array_equal(windows[0], ref[:, 0:64])
    np.testing.assert_array_equal(windows[1], ref[:, 43:107])  # the last window ends at the last column


def test_a_tall_image_is_windowed_along_its_height_and_a_square_one_is_one_window():
    x = noise(600, 1000)
    windows = square_windows(Image.fromarray(x), 64)
    ref = resized(x, 64, 107)
    assert len(windows) == 2
    np.testing.assert_array_equal(windows[0], ref[0:64])
    np.testing.assert_array_equal(windows[1], ref[43:107])
    square = noise(100, 100)
    (window,) = square_windows(Image.fromarray(square), 64)
    np.testing.assert_array_equal(window, resized(square, 64, 64))
    grey = noise(64, 64)[..., 0]
    (window,) = square_windows(Image.fromarray(grey), 64)
    np.testing.assert_array_equal(window, grey[:, :, None])  # already the size: untouched, (H, W, 1)


def test_a_nearly_square_image_is_resized_to_one_window(tmp_path, capsys):
    x = noise(65, 64)  # aspect 1.016: within 2 % of square
    (window,) = square_windows(Image.fromarray(x), 64)
    np.testing.assert_array_equal(window, resized(x, 64, 64))
    folder(tmp_path, 64, 64, users=("alice",), n=2)
    save(tmp_path / "alice" / "odd.png", x)
    ds = UserImageFolder(tmp_path, 64, split="all")
    assert len(ds) == ds.n_files == 3
    assert capsys.readouterr().out.strip() == (f"notice: 1 of 3 images in {tmp_path} are 65×64 (aspect 1.02): "
                                               f"resized to 64×64")


def test_a_folder_of_wide_spectrograms_is_windowed_with_a_notice_naming_the_aspect(tmp_path, capsys):
    folder(tmp_path, 1000, 600, n=2)
    ds = UserImageFolder(tmp_path, 64, split="all")
    assert ds.n_files == 4 and len(ds) == 8 and ds.counts() == {"alice": 4, "bob": 4}
    assert [(p.name, k, w) for p, k, w in ds.samples[:4]] == [("000.png", 0, 0), ("000.png", 0, 1),
                                                             ("001.png", 0, 0), ("001.png", 0, 1)]
    assert capsys.readouterr().out.strip() == (
        f"notice: 4 of 4 images in {tmp_path} are 1000×600 (aspect 1.67): resized to 107×64 keeping the aspect and "
        f"cut into 2 square 64×64 windows along the width (offsets 0, 43); aspect='squash' stretches them to 64×64 "
        f"instead")
    ref = resized(noise(1000, 600, seed=10), 107, 64)  # bob/000.png
    x, user = ds[4]
    assert user == 1
    torch.testing.assert_close(x, to_tensor(ref[:, 0:64]))
    torch.testing.assert_close(ds[5][0], to_tensor(ref[:, 43:107]))
    assert ds.info()["aspect"] == "windows" and ds.info()["num_images"] == 4 and ds.info()["num_samples"] == 8


def test_squash_gives_the_old_result(tmp_path, capsys):
    folder(tmp_path, 1000, 600, users=("alice",), n=2)
    ds = UserImageFolder(tmp_path, 64, split="all", aspect="squash")
    assert len(ds) == ds.n_files == 2 and ds.info()["aspect"] == "squash"
    assert capsys.readouterr().out.strip() == (f"notice: 2 of 2 images in {tmp_path} are 1000×600 (aspect 1.67): "
                                               f"squashed to 64×64 (the width shrinks 1.67× more than the height)")
    for i in range(2):
        old, _ = load_image(tmp_path / "alice" / f"{i:03d}.png", 64, 3)
        np.testing.assert_array_equal(old, resized(noise(1000, 600, seed=i), 64, 64))
        torch.testing.assert_close(ds[i][0], to_tensor(old))


def test_several_sizes_share_one_notice_line(tmp_path, capsys):
    folder(tmp_path, 64, 64, users=("alice",), n=2)
    save(tmp_path / "alice" / "wide.png", noise(200, 64))
    save(tmp_path / "alice" / "wide2.png", noise(200, 64, seed=1))
    save(tmp_path / "alice" / "near.png", noise(65, 64))
    ds = UserImageFolder(tmp_path, 64, split="all")
    assert ds.n_files == 5 and len(ds) == 2 + 2 * 4 + 1
    assert capsys.readouterr().out.strip() == (
        f"notice: 3 of 5 images in {tmp_path} are not 64×64: 2 are 200×64 (aspect 3.12): cut into 4 square 64×64 "
        f"windows along the width (offsets 0, 45, 91, 136); 1 is 65×64 (aspect 1.02): resized to 64×64; "
        f"aspect='squash' stretches them to 64×64 instead")


def test_all_windows_of_a_file_stay_in_its_split(tmp_path):
    folder(tmp_path, 300, 100, n=5)  # 3 windows of 16 per file at 16: 48 x 16
    train = UserImageFolder(tmp_path, 16, split="train", val_fraction=0.4)
    val = UserImageFolder(tmp_path, 16, split="val", val_fraction=0.4)
    for ds in (train, val):
        per_file = {}
        for path, _, window in ds.samples:
            per_file.setdefault(path, []).append(window)
        assert all(windows == [0, 1, 2] for windows in per_file.values())
    assert not {p for p, _, _ in train.samples} & {p for p, _, _ in val.samples}
    assert (train.n_files, val.n_files, len(train), len(val)) == (6, 4, 18, 12)


@pytest.mark.parametrize("aspect", ["windows", "squash"])
def test_items_read_again_without_the_cache_equal_the_cached_ones(tmp_path, monkeypatch, aspect):
    folder(tmp_path, 100, 60, n=2)
    save(tmp_path / "bob" / "tall.png", noise(30, 50))
    cached = UserImageFolder(tmp_path, 16, split="all", aspect=aspect)
    monkeypatch.setattr(datasets, "MAX_CACHE_BYTES", 0)
    uncached = UserImageFolder(tmp_path, 16, split="all", aspect=aspect)
    assert cached._cache is not None and uncached._cache is None and len(cached) == len(uncached)
    for i in range(len(cached)):
        a, b = cached[i], uncached[i]
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        assert a[1] == b[1]


def test_real_format_of_a_wide_or_tall_folder_is_its_shorter_side(tmp_path):
    assert real_format(folder(tmp_path / "wide", 100, 60, n=1)) == (60, 3)
    assert real_format(folder(tmp_path / "tall", 40, 90, n=1)) == (40, 3)
    assert real_format(folder(tmp_path / "square", 32, 32, n=1)) == (32, 3)
