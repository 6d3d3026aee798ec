"""The seams between the library's parts: what inference imports, the package's front door, config.json storing each
setting once and reading it back, and a clear error where a backbone's output cannot be a prediction."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinyldm.diffusion import Schedule, diffusion_loss
from tinyldm.models.dit import DiT
from tinyldm.train import args_record, saved_args


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_inference_never_imports_training_code():
    code = ("import sys, sample, tinyldm.generate, tinyldm.loading, tinyldm.evaluation.__main__\n"
            "print(sorted(m for m in sys.modules if m == 'tinyldm.train'))")
    out = python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_package_front_door_and_the_data_modules_import_in_any_order():
    out = python("from tinyldm import UNet2DConditionModel, DiT, MMDiT, Schedule, sample, SamplingConfig")
    assert out.returncode == 0, out.stderr
    for first in ("tinyldm.data.microdoppler", "tinyldm.data.datasets", "tinyldm.data.latent_cache"):
        out = python(f"import {first}; import tinyldm.data; from tinyldm.data import DataError")
        assert out.returncode == 0, (first, out.stderr)


def test_each_setting_is_stored_once_and_read_back_from_where_it_is():
    stored_elsewhere = {"prediction": ("prediction",), "flow_shift": ("schedule", "shift"),
                        "schedule": ("schedule", "beta_schedule"), "grid_cfg": ("grid", "sampling", "cfg_scale")}
    args = argparse.Namespace(prediction="flow", flow_shift=3.0, schedule="linear", grid_cfg=2.0, lr=1e-3,
                              out=None, data=Path("data/x"))
    config = {"prediction": "flow", "schedule": Schedule.flow(shift=3.0).to_config(),
              "grid": {"sampling": {"cfg_scale": 2.0}}, "args": args_record(args, stored_elsewhere)}
    assert config["args"] == {"lr": 1e-3, "out": None, "data": "data/x"}  # each setting once, paths as text
    back = saved_args(config, stored_elsewhere)
    # The β schedule of a flow run is stored nowhere: it keeps the command line's default.
    assert back == {"lr": 1e-3, "out": None, "data": "data/x", "prediction": "flow", "flow_shift": 3.0,
                    "grid_cfg": 2.0}


def test_a_dit_that_also_predicts_a_variance_gets_a_clear_error_in_the_loss():
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    assert model.config.learn_sigma  # the original DiT's default: 2C output channels
    x0 = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="learn_sigma=False"):
        diffusion_loss(model, x0, Schedule.vp("linear"), "eps", cond=torch.tensor([0, 1]))
