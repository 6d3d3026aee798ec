"""Image folders by user: one sub-folder (or one CSV row) per image, user id = index of the sorted user name.

    root/
      alice/ 000.png 001.png ...      ->  user id 0
      bob/   000.png ...              ->  user id 1

`UserImageFolder(root)[i]` returns `(x, user_id)` with x a float tensor (C, H, W) in [-1, 1] (x/127.5 - 1).
User folders are sorted by name as text ("user_10" before "user_2": zero-pad numbers); CSV user ids by value.
An image file (compared by resolved path, so links count) belongs to one user and to one split.
Finding the files and the layout's traps live in folders.py, the value rule (8-bit, 16-bit, float dB, .npy) in
values.py. Everything is checked when the dataset is built, so a bad file stops the run at start-up with one line
(`DataError`) naming the file and what to do, never halfway through training with a deep traceback.

Spectrograms keep their aspect: time runs along the width, Doppler along the height, and stretching one against
the other changes what the image says. A wide (or tall) image is resized so its shorter side is image_size and cut
into square image_size x image_size windows along its longer side (`square_windows`); each window is one sample,
and all windows of a file stay in the file's split. `aspect="squash"` stretches every image to image_size x
image_size instead, as tinyldm did before.
"""

import os
import zlib
from pathlib import Path

import numpy as np
import torch

from tinyldm.data.errors import DataError, notice
from tinyldm.data.folders import read_csv, scan_folder
from tinyldm.data.images import (
    ASPECTS,
    count_windows,
    load_windows,
    read_header,
    read_values,
    size_notice,
    to_tensor,
    transparent_fraction,
)
from tinyldm.data.values import check_value_range, measure_ranges, value_bounds

MAX_CACHE_BYTES = 2 * 1024**3  # decoded images are kept in memory up to this size, else re-read per item
FAR_FROM_MEDIAN = 4  # a user with 4x fewer or 4x more images than the median user is named at start-up


def n_val_of(n, val_fraction):
    """How many of a user's n images go to val: round(val_fraction * n), at least one if n >= 2, never all."""
    return 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))


def stratified_split(files_by_user, split, val_fraction, seed):
    """Per user, a seeded shuffle puts round(val_fraction * n) images (at least one if n >= 2) into val.

    The shuffle is seeded with (seed, crc32(user name)), so adding or removing one user leaves every other
    user's split unchanged. Both splits are built and checked disjoint, whichever one is asked for.
    """
    out = {"train": {}, "val": {}, "all": {name: list(files) for name, files in files_by_user.items()}}
    for name, files in files_by_user.items():
        n = len(files)
        n_val = n_val_of(n, val_fraction)
        order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(n)
        out["train"][name] = [files[i] for i in sorted(order[n_val:])]
        out["val"][name] = [files[i] for i in sorted(order[:n_val])]
    check_no_leak(out["train"], out["val"])
    return out[split]


def check_no_leak(train, val):
    """No image file may be in both splits; files are compared by resolved path, so links and './' count."""
    in_train = {p.resolve(): p for files in train.values() for p in files}
    for p in (p for files in val.values() for p in files):
        if p.resolve() in in_train:
            raise DataError(f"image {p} would be in both the train and the val split (also as "
                            f"{in_train[p.resolve()]}); list each image once, under one user")


class UserImageFolder(torch.utils.data.Dataset):
    """Images grouped by user; `ds[i] -> (x (C, H, W) float in [-1, 1], user_id int)`.

    root:         a folder with one sub-folder per user (PNG/JPEG/BMP/TIFF/NPY, searched recursively), or a
                  CSV file with rows `path,user` (see `from_csv`); folders.py names its layout traps
    image_size:   every sample is image_size x image_size; images of other sizes are read as `aspect` says
                  (one notice naming the sizes) or, with strict_size=True, rejected
    channels:     1 (grayscale) or 3 (RGB); palette, RGBA (onto black), 16-bit, float and grayscale files are
                  converted; 16-bit and float values by the data set's range (values.py, one start-up notice)
    split:        "train", "val" or "all"; a seeded split per user (stratified), val_fraction of each user's files
    transform:    optional callable on the tensor x (C, H, W), e.g. `transforms.SpectrogramAugment()`
    aspect:       "windows" (default): a wide or tall image is resized keeping its aspect and cut into square
                  windows along its longer side, one sample each (see square_windows); "squash": every image is
                  stretched to image_size x image_size, one sample per file
    value_range:  None (measured over the whole data set, both splits) or (lo, hi) mapped to [-1, 1] for 16-bit
                  and float files, e.g. (-40, 0) for the top 40 dB

    `samples` lists `(path, user_id, window)`, the window's index within its file; `n_files` counts the files.
    `classes` are the sorted user names (id = index), `class_to_idx` maps them back; save it with the run.
    Folder names sort as text, so "user_10" comes before "user_2" (zero-pad: "user_02"); CSV ids sort by value.
    Non-image files are skipped and counted in one notice; empty, corrupt or truncated images raise DataError,
    and so does one image file under two users (a copied row, a linked folder).
    """

    def __init__(self, root, image_size=64, channels=3, split="train", val_fraction=0.1, seed=0,
                 strict_size=False, transform=None, aspect="windows", value_range=None, _files_by_user=None):
        self._check_args(root, image_size, channels, split, val_fraction, seed, transform, aspect, value_range)
        root = Path(root)
        if _files_by_user is None and root.is_file() and root.suffix.lower() == ".csv":
            _files_by_user = read_csv(root)
        self.root, self.image_size, self.channels, self.split = root, int(image_size), int(channels), split
        self.val_fraction, self.seed, self.strict_size, self.transform = val_fraction, seed, strict_size, transform
        self.aspect = aspect

        # 1. Find the files of each user and split them: per file, so all windows of an image share its split.
        files_by_user = _files_by_user if _files_by_user is not None else scan_folder(root)
        self.classes = sorted(files_by_user)
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        chosen = stratified_split(files_by_user, split, val_fraction, seed)
        files = [(path, self.class_to_idx[name]) for name in self.classes for path in chosen[name]]
        if not files:
            raise DataError(f"the {split!r} split of {root} is empty (val_fraction={val_fraction}); "
                            f"add images or use split='all'")
        self.n_files = len(files)
        if split != "val":  # said once, by the split a training script builds first
            balance_notice(root, files_by_user, val_fraction if split == "train" else 0)

        # 2. Read every file's header; measure the value ranges over the whole data set, so both splits agree.
        headers = {path: read_header(path) for paths in files_by_user.values() for path in paths}
        self.ranges, message = measure_ranges(
            [(p, h.kind, value_bounds(read_values(p), p)) for p, h in headers.items() if h.kind != "8-bit"],
            value_range)
        if message:
            notice(f"values of {root}: {message}")
        alpha_notice(root, [path for path, _ in files if headers[path].alpha])

        # 3. Lay out each file's windows from its size and say how other sizes are read.
        sizes = [headers[path].size for path, _ in files]
        self._check_sizes([path for path, _ in files], sizes)
        n_windows = [count_windows(w, h, self.image_size, aspect) for w, h in sizes]
        self.samples = [(path, user_id, k) for (path, user_id), n in zip(files, n_windows) for k in range(n)]

        # 4. Decode every file now (catches corrupt files at start-up); keep the windows if they fit.
        n_bytes = len(self.samples) * self.image_size**2 * self.channels
        self._cache = np.empty((len(self.samples), self.image_size, self.image_size, self.channels), np.uint8) \
            if n_bytes <= MAX_CACHE_BYTES else None  # (N, H, W, C), N = number of windows
        i = 0  # index of the file's first window in samples
        for (path, _), n in zip(files, n_windows):
            windows, _ = load_windows(path, self.image_size, self.channels, aspect, self.ranges)
            if self._cache is not None:
                self._cache[i:i + n] = windows
            i += n

    def _check_sizes(self, paths, sizes):
        """strict_size: refuse any image that is not image_size x image_size; else one notice on how they are read."""
        size = self.image_size
        odd = [(path, wh) for path, wh in zip(paths, sizes) if wh != (size, size)]
        if odd and self.strict_size:
            example, (w, h) = odd[0]
            raise DataError(f"{len(odd)} images in {self.root} are not {size}x{size} (e.g. {example} is {w}x{h}); "
                            f"resize them or drop strict_size / --strict-size")
        message = size_notice(self.root, sizes, size, self.aspect)
        if message:
            notice(message)

    @classmethod
    def from_csv(cls, csv_path, **kwargs):
        """Dataset from a CSV of `path,user` rows (header optional; paths relative to the CSV's folder).

        `user` must be an integer; the sorted distinct values become ids 0..N-1 and `classes` holds them as text.
        """
        return cls(csv_path, _files_by_user=read_csv(csv_path), **kwargs)

    @staticmethod
    def _check_args(root, image_size, channels, split, val_fraction, seed, transform, aspect, value_range):
        """Each argument checked once, before anything is read: one DataError naming the argument and its value."""
        if not isinstance(root, (str, os.PathLike)) or str(root) == "":
            raise DataError(f"root must be a folder of user folders or a .csv file (a str or Path), got {root!r}")
        if not is_count(image_size) or image_size <= 0:
            raise DataError(f"image_size must be a positive integer, got {image_size!r}")
        if not is_count(channels) or channels not in (1, 3):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if split not in ("train", "val", "all"):
            raise DataError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if not is_count(seed):
            raise DataError(f"seed must be an integer, got {seed!r}")
        if transform is not None and not callable(transform):
            raise DataError(f"transform must be None or a callable on a tensor (C, H, W), got {transform!r}")
        if aspect not in ASPECTS:
            raise DataError(f"aspect must be 'windows' (square windows along the longer side, aspect kept) or "
                            f"'squash' (stretch to a square), got {aspect!r}")
        check_value_range(value_range)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, user_id, window = self.samples[i]
        if self._cache is not None:
            x = self._cache[i]  # (H, W, C)
        else:
            x = load_windows(path, self.image_size, self.channels, self.aspect, self.ranges)[0][window]  # (H, W, C)
        x = to_tensor(x)  # (C, H, W) in [-1, 1]
        if self.transform is not None:
            x = self.transform(x)
        return x, user_id

    def counts(self):
        """Number of samples (windows) per user name in this split."""
        out = dict.fromkeys(self.classes, 0)
        for _, k, _ in self.samples:
            out[self.classes[k]] += 1
        return out

    def info(self):
        """What a run's config.json should record to reproduce this dataset."""
        return {"root": str(self.root), "image_size": self.image_size, "channels": self.channels,
                "aspect": self.aspect, "split": self.split, "val_fraction": self.val_fraction, "seed": self.seed,
                "num_images": self.n_files, "num_samples": len(self), "class_to_idx": self.class_to_idx}


PRESETS = {  # name: (users, images per user, image height); what default_data_dir generates for a preset
    "tiny": (31, 40, 64),
    "small": (31, 150, 128),
    "compact": (31, 150, 256),  # the users' setting on a CPU: the seed's data, trained by a compact recipe
    "seed": (31, 150, 256),
}
# The folder each preset's data lives in: compact and seed have the same data (the users' 31 × 150 at 256×256).
DATA_FOLDER = {"tiny": "tiny", "small": "small", "compact": "seed", "seed": "seed"}
FAMILIES = ("walking", "activities")  # the built-in simulated data: 31 people walking; 6 activities (wide images)
ACTIVITIES_PER_CLASS = 150  # recordings per activity at every preset, as in a measured set of ~150 per class


def is_count(value):
    """An integer (Python or numpy), not a bool: True would pass as 1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def balance_notice(root, files_by_user, val_fraction):
    """One notice naming the users whose image counts are FAR_FROM_MEDIAN from the median user's, and the users
    that get no validation image (fewer than 2 images) when there is a val split."""
    counts = {name: len(files) for name, files in files_by_user.items()}
    median = float(np.median(list(counts.values())))
    far = sorted((n, name) for name, n in counts.items()
                 if n * FAR_FROM_MEDIAN <= median or n >= FAR_FROM_MEDIAN * median)
    said = []
    if far:
        said.append(f"{len(far)} users have far fewer or far more images than the median user's {median:g}: "
                    + ", ".join(f"{name} {n}" for n, name in far[:6]) + (", …" if len(far) > 6 else "")
                    + " (a model sees each user as often as it has images; rebalance or drop a user if that matters)")
    no_val = sorted(name for name, n in counts.items() if val_fraction > 0 and n_val_of(n, val_fraction) == 0)
    if no_val:
        said.append(f"{len(no_val)} users get no validation image (a user needs 2 images to have one): "
                    + ", ".join(no_val[:6]) + (", …" if len(no_val) > 6 else ""))
    if said:
        notice(f"{root}: " + "; ".join(said))


def alpha_notice(root, paths):
    """One notice naming the files of a split with transparent pixels, composited onto black (images.py)."""
    transparent = [(p, f) for p in paths for f in [transparent_fraction(p)] if f > 0]
    if transparent:
        p, f = transparent[0]
        notice(f"{len(transparent)} images in {root} have transparent pixels (e.g. {p}: {100 * f:.0f} % of it); "
               f"they are composited onto black (a transparent pixel holds no value). If your colour map's floor is "
               f"not black (jet: dark blue), flatten the images onto that colour before training")


def default_data_dir(preset="tiny", root="data", workers=None, family="walking"):
    """Path of a built-in simulated set for a preset, generated once under `root` and reused.

    walking (31 people, square jet images; the users' kind of data): tiny 31 x 40 at 64x64 (~10-30 s to generate),
    small 31 x 150 at 128x128, compact and seed 31 x 150 at 256x256 (one folder; ~2.5 min on 2 cores). activities
    (6 activities x 150 recordings, 5.8 GHz, viridis, wide images of the preset's height: 64x107 for tiny, ~20 s).
    A rerun completes what an interrupted run left out.
    """
    # imported here so `python -m tinyldm.data.microdoppler` (or .activities) runs cleanly
    from tinyldm.data import activities, microdoppler

    if preset not in PRESETS:
        raise DataError(f"unknown data preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if family not in FAMILIES:
        raise DataError(f"unknown data family {family!r}; choose one of {', '.join(FAMILIES)}")
    users, per_user, size = PRESETS[preset]
    if family == "activities":
        out = Path(root) / f"activities-v{activities.VERSION}-{DATA_FOLDER[preset]}"
        if not activities.is_complete(out, ACTIVITIES_PER_CLASS):
            notice(f"generating the simulated activity set {out} ({len(activities.CLASSES)} activities x "
                   f"{ACTIVITIES_PER_CLASS} recordings at {activities.image_width(size)}x{size}); later runs reuse it")
            activities.generate_activities(out, per_class=ACTIVITIES_PER_CLASS, height=size, seed=0,
                                           workers=workers)
        return out
    out = Path(root) / f"microdoppler-v{microdoppler.VERSION}-{DATA_FOLDER[preset]}"
    if not microdoppler.is_complete(out, users, per_user):
        notice(f"generating the simulated micro-Doppler set {out} ({users} users x {per_user} images at "
               f"{size}x{size}); later runs reuse it")
        microdoppler.generate_dataset(out, users=users, per_user=per_user, size=size, seed=0, workers=workers)
    return out
