"""train_vae.py end to end on small images: the loss falls, resume is exact, bad input is explained."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import train_vae
from tinyldm.loading import load_autoencoder
from tinyldm.runs import load_weights


def make_folder(root, users=3, per_user=8, size=32, seed=0):
    """Smooth coloured stripes, a different frequency per user: easy to learn, not constant."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for u in range(users):
        d = root / f"user_{u:02d}"
        d.mkdir(parents=True)
        for i in range(per_user):
            phase = rng.uniform(0, 2 * np.pi)
            base = np.sin(2 * np.pi * (u + 1) * xx + phase) * np.cos(2 * np.pi * yy)
            img = np.stack([base, np.roll(base, 3, axis=1), -base], axis=-1)
            Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


ARGS = ["--image-size", "32", "--batch-size", "4", "--val-fraction", "0.25", "--num-workers", "0"]


def test_loss_falls_and_outputs_are_written(tmp_path):
    data = make_folder(tmp_path / "data")
    run = tmp_path / "run"
    rc = train_vae.main(["--data", str(data), "--out", str(run), "--max-steps", "30", "--lr", "1e-3", *ARGS])
    assert rc == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rec = [r["rec"] for r in log if "rec" in r]
    assert len(rec) == 30
    assert np.mean(rec[-5:]) < 0.6 * np.mean(rec[:5]), f"reconstruction loss did not fall: {rec[:5]} → {rec[-5:]}"
    for name in ("config.json", "model.safetensors", "loss_curves.png", "recon_latest.png"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["classes"] == ["user_00", "user_01", "user_02"]
    # The measured latent scale: 1/std of the latents the model now produces.
    model, _ = load_autoencoder(run)
    assert cfg["model"]["scaling_factor"] == pytest.approx(1 / cfg["results"]["latent_std"])
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32) * 2 - 1
        assert model(x)[0].shape == x.shape


@pytest.mark.parametrize("model, extra", [("kl", []), ("vq", []), ("kl", ["--crop-size", "16"])])
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, model, extra):
    data = make_folder(tmp_path / "data")
    common = ["--data", str(data), "--model", model, "--max-steps", "10", "--ckpt-every", "3", *ARGS, *extra]
    assert train_vae.main([*common, "--out", str(tmp_path / "straight")]) == 0
    assert train_vae.main([*common, "--out", str(tmp_path / "broken"), "--stop-after", "4"]) == 0
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it
    assert train_vae.main(["--resume", str(tmp_path / "broken")]) == 0
    a = load_weights(tmp_path / "straight" / "model.safetensors")
    b = load_weights(tmp_path / "broken" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    log_a = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "broken" / "log.jsonl").read_text().splitlines()
    assert len(log_a) == len(log_b)


def error_of(capsys, argv):
    assert train_vae.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_bad_input_gets_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty" in error_of(capsys, ["--data", str(empty), "--out", str(tmp_path / "r1"), *ARGS])

    no_images = make_folder(tmp_path / "d2")
    (no_images / "user_99").mkdir()
    assert "user_99" in error_of(capsys, ["--data", str(no_images), "--out", str(tmp_path / "r2"), *ARGS])

    corrupt = make_folder(tmp_path / "d3")
    (corrupt / "user_00" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert "bad.png" in error_of(capsys, ["--data", str(corrupt), "--out", str(tmp_path / "r3"), *ARGS])

    mixed = make_folder(tmp_path / "d4")
    Image.new("RGB", (48, 40)).save(mixed / "user_01" / "odd.png")
    msg = error_of(capsys, ["--data", str(mixed), "--out", str(tmp_path / "r4"), "--strict-size", *ARGS])
    assert "odd.png" in msg

    data = make_folder(tmp_path / "d6")
    msg = error_of(capsys, ["--data", str(data), "--out", str(tmp_path / "r6"), "--crop-size", "15", *ARGS])
    assert "--crop-size 15" in msg and "multiple" in msg

    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    assert "not a tinyldm run" in error_of(capsys, ["--resume", str(not_a_run)])

    data = make_folder(tmp_path / "d5")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in error_of(capsys, ["--data", str(data), "--out", str(a_file), *ARGS])


def test_the_recipes_crops_only_for_the_autoencoder_without_attention(tmp_path):
    """tiny KL (no mid attention) trains on the recipe's 32×32 crops; the tiny VQ (mid attention: crops would
    train it on fewer positions than it runs on, unmeasured) on whole images unless --crop-size says otherwise."""
    data = make_folder(tmp_path / "data", size=64)
    common = ["--data", str(data), "--max-steps", "1", "--batch-size", "4", "--val-fraction", "0.25"]
    crops = {}
    for name, extra in {"kl": ["--model", "kl"], "vq": ["--model", "vq"],
                        "vq16": ["--model", "vq", "--crop-size", "16"]}.items():
        assert train_vae.main([*common, *extra, "--out", str(tmp_path / name)]) == 0
        crops[name] = json.loads((tmp_path / name / "config.json").read_text())["args"]["crop_size"]
    assert crops == {"kl": 32, "vq": 0, "vq16": 16}
