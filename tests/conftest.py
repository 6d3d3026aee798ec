import sys
from pathlib import Path

import pytest
import torch

from tinyldm import threads

# The scripts (train_vae.py, train_ldm.py, sample.py, …) live at the repository root; tests import them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Tests run on 2 CPU cores; keep thread count predictable.
torch.set_num_threads(2)


REAL_START = threads.start


@pytest.fixture(autouse=True, scope="session")
def steady_threads():
    """torch's thread count stays what a test sets. The scripts' share_cores (tinyldm/threads.py) follows other
    processes' CPU use every 2 s; inside a test it could change the count between two runs that the test compares
    bit for bit (float sums then round differently), at moments that depend on the machine. Session-wide, so that
    module-scoped fixtures (which train classifiers and models through the scripts) are covered too: a script run by
    one module's fixture once left share_cores on for the next module's, whose cached classifier then differed from
    a fresh one. Subprocesses a test starts run the scripts as a user would."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threads, "start", lambda: None)
        mp.setitem(threads._state, "active", False)
        yield


@pytest.fixture(autouse=True)
def real_core_sharing(request, monkeypatch):
    """tests/test_threads.py tests share_cores itself, with the real start()."""
    if request.module.__name__ == "test_threads":
        monkeypatch.setattr(threads, "start", REAL_START)


@pytest.fixture(autouse=True, scope="session")
def classifier_cache(tmp_path_factory):
    """The evaluation's shared classifier cache ($TINYLDM_CACHE) in a temporary folder, never ~/.cache/tinyldm."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYLDM_CACHE", str(tmp_path_factory.mktemp("tinyldm-cache")))
        yield


@pytest.fixture(autouse=True, scope="session")
def no_guidance_choice():
    """train_ldm.py chooses its run's guidance scale after training by sampling a few hundred images at several
    scales: seconds that the tests' runs of a few steps would spend on every call, choosing among noise. Their
    default is off; tests/test_guidance_choice.py turns it on (--choose-guidance) and tests it."""
    import train_ldm

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_ldm, "CHOOSE_GUIDANCE", False)
        yield
