"""Image folders by user: one sub-folder (or one CSV row) per image, user id = index of the sorted user name.

    root/
      alice/ 000.png 001.png ...      ->  user id 0
      bob/   000.png ...              ->  user id 1

`UserImageFolder(root)[i]` returns `(x, user_id)` with x a float tensor (C, H, W) in [-1, 1] (x/127.5 - 1).
User folders are sorted by name as text ("user_10" before "user_2": zero-pad numbers); CSV user ids by value.
An image file (compared by resolved path, so links count) belongs to one user and to one split.
Everything is checked when the dataset is built, so a bad file stops the run at start-up with one line
(`DataError`) naming the file and what to do, never halfway through training with a deep traceback.

Spectrograms keep their aspect: time runs along the width, Doppler along the height, and stretching one against
the other changes what the image says. A wide (or tall) image is resized so its shorter side is image_size and cut
into square image_size x image_size windows along its longer side (`square_windows`); each window is one sample,
and all windows of a file stay in the file's split. `aspect="squash"` stretches every image to image_size x
image_size instead, as tinyldm did before.
"""

import csv
import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from tinyldm.data.errors import DataError
from tinyldm.data.images import ASPECTS, count_windows, image_size_of, load_windows, size_notice, to_tensor

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_CACHE_BYTES = 2 * 1024**3  # decoded images are kept in memory up to this size, else re-read per item


def notice(message):
    """One-line notice to the user (skipped files, resizing); printed and logged."""
    print(f"notice: {message}", flush=True)
    log.info(message)


def stratified_split(files_by_user, split, val_fraction, seed):
    """Per user, a seeded shuffle puts round(val_fraction * n) images (at least one if n >= 2) into val.

    The shuffle is seeded with (seed, crc32(user name)), so adding or removing one user leaves every other
    user's split unchanged. Both splits are built and checked disjoint, whichever one is asked for.
    """
    out = {"train": {}, "val": {}, "all": {name: list(files) for name, files in files_by_user.items()}}
    for name, files in files_by_user.items():
        n = len(files)
        n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
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

    root:         a folder with one sub-folder per user (PNG/JPEG/BMP/TIFF, searched recursively), or a
                  CSV file with rows `path,user` (see `from_csv`)
    image_size:   every sample is image_size x image_size; images of other sizes are read as `aspect` says
                  (one notice naming the sizes) or, with strict_size=True, rejected
    channels:     1 (grayscale) or 3 (RGB); palette, RGBA, 16-bit and grayscale files are converted
    split:        "train", "val" or "all"; a seeded split per user (stratified), val_fraction of each user's files
    transform:    optional callable on the tensor x (C, H, W), e.g. `transforms.SpectrogramAugment()`
    aspect:       "windows" (default): a wide or tall image is resized keeping its aspect and cut into square
                  windows along its longer side, one sample each (see square_windows); "squash": every image is
                  stretched to image_size x image_size, one sample per file

    `samples` lists `(path, user_id, window)`, the window's index within its file; `n_files` counts the files.
    `classes` are the sorted user names (id = index), `class_to_idx` maps them back; save it with the run.
    Folder names sort as text, so "user_10" comes before "user_2" (zero-pad: "user_02"); CSV ids sort by value.
    Non-image files are skipped and counted in one notice; empty, corrupt or truncated images raise DataError,
    and so does one image file under two users (a copied row, a linked folder).
    """

    def __init__(self, root, image_size=64, channels=3, split="train", val_fraction=0.1, seed=0,
                 strict_size=False, transform=None, aspect="windows", _files_by_user=None):
        root = Path(root)
        if _files_by_user is None and root.is_file() and root.suffix.lower() == ".csv":
            _files_by_user = read_csv(root)
        self._check_args(root, image_size, channels, split, val_fraction, aspect)
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

        # 2. Lay out each file's windows from its size (read from the header) and say how other sizes are read.
        sizes = [image_size_of(path) for path, _ in files]
        self._check_sizes([path for path, _ in files], sizes)
        n_windows = [count_windows(w, h, self.image_size, aspect) for w, h in sizes]
        self.samples = [(path, user_id, k) for (path, user_id), n in zip(files, n_windows) for k in range(n)]

        # 3. Decode every file now (catches corrupt files at start-up); keep the windows if they fit.
        n_bytes = len(self.samples) * self.image_size**2 * self.channels
        self._cache = np.empty((len(self.samples), self.image_size, self.image_size, self.channels), np.uint8) \
            if n_bytes <= MAX_CACHE_BYTES else None  # (N, H, W, C), N = number of windows
        i = 0  # index of the file's first window in samples
        for (path, _), n in zip(files, n_windows):
            windows, _ = load_windows(path, self.image_size, self.channels, aspect)
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
    def _check_args(root, image_size, channels, split, val_fraction, aspect):
        if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
            raise DataError(f"image_size must be a positive integer, got {image_size!r}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if split not in ("train", "val", "all"):
            raise DataError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0 <= val_fraction < 1:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if aspect not in ASPECTS:
            raise DataError(f"aspect must be 'windows' (square windows along the longer side, aspect kept) or "
                            f"'squash' (stretch to a square), got {aspect!r}")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, user_id, window = self.samples[i]
        if self._cache is not None:
            x = self._cache[i]  # (H, W, C)
        else:
            x = load_windows(path, self.image_size, self.channels, self.aspect)[0][window]  # (H, W, C)
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


def is_image(path):
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def scan_folder(root):
    """{user name: sorted image paths} for a folder of user folders (sorted as text: "user_10" before "user_2")."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass --data DIR with one sub-folder per user")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a folder; pass a folder of user folders or a .csv")
    user_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if p.is_file() and is_image(p))
    if not user_dirs:
        hint = f" ({len(loose)} images lie directly in it: move each user's images into its own sub-folder)" \
            if loose else " (it is empty)"
        raise DataError(f"no user folders in {root}{hint}; expected root/<user>/<image>.png")
    if loose:
        notice(f"ignored {len(loose)} images lying directly in {root} (e.g. {loose[0].name}); only images in "
               f"user folders are used: move them into their user's folder")
    check_user_dirs(root, user_dirs)
    entries, skipped = [], []  # entries: (image path, user name, where it was found)
    for d in user_dirs:
        files = sorted(p for p in d.rglob("*") if p.is_file())
        images = [p for p in files if is_image(p)]
        skipped += [p for p in files if not is_image(p)]
        if not images:
            raise DataError(f"user folder {d} has no images (PNG/JPEG/BMP/TIFF); add images or remove the folder")
        entries += [(p, d.name, p.relative_to(root)) for p in images]
    if skipped:
        notice(f"skipped {len(skipped)} non-image files in {root} (e.g. {skipped[0].relative_to(root)})")
    return one_user_per_image(entries, root)


def check_user_dirs(root, user_dirs):
    """A user folder linked to the root (or above it) or to another user's folder would take others' images."""
    real_root, real_dirs = root.resolve(), {}
    for d in user_dirs:
        real = d.resolve()
        if real == real_root or real in real_root.parents:
            raise DataError(f"user folder {d} links to {real}, which contains the data folder {root} and so every "
                            f"user's images; replace the link with a folder of this user's images")
        if real in real_dirs:
            raise DataError(f"user folders {real_dirs[real]} and {d} are the same folder {real}; an image belongs "
                            f"to one user: remove the link")
        real_dirs[real] = d
    names = [d.name for d in user_dirs]
    if all(n.isascii() and n.isdigit() for n in names) and len({len(n) for n in names}) > 1:
        short, long = min(names, key=len), max(names, key=len)
        notice(f"user folders in {root} are numbers of different widths (e.g. {short} and {long}); they are sorted "
               f"as text, not by value: zero-pad the names (e.g. {short.zfill(len(long))}) for numeric order")


def one_user_per_image(entries, source):
    """{user: paths} from (path, user, where) entries; a repeat under one user is dropped, under two users raises.

    Images are compared by resolved path, so a link, a copied row or an './' prefix is the same image.
    """
    by_user, first, repeats = {}, {}, []  # first: resolved path -> (user, where)
    for path, user, where in entries:
        real = path.resolve()
        if real not in first:
            first[real] = (user, where)
            by_user.setdefault(user, []).append(path)
        elif first[real][0] == user:
            repeats.append(f"{where} repeats {first[real][1]}")
        else:
            raise DataError(f"{source}: image {path} is under user {first[real][0]} ({first[real][1]}) and user "
                            f"{user} ({where}); an image belongs to one user: remove one of them")
    if repeats:
        notice(f"dropped {len(repeats)} duplicate images in {source} (e.g. {repeats[0]}); each image is used once")
    return by_user


CSV_HEADERS = ("path", "file", "filename", "image")  # a first row starting with one of these is a header


def read_csv(csv_path):
    """{user value as text: paths} from rows `path,user`; a header row is recognised and skipped.

    Ids are zero-padded ("02", "10") so that the dataset's text sort is numeric order. A row repeating a
    (path, user) is dropped with a notice; the same image under two users is a DataError.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"CSV file {csv_path} does not exist; pass a CSV with rows 'path,user'")
    rows = csv_rows(csv_path)
    if not rows:
        raise DataError(f"CSV file {csv_path} has no rows; expected lines 'path,user' (user an integer)")
    by_user = one_user_per_image([(*csv_entry(csv_path, line, row), f"row {line}") for line, row in rows], csv_path)
    width = len(str(max(by_user)))
    return {str(k).zfill(width): sorted(v) for k, v in sorted(by_user.items())}


def csv_rows(csv_path):
    """[(line number in the file, row)] of the non-blank rows, header dropped. A UTF-8 BOM (Excel) is accepted."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {csv_path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 "
                        f"(Excel: 'CSV UTF-8')") from None
    if rows and rows[0][1][0].strip().lower() in CSV_HEADERS:
        rows = rows[1:]
    return rows


def csv_entry(csv_path, line, row):
    """(image path, user id) of one CSV row, checked; relative paths are relative to the CSV's folder."""
    if len(row) < 2:
        raise DataError(f"{csv_path} row {line} {row!r} needs two columns 'path,user'")
    path, user = Path(row[0].strip()), row[1].strip()
    try:
        user_id = int(user)
    except ValueError:
        raise DataError(f"{csv_path} row {line}: user {user!r} is not an integer; use integer user ids") from None
    if user_id < 0:
        raise DataError(f"{csv_path} row {line}: user {user_id} is negative (negative ids do not sort by value as "
                        f"text); use user ids 0, 1, 2, ...")
    path = path if path.is_absolute() else csv_path.parent / path
    if not path.is_file():
        raise DataError(f"{csv_path} row {line}: image {path} does not exist; fix the path or drop the row")
    if path.suffix.lower() not in IMAGE_EXTS:
        raise DataError(f"{csv_path} row {line}: {path} is not a PNG/JPEG/BMP/TIFF image; drop the row")
    return path, user_id


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
