"""Command-line values checked once, at start-up, so an option that makes no sense stops the script before any work
with one line naming the flag and what it allows:

    train_ldm.py: error: --grad-clip -1.0: must be ≥ 0 (0 = off)

Each script keeps a plain table of its numeric options right above its `parse_args`, option → allowed range,

    RANGES = {"lr": above(0), "grad_clip": at_least(0, "0 = off"), "ema_decay": between(0, 1)}

and calls `check_ranges(parser, args, RANGES)` after parsing. An option that is None (not given, no default) is
not checked. NaN and ±inf are never allowed. `--device` is checked by its argparse type, `device_name`.
"""

import argparse
import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """low ≤ x ≤ high (< where that end is open), and x finite; `note` says what a special value means."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # True: x > low
    high_open: bool = False  # True: x < high
    note: str = ""  # e.g. "0 = off"

    def contains(self, x) -> bool:
        if not math.isfinite(x):
            return False
        above_low = x > self.low if self.low_open else x >= self.low
        below_high = x < self.high if self.high_open else x <= self.high
        return above_low and below_high

    def __str__(self) -> str:
        """The condition as the error states it: "≥ 0", "> 0", "in [0, 1)" or "a finite number", and the note."""
        if math.isinf(self.low) and math.isinf(self.high):
            text = "a finite number"
        elif math.isinf(self.high):
            text = f"{'>' if self.low_open else '≥'} {_number(self.low)}"
        elif math.isinf(self.low):
            text = f"{'<' if self.high_open else '≤'} {_number(self.high)}"
        else:
            text = (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.high_open else ']'}")
        return text + (f" ({self.note})" if self.note else "")


def _number(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


# ---- the ranges a table is written in -----------------------------------------------------------------------------

def at_least(low, note: str = "") -> Range:
    """x ≥ low."""
    return Range(low=low, note=note)


def above(low, note: str = "") -> Range:
    """x > low."""
    return Range(low=low, low_open=True, note=note)


def between(low, high, note: str = "", low_open: bool = False, high_open: bool = False) -> Range:
    """low ≤ x ≤ high; either end excluded with low_open / high_open, e.g. a share in [0, 1)."""
    return Range(low=low, high=high, low_open=low_open, high_open=high_open, note=note)


def finite(note: str = "") -> Range:
    """Any finite number (not NaN, not ±inf)."""
    return Range(note=note)


SEED_RANGE = between(0, 2**32 - 1)  # what numpy's seeding accepts; the same seed range in every script


# ---- the checks -----------------------------------------------------------------------------------------------------

def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace, ranges: dict[str, Range]) -> None:
    """Each option in `ranges` (by its argparse name, `grad_clip` for --grad-clip) that is not None must lie in its
    range; the first that does not is reported through `parser.error` (usage, one line, exit status 2)."""
    for name, allowed in ranges.items():
        value = getattr(args, name)  # a name missing from the parser is a typo in the table: AttributeError
        if value is None or allowed.contains(value):
            continue
        flag = "--" + name.replace("_", "-")
        bounded = math.isfinite(allowed.low) or math.isfinite(allowed.high)
        finite_too = "a finite number " if bounded and not math.isfinite(value) else ""  # --lr inf: "> 0" is not why
        parser.error(f"{flag} {value}: must be {finite_too}{allowed}")


DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N = 0, 1, …) or mps"


def device_name(text: str) -> str:
    """argparse type of --device: the device names torch understands and tinyldm runs on; anything else is a usage
    error at start-up (`argument --device: 'tpu' is not a device; use auto, cpu, cuda, cuda:N (N = 0, 1, …) or mps`)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; use {DEVICE_FORMS}")
