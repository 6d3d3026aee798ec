import sys
from pathlib import Path

import pytest
import torch

# The scripts (train_vae.py, train_ldm.py, sample.py, …) live at the repository root; tests import them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Tests run on 2 CPU cores; keep thread count predictable.
torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def classifier_cache(tmp_path_factory):
    """The evaluation's shared classifier cache ($TINYLDM_CACHE) in a temporary folder, never ~/.cache/tinyldm."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYLDM_CACHE", str(tmp_path_factory.mktemp("tinyldm-cache")))
        yield
