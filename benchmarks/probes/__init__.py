"""Hostile cases for benchmarks/robustness_probe.py, one module per area (issue 33).

Each module defines CASES, a list of `Case`: what a new user might do, what tinyldm did before (the issue's words)
and a function that does it now in a scratch folder and reports what happened. The runner prints the table.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# What a case can end in, best first. "lost work", "silently wrong" and "traceback" are failures; "misleading" is a
# one-line error that points the user the wrong way.
VERDICTS = ("handled", "clear error", "misleading", "traceback", "silently wrong", "lost work")


@dataclass
class Case:
    group: str  # "lost work", "silently wrong", "raw traceback", "misleading", "shared machine"
    name: str  # what the user did, in a few words
    before: str  # what happened before (issue 33's words)
    run: Callable[[Path], tuple[str, str]]  # scratch folder → (verdict from VERDICTS, what happened now, one line)
