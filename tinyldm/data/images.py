"""Reading one image file as square samples: any mode to 8-bit L/RGB, and wide or tall images kept in aspect.

A spectrogram's axes mean something (time along the width, Doppler along the height), so stretching a 1000×600
recording to a square changes what it says: every motion looks 1.67× faster. By default a wide (or tall) image is
resized so its shorter side is `size` and cut into square size × size windows along its longer side
(`square_windows`); `squash` stretches it, as tinyldm did before. Images within 2 % of square are simply resized.
"""

import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tinyldm.data.errors import DataError

NEAR_SQUARE = 1.02  # an image whose long side is within 2 % of its short side is resized to a square, not windowed
ASPECTS = ("windows", "squash")  # how UserImageFolder reads images that are not square: see square_windows


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
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path} ({e}); the file is corrupt or truncated: replace it") from None


def image_size_of(path):
    """(w, h) of an image file, from its header (fast: nothing is decoded)."""
    return with_image(path, lambda img: img.size)


def read_image(path, channels):
    """An image file fully decoded (a truncated file fails here, not mid-training) as a PIL 'L' or 'RGB' image."""
    def decode(img):
        img.load()
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


def load_windows(path, image_size, channels, aspect="windows"):
    """Read one image file as the samples UserImageFolder makes of it -> (list of uint8 (S, S, C), original (w, h)).

    aspect "windows": square_windows (aspect kept, one or more windows); "squash": one image stretched to S x S.
    """
    img = read_image(path, channels)
    windows = square_windows(img, image_size) if aspect == "windows" else [squash(img, image_size)]
    return windows, img.size


def load_image(path, image_size, channels):
    """Read one image file as uint8 (H, W, C) at image_size x image_size, stretched whatever its aspect;
    returns (array, original (w, h)). UserImageFolder reads files with load_windows."""
    img = read_image(path, channels)
    return squash(img, image_size), img.size


def _to_mode(img, channels):
    """Palette, RGBA, 16-bit and grayscale images -> 8-bit 'L' (channels=1) or 'RGB' (channels=3)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)  # (H, W)
        if img.mode != "F":
            a = a / 257.0  # 16-bit 0..65535 -> 0..255
        elif a.max() <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")  # applies palette transparency, if any, before we drop alpha
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
