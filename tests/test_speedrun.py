"""The pieces the time-to-quality work added: preset recipes, precision (and the compile guard), the written-out
attention switch, the patch-size option, the autoencoder's shape options and its cosine schedule."""

import argparse
import json

import pytest
import torch
from test_train_vae import make_folder

import train_ldm
import train_vae
from tinyldm.layers import written_out_attention
from tinyldm.loading import backbone_config
from tinyldm.models.dit import DiT
from tinyldm.models.mmdit import MMDiT
from tinyldm.runs import autocast_dtype, cpu_bf16_hardware, precision_words
from tinyldm.train import adamw, apply_recipe, lr_at, training_length

CPU = torch.device("cpu")


def test_recipe_fills_only_what_the_command_line_left_unset():
    args = argparse.Namespace(epochs=None, max_steps=None, lr=3e-3, batch_size=None, warmup=0)
    apply_recipe(args, {"epochs": 7, "lr": 1e-3, "batch_size": 8, "warmup": 50})
    assert (args.epochs, args.lr, args.batch_size, args.warmup) == (7, 3e-3, 8, 0)  # 0 was given: kept
    args = argparse.Namespace(epochs=None, max_steps=100, lr=None)
    apply_recipe(args, {"epochs": 7, "lr": 1e-3})
    assert args.epochs is None and args.max_steps == 100 and args.lr == 1e-3  # --max-steps replaces epochs
    args = argparse.Namespace(epochs=3, max_steps=None, lr=None)
    apply_recipe(args, {"max_steps": 834, "lr": 1e-3})
    assert args.epochs == 3 and args.max_steps is None  # --epochs replaces a recipe counted in steps
    args = argparse.Namespace(epochs=None, max_steps=None)
    apply_recipe(args, {"max_steps": 834})
    assert (args.epochs, args.max_steps) == (None, 834)


@pytest.mark.parametrize("n", [1116, 300])
def test_the_cpu_recipes_count_steps_so_a_smaller_set_is_not_trained_for_less(n):
    """The tiny recipes are optimizer steps (the old 6 and 65 epochs of the walking set's 1,116 training images);
    a set of another size gets the same steps, and the start-up words say how many epochs that is."""
    for script, batch, steps in ((train_vae, 8, 834), (train_ldm, 16, 4420)):
        args = argparse.Namespace(epochs=None, max_steps=None)
        apply_recipe(args, {k: v for k, v in script.RECIPES["tiny"].items() if k in ("epochs", "max_steps")})
        total, words = training_length(args, n, batch)
        assert total == steps
        assert words == f"{steps} optimizer steps (= {steps / (n // batch):.1f} epochs of these {n} items)"
    assert training_length(argparse.Namespace(epochs=2, max_steps=None), 100, 8) == (
        24, "2 epochs × 12 steps (of these 100 items) = 24 optimizer steps")


def test_seed_preset_keeps_the_seeds_hyper_parameters():
    """What our users asked for: the seed preset trains exactly as the seed does."""
    assert train_vae.RECIPES["seed"] == dict(epochs=100, batch_size=16, crop_size=0, lr=1e-4, warmup=0,
                                             lr_schedule="constant")  # whole images, as the seed trains
    seed = train_ldm.RECIPES["seed"]
    assert (seed["prediction"], seed["epochs"], seed["batch_size"], seed["grad_accum"], seed["lr"],
            seed["ema_decay"]) == ("eps", 200, 8, 4, 1e-4, 0.9999)


def test_precision_choices_and_the_compile_guard():
    assert autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16
    assert autocast_dtype(CPU, "auto") == (torch.bfloat16 if cpu_bf16_hardware() else None)
    # torch.compile + CPU bf16 autocast gave zero or NaN gradients on torch 2.13: never together.
    assert autocast_dtype(CPU, "auto", compiled=True) is None
    with pytest.raises(ValueError, match="--compile with --precision bf16"):
        autocast_dtype(CPU, "bf16", compiled=True)
    with pytest.raises(ValueError, match="choose auto, fp32 or bf16"):
        autocast_dtype(CPU, "fp16")


@pytest.mark.parametrize("amx, avx512_bf16, onednn_bf16, expected", [
    (True, False, True, "AMX-BF16"),      # Intel Sapphire Rapids and later: AMX-BF16 tiles
    (True, True, True, "AMX-BF16"),       # both: the tiles are what oneDNN uses
    (False, True, True, "AVX512-BF16"),   # AMD Zen 4, Intel Cooper Lake: AVX512-BF16 dot products
    (False, False, True, None),           # AVX-512 without BF16 (Skylake): bf16 would be emulated
    (False, True, False, None),           # oneDNN capped below bf16 (e.g. ONEDNN_MAX_CPU_ISA=AVX2): emulated
    (False, False, False, None),          # AVX2 only
])
def test_bf16_is_chosen_only_where_the_cpu_multiplies_it_in_hardware(monkeypatch, amx, avx512_bf16, onednn_bf16,
                                                                     expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    assert cpu_bf16_hardware() == expected
    amp = autocast_dtype(CPU, "auto")
    assert amp == (torch.bfloat16 if expected else None)
    # The start-up line says what was chosen and, on a CPU, why.
    words = precision_words(CPU, amp)
    assert words == (f"bf16 autocast ({expected})" if expected else "float32 (this CPU has no bf16 hardware)")
    assert precision_words(CPU, None) == ("float32" if expected else "float32 (this CPU has no bf16 hardware)")
    forced = precision_words(CPU, autocast_dtype(CPU, "bf16"))
    assert forced == (f"bf16 autocast ({expected})" if expected else
                      "bf16 autocast (emulated: no bf16 hardware, slower than float32)")


@pytest.mark.parametrize("kind", ["dit", "mmdit"])
def test_written_out_attention_is_the_same_function(kind):
    torch.manual_seed(0)
    small = dict(input_size=8, patch_size=2, num_classes=3)
    model = (DiT.from_preset("tiny", **small) if kind == "dit" else MMDiT.from_preset("tiny", **small)).double()
    for p in model.parameters():  # adaLN-Zero starts at exactly 0: perturb so attention matters
        p.data.add_(0.05 * torch.randn_like(p))
    x, t, y = torch.randn(2, 4, 8, 8).double(), torch.tensor([100.0, 800.0]).double(), torch.tensor([0, 2])
    expected = model(x, t, y)
    written_out_attention(model)
    assert torch.allclose(model(x, t, y), expected, atol=1e-10)
    switched = [m for m in model.modules() if getattr(m, "reference", None) or getattr(m, "reference_attention", None)]
    assert switched, "no attention module was switched"


def test_patch_size_option():
    cfg = backbone_config("dit", "tiny", 4, 32, 5)
    assert cfg["patch_size"] == 4 and cfg["input_size"] == 32  # the tiny preset: 64 tokens of 32×32×4 latents
    assert backbone_config("dit", "tiny", 4, 16, 5, patch_size=2)["patch_size"] == 2
    with pytest.raises(ValueError, match="does not divide"):
        backbone_config("mmdit", "tiny", 4, 16, 5, patch_size=3)
    with pytest.raises(ValueError, match="no patches"):
        backbone_config("unet", "tiny", 4, 32, 5, patch_size=2)


def test_cosine_schedule_ends_at_zero():
    lrs = [lr_at(s, 1e-3, 10, 110, "cosine") for s in range(110)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[60] == pytest.approx(0.5e-3) and lrs[-1] < 1e-6


def test_autoencoder_shape_options_are_stored_and_resumed(tmp_path):
    data = make_folder(tmp_path / "data", users=2, per_user=4, size=16)
    run = tmp_path / "vae"
    argv = ["--data", str(data), "--out", str(run), "--image-size", "16", "--batch-size", "2", "--val-fraction",
            "0.25", "--block-out-channels", "16,32,32", "--latent-channels", "8", "--lr-schedule", "cosine",
            "--warmup", "0"]
    assert train_vae.main([*argv, "--max-steps", "4", "--stop-after", "2"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["block_out_channels"] == [16, 32, 32] and cfg["model"]["latent_channels"] == 8
    assert cfg["args"]["lr_schedule"] == "cosine" and "block_out_channels" not in cfg["args"]  # stored once
    assert train_vae.main(["--resume", str(run)]) == 0  # reads the shape back from the model config
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "train_s" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and steps[-1]["lr"] < steps[0]["lr"]
    assert all(b["train_s"] >= a["train_s"] for a, b in zip(steps, steps[1:]))  # the clock survives the resume
    stopped = [r for r in log if "stopped" in r]  # the last step's record, once: why the run stopped
    assert len(stopped) == 1 and stopped[0] is steps[-1]
    assert stopped[0]["stopped"] == "the training length: 4 optimizer steps (= 1.3 epochs of these 6 items)"
    assert json.loads((run / "config.json").read_text())["results"]["stopped"] == stopped[0]["stopped"]


def test_runs_from_before_the_new_options_resume_as_they_trained(tmp_path):
    """A run written before --lr-schedule / --precision / --fused-optimizer existed resumes with a constant LR in
    float32 (on the CPU) and PyTorch's default AdamW, not with today's tiny recipe (cosine, bf16 on AMX, fused)."""
    data = make_folder(tmp_path / "data", users=2, per_user=4, size=16)
    run = tmp_path / "vae"
    argv = ["--data", str(data), "--out", str(run), "--image-size", "16", "--batch-size", "2", "--val-fraction",
            "0.25", "--warmup", "0", "--lr", "1e-3", "--lr-schedule", "constant", "--precision", "fp32",
            "--no-fused-optimizer"]
    assert train_vae.main([*argv, "--max-steps", "4", "--stop-after", "2"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    del cfg["args"]["lr_schedule"], cfg["args"]["precision"], cfg["args"]["fused_optimizer"]  # an older run
    (run / "config.json").write_text(json.dumps(cfg))
    assert train_vae.main(["--resume", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["args"]["lr_schedule"] == "constant" and cfg["args"]["precision"] == "fp32"
    assert cfg["args"]["fused_optimizer"] is False
    lrs = [json.loads(line)["lr"] for line in (run / "log.jsonl").read_text().splitlines() if '"grad_norm"' in line]
    assert lrs == [1e-3] * 4


def test_fused_adamw_takes_the_same_steps_as_the_default_one():
    """--fused-optimizer changes the kernel, not the update (Loshchilov & Hutter's AdamW, weight decay included)."""
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(7)]
    copies = [[p.clone().requires_grad_() for p in params] for _ in range(2)]
    opts = [adamw(copies[0], 1e-2, 0.1, fused=True), adamw(copies[1], 1e-2, 0.1, fused=False)]
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    for _ in range(5):
        grads = [torch.rand_like(p) + 0.1 for p in params]  # one sign: every entry keeps moving
        for ps, opt in zip(copies, opts):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    for a, b, start in zip(*copies, params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert (a - start).abs().min() > 1e-3  # every entry moved (5 steps of lr 1e-2)
