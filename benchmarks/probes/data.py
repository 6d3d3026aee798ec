"""Issue 33's data cases: radar-style values, transparency, layout traps, imbalance, constructor arguments, CSV paths,
decompression bombs. Each builds the hostile folder in a scratch folder, reads it with UserImageFolder and judges
what came out (the levels read, the notices printed, the error's one line), so a verdict is measured, not claimed.
"""

import contextlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from probes import Case
from tinyldm.data import DataError, UserImageFolder


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def ramp(lo, hi, dtype, size=16):
    return np.linspace(lo, hi, size * size).reshape(size, size).astype(dtype)  # (H, W)


def read(root, *args, **kwargs):
    """UserImageFolder(root, ...) -> (dataset or None, one-line DataError or None, the notices printed).
    Any other exception propagates: the runner counts it as a traceback."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            return UserImageFolder(root, *args, **kwargs), None, out.getvalue()
        except DataError as e:
            return None, str(e), out.getvalue()


def refused(error, *fragments):
    """The verdict of a case that must end in one line naming what it names."""
    if error is None:
        return "silently wrong", "read without a word"
    if "\n" in error or not all(f in error for f in fragments):
        return "misleading", error
    return "clear error", error


def first_notice(notices, fragment):
    return next((line for line in notices.splitlines() if fragment in line), None)


def level_span(ds):
    """(lowest, highest) 8-bit level the dataset read."""
    return int(ds._cache.min()), int(ds._cache.max())


# 1. Values.

def float_db_tiff(tmp):
    for user in ("a", "b"):
        save(tmp / user / "0.tiff", ramp(-60, 0, np.float32))
    ds, error, notices = read(tmp, 16, 1, split="all")
    said = first_notice(notices, "values of")
    if ds is None:
        return "misleading", error
    lo, hi = level_span(ds)
    return ("handled" if (lo, hi) == (0, 255) and said else "silently wrong"), f"levels {lo}…{hi}; {said}"


def twelve_bit_png(tmp):
    for user in ("a", "b"):
        save(tmp / user / "0.png", ramp(0, 4095, np.uint16))
    ds, error, notices = read(tmp, 16, 1, split="all")
    if ds is None:
        return "misleading", error
    lo, hi = level_span(ds)
    said = first_notice(notices, "values of")
    return ("handled" if hi == 255 and said else "silently wrong"), f"levels {lo}…{hi}; {said}"


def float_npy(tmp):
    for user in ("a", "b"):
        save(tmp / user / "0.npy", ramp(-40, 0, np.float32))
    ds, error, notices = read(tmp, 16, 3, split="all")
    if ds is None:
        return "misleading", error
    lo, hi = level_span(ds)
    return ("handled" if (lo, hi) == (0, 255) else "silently wrong"), f"levels {lo}…{hi}; " \
        f"{first_notice(notices, 'values of')}"


def bad_values(make, *fragments):
    """A case: three good dB arrays and one made by make(), which must be refused naming the file."""
    def run(tmp):
        for user in ("a", "b", "c"):
            save(tmp / user / "0.npy", ramp(-60, 0, np.float32))
        save(tmp / "c" / "bad.npy", make())
        return refused(read(tmp, 16, split="all")[1], "bad.npy", *fragments)
    return run


def with_nan():
    a = ramp(-60, 0, np.float32)
    a[0, 0] = np.nan
    return a


# 2. Transparency.

def rgba_transparent(tmp):
    rgb = np.full((16, 16, 3), 200, np.uint8)
    alpha = np.full((16, 16), 255, np.uint8)
    save(tmp / "a" / "0.png", np.dstack([rgb, alpha]))
    alpha[:8] = 0
    save(tmp / "b" / "0.png", np.dstack([rgb, alpha]))
    ds, error, notices = read(tmp, 16, 3, split="all")
    said = first_notice(notices, "transparent")
    return ("handled" if said else "silently wrong"), said or "no notice"


# 3. Layout traps.

def site_user_nesting(tmp):
    for site, users in (("site_A", ("alice", "bob")), ("site_B", ("carol", "dave"))):
        for user in users:
            save(tmp / site / user / "0.png", np.zeros((16, 16, 3), np.uint8))
    ds, error, notices = read(tmp, 16, split="all")
    said = first_notice(notices, "only in sub-folders")
    return ("handled" if said else "silently wrong"), said or f"users {ds.classes}"


def dot_user(tmp):
    for user in ("alice", "bob", ".dotuser"):
        save(tmp / user / "0.png", np.zeros((16, 16, 3), np.uint8))
    ds, error, notices = read(tmp, 16, split="all")
    said = first_notice(notices, ".dotuser")
    return ("handled" if said else "silently wrong"), said or f"users {ds.classes}"


def dangling_link(tmp):
    for user in ("alice", "bob"):
        save(tmp / user / "0.png", np.zeros((16, 16, 3), np.uint8))
    (tmp / "alice" / "1.png").symlink_to(tmp / "nowhere.png")
    ds, error, notices = read(tmp, 16, split="all")
    said = first_notice(notices, "broken link")
    return ("handled" if said else "silently wrong"), said or f"{len(ds)} images"


# 4. Imbalance.

def imbalance(tmp):
    for user, n in (("solo", 1), ("many", 500)):
        for i in range(n):
            save(tmp / user / f"{i:03d}.png", np.zeros((4, 4, 3), np.uint8))
    for user, n in (("mid", 20),):
        for i in range(n):
            save(tmp / user / f"{i:03d}.png", np.zeros((4, 4, 3), np.uint8))
    ds, error, notices = read(tmp, 4, split="train")
    said = first_notice(notices, "median")
    ok = said and "solo 1" in said and "many 500" in said and "no validation image" in said
    return ("handled" if ok else "silently wrong"), said or "no notice"


# 5. Constructor arguments.

def bad_argument(kwargs, *fragments):
    def run(tmp):
        save(tmp / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                ds = UserImageFolder(**{"root": tmp, "image_size": 4, **kwargs})
            except DataError as e:
                return refused(str(e), *fragments)
        return "silently wrong", f"built: {len(ds)} images of {ds._cache.shape[1]}×{ds._cache.shape[2]}"
    return run


# 6. CSV paths.

def csv_relative_paths(tmp):
    for user in ("a", "b"):
        save(tmp / "set" / "imgs" / user / "0.png", np.zeros((4, 4, 3), np.uint8))
    (tmp / "set" / "list.csv").write_text("imgs/a/0.png,0\nimgs/b/0.png,1\n")
    (tmp / "set" / "cwd.csv").write_text("set/imgs/a/0.png,0\n")
    here = os.getcwd()
    try:
        os.chdir(tmp / "set" / "imgs")  # anywhere else: paths are the CSV's folder's
        ds, error, _ = read(tmp / "set" / "list.csv", 4, split="all")
        os.chdir(tmp)
        _, cwd_error, _ = read(Path("set/cwd.csv"), 4, split="all")
    finally:
        os.chdir(here)
    if ds is None:
        return "misleading", error
    verdict, line = refused(cwd_error, "read from the CSV's folder", "write it as imgs/a/0.png")
    return ("handled" if verdict == "clear error" else verdict), f"CSV-folder paths read from elsewhere; {line}"


# 7. Decompression bomb.

def bomb(tmp):
    save(tmp / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))  # 900 M pixels, 8-bit gray
    (tmp / "b").mkdir()
    (tmp / "b" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0"))
                                         + chunk(b"IEND", b""))
    verdict, line = refused(read(tmp, 4, split="all")[1], "huge.png", "M pixels", "MAX_IMAGE_PIXELS")
    return ("misleading" if "corrupt" in line else verdict), line


SILENT, TRACE, MISLEADING = "silently wrong", "raw traceback", "misleading"
CASES: list[Case] = [
    Case(SILENT, "float32 TIFF spectrograms in dB (−60…0)", "read as all-black", float_db_tiff),
    Case(SILENT, "12-bit values in 16-bit PNGs", "read as 1–14 of 255", twelve_bit_png),
    Case(SILENT, ".npy float spectrograms in dB", "not an image type: no images found", float_npy),
    Case(SILENT, "float array with a NaN", "not readable (no .npy)", bad_values(with_nan, "NaN")),
    Case(SILENT, "complex .npy array", "not readable (no .npy)",
         bad_values(lambda: ramp(-60, 0, np.complex64), "complex")),
    Case(SILENT, "one float file in linear power among dB files", "not readable (no .npy)",
         bad_values(lambda: ramp(0, 1e6, np.float32), "far from the other")),
    Case(SILENT, "RGBA image with transparent pixels", "transparent pixels become black", rgba_transparent),
    Case(SILENT, "root/site/user nested folders", "1 user per site, without a word", site_user_nesting),
    Case(SILENT, "a user folder named .dotuser", "dropped without a word", dot_user),
    Case(SILENT, "a dangling .png symlink", "skipped without a word", dangling_link),
    Case(SILENT, "one user with 1 image, another with 500", "no notice; the 1-image user has no val image", imbalance),
    Case(SILENT, "UserImageFolder(image_size=True)", "1×1 images",
         bad_argument({"image_size": True}, "image_size must be")),
    Case(TRACE, "UserImageFolder(None)", "TypeError traceback", bad_argument({"root": None}, "root must be")),
    Case(MISLEADING, "CSV with paths relative to its own folder / to the working directory",
         "read from the working directory", csv_relative_paths),
    Case(MISLEADING, "a decompression bomb (30000×30000 PNG)", "reported as corrupt", bomb),
]
