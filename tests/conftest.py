import sys
from pathlib import Path

import torch

# The scripts (train_vae.py, train_ldm.py, sample.py, …) live at the repository root; tests import them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Tests run on 2 CPU cores; keep thread count predictable.
torch.set_num_threads(2)
