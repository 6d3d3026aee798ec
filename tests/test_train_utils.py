"""Checkpoints are atomic and complete; RNG state round-trips; LR schedule; image metrics; pictures."""

import math

import pytest
import torch

from tinyldm.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from tinyldm.evaluation.image_metrics import psnr, ssim
from tinyldm.runs import RunError, append_log, atomic_write_json, read_log
from tinyldm.train import (
    lr_at,
    rng_state,
    set_rng_state,
    truncate_log,
)
from tinyldm.viz import image_grid, plot_curves


def test_checkpoint_round_trip_and_only_latest_kept(tmp_path):
    atomic_write_json(tmp_path / "config.json", {"kind": "test"})
    w = {"model": {"a": torch.arange(6.0).reshape(2, 3)}}
    save_checkpoint(tmp_path, 3, w, {"step": 3, "rng": rng_state()})
    w2 = {"model": {"a": torch.ones(2, 3)}}
    save_checkpoint(tmp_path, 7, w2, {"step": 7, "rng": rng_state()})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000007"]
    weights, state = load_checkpoint(tmp_path)
    assert state["step"] == 7 and torch.equal(weights["model"]["a"], torch.ones(2, 3))


def test_half_written_checkpoint_is_ignored(tmp_path):
    atomic_write_json(tmp_path / "config.json", {"kind": "test"})
    save_checkpoint(tmp_path, 5, {"model": {"a": torch.zeros(1)}}, {"step": 5})
    # A crash during the next write leaves only a temporary folder behind: the complete one still wins.
    broken = tmp_path / "checkpoints" / ".step_00000010.tmp"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp_path).name == "step_00000005"
    assert load_checkpoint(tmp_path)[1]["step"] == 5


def test_resume_errors(tmp_path):
    with pytest.raises(RunError, match="no such folder"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(RunError, match="not a tinyldm run"):
        load_checkpoint(tmp_path)
    atomic_write_json(tmp_path / "config.json", {"kind": "test"})
    with pytest.raises(RunError, match="no checkpoint yet"):
        load_checkpoint(tmp_path)


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = rng_state()
    a = (random.random(), np.random.randn(3).tolist(), torch.randn(3).tolist())
    set_rng_state(state)
    assert (random.random(), np.random.randn(3).tolist(), torch.randn(3).tolist()) == a


def test_log_truncation(tmp_path):
    for s in range(1, 6):
        append_log(tmp_path, {"step": s, "loss": 1.0 / s})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a process killed in the middle of a line
    truncate_log(tmp_path, 3)
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]


def test_lr_schedule():
    assert lr_at(0, 1.0, warmup=4) == 0.25 and lr_at(3, 1.0, warmup=4) == 1.0
    assert lr_at(100, 1.0, warmup=4, total=200) == 1.0
    assert lr_at(4, 1.0, warmup=4, total=104, kind="cosine") == 1.0
    assert lr_at(54, 1.0, warmup=4, total=104, kind="cosine") == pytest.approx(0.5)
    assert lr_at(104, 1.0, warmup=4, total=104, kind="cosine") == pytest.approx(0.0)


def test_psnr_and_ssim_closed_forms():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    # A constant error c gives MSE c², so PSNR = 10 log10(4 / c²).
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 10 * math.log10(4 / 0.01)), atol=1e-4)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    # Constant images a and b: variances vanish, SSIM = (2ab + C1)/(a² + b² + C1).
    a, b, c1 = 0.2, -0.3, (0.01 * 2) ** 2
    got = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)
    # More noise, less structural similarity.
    noise = torch.randn_like(x)
    scores = [ssim(x, x + s * noise).mean().item() for s in (0.05, 0.2, 0.8)]
    assert scores[0] > scores[1] > scores[2]


def test_grid_and_curves(tmp_path):
    rows = [torch.zeros(4, 3, 16, 16), torch.ones(4, 1, 16, 16)]
    img = image_grid(rows, pad=2)
    assert img.size == (4 * 18 + 2, 2 * 18 + 2)
    assert img.getpixel((3, 3)) == (128, 128, 128) and img.getpixel((3, 21)) == (255, 255, 255)
    plot_curves({"loss": ([1, 2, 3], [1.0, 0.5, 0.25])}, tmp_path / "c.png", title="t")
    assert (tmp_path / "c.png").stat().st_size > 0
    # Log x: 1, 10, 100 sit at equal spacing; x ≤ 0 cannot be placed and is dropped. The plot box spans
    # columns 70…240 and rows 30…255, so the point (10, 1.0) lies at column 155, row 142.5 (1.0 is midway
    # between 0.5 and 2 on the log y axis); on a linear x axis the line would cross column 155 near row 196.
    from PIL import Image

    from tinyldm.viz import PALETTE
    plot_curves({"a": ([0, 1, 10, 100], [3.0, 2.0, 1.0, 0.5])}, tmp_path / "d.png", log_x=True, size=(400, 300))
    with Image.open(tmp_path / "d.png") as img:
        rows = [y for y in range(30, 256) if img.getpixel((155, y)) == PALETTE[0]]
    assert rows and all(140 <= y <= 145 for y in rows), rows


def test_ema_closed_form():
    from tinyldm.train import ema_decay_at, ema_update

    ema, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    theta0 = [p.detach().clone() for p in ema.parameters()]
    for _ in range(5):
        ema_update(ema, model, 0.9)
    # θ_ema after k updates toward a fixed θ: θ + d^k (θ_0 − θ).
    for p_ema, p, p0 in zip(ema.parameters(), model.parameters(), theta0):
        assert torch.allclose(p_ema, p + 0.9**5 * (p0 - p), atol=1e-6)
    assert ema_decay_at(0, 0.9999) == 0.1 and ema_decay_at(10**7, 0.9999) == 0.9999
    assert ema_decay_at(5, 0.9999, warmup=False) == 0.9999
