"""Pixel values -> the 256 levels the models see: one rule per kind of file, measured once per data set.

The models read every image as 8-bit levels u in 0..255 (then x = u / 127.5 - 1, see images.to_tensor). Files
come in three kinds of value, and each kind has one range [lo, hi] that is mapped linearly onto 0..255:

    kind       what it is                                   [lo, hi]
    8-bit      PNG/JPEG/BMP/TIFF with 8 bits a channel,     [0, 255]: read as they are (bit-identical to before)
               uint8 .npy
    integer    16-bit PNG/TIFF, integer .npy                [0, 2^b - 1], b the smallest of 8, 10, 12, 14, 16 bits
                                                            that holds the data set's largest value: 12-bit radar
                                                            values stored in 16-bit files (max 4095) read as 12-bit
    float      32-bit float TIFF, float .npy                [0, 1] if every value of the data set lies in it, else
               (e.g. a spectrogram in dB, -60 ... 0)        the data set's [min, max], e.g. [-60, 0] dB

    u = round((clip(v, lo, hi) - lo) / (hi - lo) * 255)

The range is measured over every file of the data set (train and val alike), never per image: a per-image
min-max would make a quiet recording as bright as a loud one, and the same file would read differently in
another split. `value_range=(lo, hi)` fixes [lo, hi] for the integer and float files instead (values outside are
clipped), e.g. (-40, 0) to keep 40 dB below the peak. A start-up notice says which range was used.

Refused with one line naming the file: NaN or infinite values, complex values, negative integers, integers
above 16 bits, and a float file whose range sticks out of the others' by more than their typical span (e.g.
linear power among dB files), which would otherwise squash every other image into a few levels.
"""

from dataclasses import dataclass

import numpy as np

from tinyldm.data.errors import DataError

KINDS = ("8-bit", "integer", "float")
DEPTHS = (8, 10, 12, 14, 16)  # bit depths an integer data set may have; sensors and ADCs come in even depths


@dataclass(frozen=True)
class ValueRanges:
    """[lo, hi] -> 0..255 for the integer and the float files of one data set (8-bit files always [0, 255])."""

    integer: tuple[float, float] = (0, 65535)  # 16-bit containers: (0, 2^b - 1)
    float: tuple[float, float] = (0.0, 1.0)  # float images and arrays

    def of(self, kind):
        return {"8-bit": (0, 255), "integer": self.integer, "float": self.float}[kind]


CONTAINER_RANGES = ValueRanges()  # a file read on its own, with no data set to measure: 0..65535 and [0, 1]


def kind_of(dtype, path):
    """The value kind of a numpy dtype (see the table above); a complex or non-numeric dtype is refused."""
    if dtype == np.uint8:
        return "8-bit"
    if np.issubdtype(dtype, np.integer):
        return "integer"
    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{path} holds complex values; save the magnitude in dB (20 log10 |S|) as float32")
    raise DataError(f"{path} holds {dtype} values, not numbers tinyldm can read; save it as uint8, uint16 or float32")


def value_bounds(a, path):
    """(min, max) of an integer or float array, after refusing what no range can map: NaN, inf, negative integers."""
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            what = "NaN" if np.isnan(a).any() else "infinite"
            raise DataError(f"{path} has {int(bad.sum())} {what} values of {a.size}; replace them (e.g. with the "
                            f"floor of your dB range, np.nan_to_num(a, nan=lo, neginf=lo)) before training")
    lo, hi = a.min().item(), a.max().item()
    if np.issubdtype(a.dtype, np.integer) and lo < 0:
        raise DataError(f"{path} holds negative integers (min {lo}); save unsigned values or float32 (e.g. in dB)")
    if np.issubdtype(a.dtype, np.integer) and hi > 2**DEPTHS[-1] - 1:
        raise DataError(f"{path} holds integers up to {hi}, more than 16 bits; save float32 values (e.g. in dB)")
    return lo, hi


def integer_depth(largest):
    """The smallest of DEPTHS holding `largest`: 4095 -> 12, 4096 -> 14, 255 -> 8."""
    return next(b for b in DEPTHS if largest <= 2**b - 1)


def float_range(bounds):
    """[lo, hi] of a data set's float files from each file's (min, max): [0, 1] if all lie in it, else [min, max].

    A file sticking out of the typical (median) range by more than the typical span is refused, naming both.
    """
    los, his = np.array([b[1][0] for b in bounds]), np.array([b[1][1] for b in bounds])
    if los.min() >= 0 and his.max() <= 1:
        return 0.0, 1.0
    if len(bounds) >= 3:
        typical_lo, typical_hi = float(np.median(los)), float(np.median(his))
        span = max(float(np.median(his - los)), 1e-12)
        for path, (lo, hi) in bounds:
            if lo < typical_lo - span or hi > typical_hi + span:
                raise DataError(f"{path} holds values {lo:.4g} … {hi:.4g}, far from the other float images "
                                f"(typically {typical_lo:.4g} … {typical_hi:.4g}); convert it to their scale "
                                f"(dB: 10 log10 of power) or remove it")
    lo, hi = float(los.min()), float(his.max())
    if lo == hi:
        raise DataError(f"every float image of the data set holds the single value {lo:.4g}; nothing to learn "
                        f"from: check how they were saved")
    return lo, hi


def measure_ranges(bounds, value_range=None):
    """ValueRanges of a data set from [(path, kind, (min, max))] of its integer and float files, and the notice
    saying which ranges were used (None when every file is 8-bit). value_range fixes both ranges instead."""
    ints = [(p, b) for p, kind, b in bounds if kind == "integer"]
    floats = [(p, b) for p, kind, b in bounds if kind == "float"]
    if not ints and not floats:
        return ValueRanges(), None
    said = []
    if value_range is not None:
        lo, hi = value_range
        ranges = ValueRanges(integer=(lo, hi), float=(lo, hi))
        said.append(f"{len(ints) + len(floats)} 16-bit or float images: value_range [{lo:g}, {hi:g}] → [−1, 1] "
                    f"(values outside are clipped)")
        return ranges, "; ".join(said)
    integer, floating = ValueRanges.integer, ValueRanges.float
    if ints:
        largest = max(hi for _, (_, hi) in ints)
        b = integer_depth(largest)
        integer = (0, 2**b - 1)
        said.append(f"{len(ints)} 16-bit images (largest value {largest}) read as {b}-bit, 0 … {2**b - 1} → [−1, 1]")
    if floats:
        floating = float_range(floats)
        where = "the float convention" if floating == (0.0, 1.0) else "the data set's range"
        said.append(f"{len(floats)} float images: {where} [{floating[0]:.4g}, {floating[1]:.4g}] → [−1, 1]")
    return ValueRanges(integer, floating), "; ".join(said) + "; value_range=(lo, hi) fixes another range"


def check_value_range(value_range):
    """None or a pair of numbers lo < hi (both finite)."""
    if value_range is None:
        return
    ok = (isinstance(value_range, (tuple, list)) and len(value_range) == 2
          and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value_range)
          and all(np.isfinite(value_range)) and value_range[0] < value_range[1])
    if not ok:
        raise DataError(f"value_range must be None (measured from the data) or (lo, hi) with lo < hi, e.g. (-60, 0) "
                        f"for dB, got {value_range!r}")


def to_levels(a, lo, hi):
    """Values -> uint8 levels: [lo, hi] -> 0..255 linearly, values outside clipped (same shape as a)."""
    if a.dtype == np.uint8 and (lo, hi) == (0, 255):
        return a
    u = (np.clip(a.astype(np.float64), lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(u).astype(np.uint8)
