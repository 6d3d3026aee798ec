"""Evaluate generated spectrograms with a user-ID classifier: `python evaluate.py --help` (same as
`python -m tinyldm.evaluation`); the code is in tinyldm/evaluation/."""

import sys

from tinyldm.evaluation.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
