"""Reading one image file as square samples: values to 8-bit L/RGB by the value rule, and wide or tall images kept
in aspect.

Values: 8-bit files are read as they are; 16-bit and float files (and .npy arrays) are mapped to 0..255 by the data
set's range, measured once at start-up (`tinyldm/data/values.py` states the rule). Transparent pixels (RGBA, LA,
palette transparency) are composited onto black: a transparent pixel holds no value, and black is "no return" on
a grey scale; a fully opaque image is read exactly as its RGB. A start-up notice names the files with transparency.

A spectrogram's axes mean something (time along the width, Doppler along the height), so stretching a 1000×600
recording to a square changes what it says: every motion looks 1.67× faster. By default a wide (or tall) image is
resized so its shorter side is `size` and cut into square size × size windows along its longer side
(`square_windows`); `squash` stretches it, as tinyldm did before. Images within 2 % of square are simply resized.
"""

import math
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tinyldm.data.errors import DataError
from tinyldm.data.values import CONTAINER_RANGES, kind_of, to_levels

NEAR_SQUARE = 1.02  # an image whose long side is within 2 % of its short side is resized to a square, not windowed
ASPECTS = ("windows", "squash")  # how UserImageFolder reads images that are not square: see square_windows
VALUE_MODES = {"I;16": "integer", "I;16B": "integer", "I;16L": "integer", "I;16N": "integer", "I": "integer",
               "F": "float"}  # PIL modes read by the value rule; every other mode is 8-bit
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class Header(NamedTuple):
    """What a file's header says, before any pixel is decoded."""

    size: tuple[int, int]  # (w, h)
    kind: str  # value kind: "8-bit", "integer" or "float" (values.KINDS)
    alpha: bool  # it may have transparent pixels


def with_image(path, read):
    """read(PIL image of the file at path), with an unreadable file turned into a one-line DataError naming it."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataError(f"image {path} is empty (0 bytes); delete or replace it")
    try:
        with Image.open(path) as img:
            return read(img)
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path} (not a valid image file); delete or replace it") from None
    except Image.DecompressionBombError as e:
        raise DataError(too_large(path, e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({e}); the file is corrupt or truncated: replace it") from None


def too_large(path, e):
    """The message for an image over Pillow's decompression-bomb limit: its size, and how to read it if intended."""
    pixels = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(pixels[1]) / 1e6:.0f} M pixels" if pixels else str(e)
    return (f"image {path} is {size}, over Pillow's limit of {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} M (a guard "
            f"against decompression bombs); if it is a real recording, resize it first (e.g. to 256 px high), or "
            f"raise PIL.Image.MAX_IMAGE_PIXELS before building the dataset")


def with_array(path, read):
    """read(numpy array of the .npy file at path, memory-mapped), with a bad file turned into one DataError line."""
    path = Path(path)
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read array {path} ({e}); save it with np.save as a plain (H, W) or (H, W, C) array"
                        ) from None
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3))) or 0 in a.shape:
        raise DataError(f"array {path} has shape {a.shape}; expected (H, W) or (H, W, C) with C = 1 or 3, channels "
                        f"last (np.moveaxis(a, 0, -1) moves them there)")
    kind_of(a.dtype, path)  # refuses complex and non-numeric arrays
    return read(a)


def is_array(path):
    return Path(path).suffix.lower() == ".npy"


def image_header(img, path):
    """Header of an open PIL image; a 16-bit colour PNG, which Pillow reads by its high byte only, is refused."""
    rawmode = img.tile[0][-1] if img.tile else None  # e.g. 'RGB;16B' for a 16-bit colour PNG
    if img.mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode:
        raise DataError(f"{path} is a 16-bit colour image, which Pillow reads by its high byte only; save it as a "
                        f"16-bit grayscale PNG or as a uint16 .npy (H, W, 3)")
    alpha = img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    return Header(img.size, VALUE_MODES.get(img.mode, "8-bit"), alpha)


def read_header(path):
    """Header(size, value kind, alpha) of an image or .npy file (fast: nothing is decoded)."""
    if is_array(path):
        return with_array(path, lambda a: Header((a.shape[1], a.shape[0]), kind_of(a.dtype, path), False))
    return with_image(path, lambda img: image_header(img, path))


def read_values(path):
    """The values of a 16-bit, float or .npy file as a numpy array (H, W) or (H, W, C), in the file's own dtype."""
    if is_array(path):
        return with_array(path, np.array)
    def decode(img):
        img.load()
        return np.asarray(img)  # (H, W)
    return with_image(path, decode)


def transparent_fraction(path):
    """The fraction of an image's pixels that are not fully opaque (alpha < 255)."""
    def decode(img):
        alpha = np.asarray(img.convert("RGBA").getchannel("A"))  # (H, W)
        return float((alpha < 255).mean())
    return with_image(path, decode)


def read_image(path, channels, ranges=CONTAINER_RANGES):
    """A file fully decoded (a truncated file fails here, not mid-training) as a PIL 'L' or 'RGB' image; values of
    16-bit and float files (and .npy arrays) are mapped to 0..255 by `ranges` (values.py), alpha onto black."""
    if is_array(path):
        a = read_values(path)  # (H, W) or (H, W, C)
        levels = to_levels(a, *ranges.of(kind_of(a.dtype, path)))
        img = Image.fromarray(levels[:, :, 0] if levels.ndim == 3 and levels.shape[2] == 1 else levels)
        return img.convert("L" if channels == 1 else "RGB")
    def decode(img):
        img.load()
        if img.mode in VALUE_MODES:
            img = Image.fromarray(to_levels(np.asarray(img), *ranges.of(VALUE_MODES[img.mode])), "L")
        return _to_mode(img, channels)
    return with_image(path, decode)


def to_array(img):
    """PIL 'L' or 'RGB' image -> uint8 (H, W, C), writable (torch.from_numpy warns on PIL's read-only buffer)."""
    x = np.array(img, dtype=np.uint8)  # (H, W) or (H, W, 3)
    return x[:, :, None] if x.ndim == 2 else x  # (H, W, C)


def squash(img, size):
    """PIL image -> uint8 (size, size, C), stretched to a square whatever its aspect."""
    if img.size != (size, size):
        # PIL's resize filters over the whole source footprint when shrinking, so this also anti-aliases.
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return to_array(img)  # (size, size, C)


def window_offsets(long, size):
    """Starts of n = ceil(long / size) windows of `size` spread evenly over `long`: the first at 0, the last at
    long - size, so every column is covered and neighbours overlap as little as possible ([0] if long <= size)."""
    if long <= size:
        return [0]
    n = math.ceil(long / size)
    return [round(i * (long - size) / (n - 1)) for i in range(n)]  # steps of (long - size)/(n - 1) <= size


def is_near_square(w, h):
    """Within NEAR_SQUARE of square: such an image is resized to a square (one window), not cut into windows."""
    return max(w, h) <= NEAR_SQUARE * min(w, h)


def window_layout(w, h, size):
    """How square_windows reads a w x h image -> ((w', h') it is resized to, window offsets along the longer side).

    Within NEAR_SQUARE of square: resized to size x size, one window. Otherwise resized keeping the aspect so the
    shorter side is `size`, with window_offsets along the longer side.
    """
    if is_near_square(w, h):
        return (size, size), [0]
    long = max(size, round(max(w, h) * size / min(w, h)))
    return ((long, size) if w > h else (size, long)), window_offsets(long, size)


def square_windows(img, size):
    """PIL image -> list of uint8 (size, size, C) windows along its longer side, aspect kept (see window_layout).

    A wide image is cut along its width (time), a tall one along its height; a square one is one window.
    """
    (w, h), offsets = window_layout(*img.size, size)
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BICUBIC)  # filters over the source footprint: anti-aliased
    x = to_array(img)  # (h, w, C)
    if w >= h:
        return [x[:, o:o + size] for o in offsets]  # each (size, size, C)
    return [x[o:o + size] for o in offsets]  # each (size, size, C)


def count_windows(w, h, size, aspect="windows"):
    """How many samples load_windows makes of a w x h image, from its size alone (no decoding)."""
    return 1 if aspect == "squash" else len(window_layout(w, h, size)[1])


def load_windows(path, image_size, channels, aspect="windows", ranges=CONTAINER_RANGES):
    """Read one image file as the samples UserImageFolder makes of it -> (list of uint8 (S, S, C), original (w, h)).

    aspect "windows": square_windows (aspect kept, one or more windows); "squash": one image stretched to S x S.
    ranges: the data set's value ranges for 16-bit and float files (values.measure_ranges).
    """
    img = read_image(path, channels, ranges)
    windows = square_windows(img, image_size) if aspect == "windows" else [squash(img, image_size)]
    return windows, img.size


def load_image(path, image_size, channels):
    """Read one image file as uint8 (H, W, C) at image_size x image_size, stretched whatever its aspect;
    returns (array, original (w, h)). 16-bit values map 0..65535 and floats [0, 1] to 0..255 (no data set to measure
    a range on). UserImageFolder reads files with load_windows."""
    img = read_image(path, channels)
    return squash(img, image_size), img.size


def _to_mode(img, channels):
    """Palette, RGBA, LA and grayscale 8-bit images -> 'L' (channels=1) or 'RGB' (channels=3), alpha onto black."""
    if img.mode == "P":
        img = img.convert("RGBA")  # applies palette transparency, if any
    if img.mode in ALPHA_MODES:
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA"))  # rgb · α/255; exactly rgb where α = 255
    return img.convert("L" if channels == 1 else "RGB")


def to_tensor(x):
    """uint8 (H, W, C) -> float (C, H, W) in [-1, 1]: x / 127.5 - 1, as in the seed configuration."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).float() / 127.5 - 1.0  # (C, H, W)


MAX_SIZES_NAMED = 3  # original sizes described one by one in the notice; the rest are counted


def how_read(w, h, size, aspect):
    """In words, for the notice: how a w x h image becomes size x size samples."""
    (rw, rh), offsets = window_layout(w, h, size)
    if aspect == "squash" and not is_near_square(w, h):
        long, short = ("width", "height") if w > h else ("height", "width")
        return (f"squashed to {size}×{size} (the {long} shrinks {max(w, h) / min(w, h):.2f}× more than "
                f"the {short})")
    if len(offsets) == 1:
        return f"resized to {size}×{size}"
    shown = offsets if len(offsets) <= 6 else [*offsets[:3], "…", offsets[-1]]
    resized = "" if (rw, rh) == (w, h) else f"resized to {rw}×{rh} keeping the aspect and "
    return (f"{resized}cut into {len(offsets)} square {size}×{size} windows along the "
            f"{'width' if rw > rh else 'height'} (offsets {', '.join(map(str, shown))})")


def size_notice(root, sizes, size, aspect):
    """The one notice line on how the images that are not size x size are read, by original size (None if none).

    sizes: the (w, h) of every image file of the dataset.
    """
    groups = Counter(wh for wh in sizes if wh != (size, size))  # {(w, h): number of files}
    if not groups:
        return None
    described = [(n, f"{w}×{h} (aspect {w / h:.2f}): {how_read(w, h, size, aspect)}")
                 for (w, h), n in groups.most_common(MAX_SIZES_NAMED)]
    n_odd = sum(groups.values())
    if len(groups) == 1:
        text = f"{n_odd} of {len(sizes)} images in {root} are {described[0][1]}"
    else:
        text = (f"{n_odd} of {len(sizes)} images in {root} are not {size}×{size}: "
                + "; ".join(f"{n} {'is' if n == 1 else 'are'} {what}" for n, what in described))
        if len(groups) > MAX_SIZES_NAMED:
            rest = n_odd - sum(n for n, _ in described)
            text += f"; {rest} more are of {len(groups) - MAX_SIZES_NAMED} other sizes"
    if aspect == "windows" and any(len(window_layout(w, h, size)[1]) > 1 for w, h in groups):
        text += f"; aspect='squash' stretches them to {size}×{size} instead"
    return text
