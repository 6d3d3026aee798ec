"""Stage 1: train an autoencoder (AutoencoderKL or VQModel) that stage 2 will diffuse in.

    python train_vae.py                              # tiny KL VAE on the built-in simulated micro-Doppler set
    python train_vae.py --model vq --data my_users/  # VQ model on your folders (one sub-folder per user)
    python train_vae.py --resume runs/vae-kl-tiny    # continue exactly where the run stopped
    python train_vae.py --init path/to/sd-vae-ft-mse --preset seed --data my_users/   # fine-tune a pretrained VAE

Loss = rec·|x − x̂|₁ + kl·KL(q(z|x) ‖ N(0, I)) + perceptual·LPIPS + freq·FFT loss (+ vq·VQ loss).
Writes runs/<name>/: config.json, model.safetensors, checkpoints/, log.jsonl, loss_curves.png,
grids/recon_epoch_NNN.png (rows: input | reconstruction | error); at the end the measured latent
scaling_factor = 1/std(z) goes into config.json for stage 2.
"""

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from tinyldm.checkpoints import restore, save_checkpoint
from tinyldm.data import DataError, UserImageFolder, default_data_dir
from tinyldm.data.transforms import random_crops
from tinyldm.evaluation.image_metrics import psnr, ssim
from tinyldm.latents import measure_scale
from tinyldm.loading import autoencoder_config, build_autoencoder, load_vae
from tinyldm.losses import AutoencoderLossWeights, autoencoder_loss, load_perceptual_loss
from tinyldm.options import SEED_RANGE, above, at_least, between, check_ranges, device_name
from tinyldm.runs import (
    StopRequest,
    append_log,
    atomic_write_json,
    autocast_dtype,
    autocast_to,
    inference_autocast,
    precision_words,
    read_config,
    read_log,
    resolve_device,
    run_cli,
    unlock_run,
)
from tinyldm.threads import share_cores
from tinyldm.train import (
    LossWatch,
    adamw,
    apply_recipe,
    args_record,
    batch_indices,
    check_finite_step,
    check_loss_trend,
    check_same_data,
    claim_run_folder,
    data_fingerprint,
    lr_at,
    resume_run,
    rng_state,
    seed_everything,
    set_lr,
    set_rng_state,
    start_run_folder,
    stopped_message,
    training_length,
)
from tinyldm.viz import error_map, image_grid, plot_curves, smooth

# Options that a resumed run may change; every other setting comes from the run's config.json.
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "stop_after", "ckpt_every", "device", "num_workers",
                       "data")  # --data: the run's data, moved (checked to be the same images)
# Options that config.json stores once outside "args", and where (read back on --resume).
STORED_ELSEWHERE = {"model": ("model_type",), "data": ("data", "root"), "image_size": ("data", "image_size"),
                    "channels": ("data", "channels"), "latent_channels": ("model", "latent_channels"),
                    "block_out_channels": ("model", "block_out_channels"),
                    "mid_attention": ("model", "mid_block_add_attention"),
                    "kl_weight": ("loss", "kl"),
                    "perceptual_weight": ("loss", "perceptual"), "freq_weight": ("loss", "freq"),
                    "rec_loss": ("loss", "rec_kind"), "freq_loss": ("loss", "freq_kind"),
                    "freq_norm": ("loss", "freq_norm")}

# The settings each preset trains with unless told otherwise. tiny: the fastest to quality measured on 2 CPU cores
# (docs/speedrun.md, benchmarks/time_to_quality.py), its length in optimizer steps so that a smaller data set is not
# trained for less (834 = 6 epochs of the walking set); seed: the seed's own hyper-parameters, in epochs.
RECIPES = {
    "tiny": dict(max_steps=834, batch_size=8, crop_size=32, lr=1e-3, warmup=50, lr_schedule="cosine"),
    "compact": dict(max_steps=1000, batch_size=8, crop_size=64, lr=1e-3, warmup=50, lr_schedule="cosine"),
    "seed": dict(epochs=100, batch_size=16, crop_size=0, lr=1e-4, warmup=0, lr_schedule="constant"),
}

# Validation while training scores at most VAL_IMAGES images of the split (all of the tiny set's 124; the evaluation
# scores the whole split); the latent scale is measured on at most STD_IMAGES training images. Both spread evenly
# over the users; at 256×256 every image costs ~0.2 s to encode and decode on 2 cores.
VAL_IMAGES = 128
STD_IMAGES = 1024

# What each numeric option allows (tinyldm.options), checked once at start-up; None (not given) is not checked.
OPTION_RANGES = {
    "image_size": at_least(1),  # the autoencoder's config checks it is divisible by its downsampling factor
    "latent_channels": at_least(1),
    "val_fraction": between(0, 1, "0 = no validation split", high_open=True),
    "epochs": at_least(1),
    "max_steps": at_least(1),
    "batch_size": at_least(1),
    "crop_size": at_least(0, "0 = whole images"),
    "lr": above(0),
    "weight_decay": at_least(0),
    "warmup": at_least(0, "0 = no warmup"),
    "grad_clip": at_least(0, "0 = off"),
    "kl_weight": at_least(0),
    "perceptual_weight": at_least(0, "0 = off"),
    "freq_weight": at_least(0, "0 = off"),
    "ckpt_every": at_least(1),
    "stop_after": at_least(1),
    "seed": SEED_RANGE,
    "num_workers": at_least(0, "0 = load in the main process"),
}


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["kl", "vq"], default=None,
                   help="AutoencoderKL (continuous) or VQModel (codebook); default kl (with --init: its model)")
    g.add_argument("--init", type=Path, default=None,
                   help="fine-tune a pretrained autoencoder: a diffusers AutoencoderKL/VQModel folder (or a pipeline "
                        "folder with vae/) or a train_vae.py run folder. Its config gives the architecture (so "
                        "--model, --block-out-channels, --latent-channels and --channels may only repeat it) and "
                        "its sample_size the default --image-size; --preset then chooses only the recipe")
    g.add_argument("--preset", choices=["tiny", "compact", "seed"], default="tiny",
                   help="tiny: 64×64, f=2 → 32×32×4 (CPU); compact: the users' 256×256, f=8 → 32×32×4 on CPU; "
                        "seed: 256×256, f=8, the Stable Diffusion VAE itself")
    g.add_argument("--block-out-channels", type=lambda text: [int(c) for c in text.split(",")], default=None,
                   metavar="C1,C2,…", help="widths per level (default: the preset's); f = 2^(levels − 1)")
    g.add_argument("--latent-channels", type=int, default=None,
                   help="channels of the latent (default: the preset's, 4; SD3/Flux use 16)")
    g.add_argument("--mid-attention", action=argparse.BooleanOptionalAction, default=None,
                   help="self-attention in the encoder's and decoder's mid blocks, at the lowest resolution "
                        "(default: the preset's: tiny none, seed yes as Stable Diffusion's VAE)")
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, default=None,
                   help="folder with one sub-folder of images per user (wide or tall images are cut into square "
                        "windows along their long side); default: the built-in simulated set of --family "
                        "(generated once under data/)")
    g.add_argument("--family", choices=["walking", "activities"], default="walking",
                   help="without --data: the built-in simulated family, 31 people walking (24 GHz, jet, square) or 6 "
                        "activities (5.8 GHz, viridis, wide images; docs/data.md)")
    g.add_argument("--image-size", type=int, default=None, help="resize images to this (default: the preset's)")
    g.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="3 = RGB (jet spectrograms), 1 = grey (default 3; with --init: its in_channels)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="per-user share of images held out for validation")
    g.add_argument("--strict-size", action="store_true", help="reject images of another size instead of resizing")
    g.add_argument("--aspect", choices=["windows", "squash"], default="windows",
                   help="images that are not square: windows = resized keeping the aspect and cut into square windows "
                        "along the long side (time), each a sample; squash = stretched to a square (every motion "
                        "looks faster; a window may miss a short event, a squashed image never does: docs/data.md). "
                        "Stage 2 and the evaluation read the data the same way")
    g = p.add_argument_group("optimisation (defaults: the preset's recipe, " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in r.items()) for name, r in RECIPES.items()) + ")")
    g.add_argument("--epochs", type=int, default=None,
                   help="passes over the training set (the seed recipe's unit); replaces the recipe's length")
    g.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps in total, whatever the data's size (the tiny recipe's unit: 834); replaces "
                        "the recipe's length")
    g.add_argument("--batch-size", type=int, default=None, help="images per step (default: the recipe's)")
    g.add_argument("--crop-size", type=int, default=None,
                   help="train on random square crops of this many pixels, one per image and step; the autoencoder is "
                        "convolutional, so it still runs on whole images (tiny: 32 on 64×64, 3.8× cheaper a step and "
                        "better reconstructions, docs/speedrun.md); 0 or ≥ the image size = whole images "
                        "(default: the recipe's for an autoencoder without mid attention, else whole images)")
    g.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: the recipe's)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=int, default=None, help="linear LR warmup steps (default: the recipe's)")
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="after warmup: constant, or half-cosine decay to 0 at the last step (default: the recipe's)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0 = off)")
    g.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=True,
                   help="AdamW's fused kernel (the same update, faster); --no-fused-optimizer: PyTorch's default")
    g = p.add_argument_group("loss weights (defaults follow the seed)")
    g.add_argument("--rec-loss", choices=["l1", "mse"], default="l1")
    g.add_argument("--kl-weight", type=float, default=1e-6)
    g.add_argument("--perceptual-weight", type=float, default=0.1,
                   help="LPIPS weight; used only when the optional lpips package and its weights are available")
    g.add_argument("--freq-weight", type=float, default=0.05)
    g.add_argument("--freq-loss", choices=["real", "logmag"], default="real",
                   help="real: MSE of the FFT's real parts (the seed's); logmag: MSE of log(1 + |FFT|)")
    g.add_argument("--freq-norm", choices=["ortho", "backward"], default="ortho",
                   help="ortho: orthonormal FFT, same scale as pixel MSE at any size (default); backward: the "
                        "seed's unnormalised FFT, whose term grows with H·W and then dominates the loss")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=None, help="run folder (default runs/vae-<model>-<preset>)")
    g.add_argument("--resume", type=Path, default=None, help="continue this run folder exactly from its checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its weights, config.json, checkpoints and log are deleted "
                        "first); without it such an --out is refused")
    g.add_argument("--ckpt-every", type=int, default=500, help="write a checkpoint every N steps (and at the end)")
    g.add_argument("--stop-after", type=int, default=None,
                   help="checkpoint and stop once this many steps are done (as if interrupted; resume later)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1 … or mps")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16 autocast for the forward pass; auto = bf16 on CUDA and on CPUs that multiply bf16 in "
                        "hardware (AMX-BF16: 2.6× faster; AVX512-BF16: 1.85×), float32 elsewhere")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0 = load in the main process)")
    args = p.parse_args(argv)
    check_ranges(p, args, OPTION_RANGES)
    if args.resume is not None and args.overwrite:
        p.error("--resume continues the run in its folder and --overwrite replaces it; choose one")
    return args, p.parse_args([])


def load_images(ds: UserImageFolder) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split in memory as uint8 (exact: images are u/127.5 − 1) → (N, C, H, W) uint8, (N,) long."""
    x = torch.empty(len(ds), ds.channels, ds.image_size, ds.image_size, dtype=torch.uint8)  # 0.8 GB at 4185×256²
    ys = []
    for i in tqdm(range(len(ds)), desc="reading images", unit="img", leave=False, disable=len(ds) < 2000):
        image, user_id = ds[i]  # one image at a time in float32: the whole split as floats would be 4× as large
        x[i] = ((image + 1) * 127.5).round().to(torch.uint8)
        ys.append(user_id)
    return x, torch.tensor(ys, dtype=torch.long)


def to_float(x_u8: torch.Tensor, device) -> torch.Tensor:
    return x_u8.to(device).float() / 127.5 - 1.0  # (B, C, H, W) in [−1, 1]


def reconstruct(model, x: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction: decode the latent mean (KL: the posterior mode; VQ: its nearest codes), in bf16
    where the hardware has it, as the evaluation and sampling decode (inference_autocast) → float32."""
    with inference_autocast(x.device):
        mean, _ = model.latent_moments(x)
        return model.decode_latent(mean).float()


@torch.no_grad()
def validate(model, x_val, device, batch_size) -> dict:
    model.eval()
    p, s = [], []
    for i in range(0, len(x_val), batch_size):
        x = to_float(x_val[i : i + batch_size], device)
        x_hat = reconstruct(model, x).clamp(-1, 1)
        p.append(psnr(x, x_hat).cpu())
        s.append(ssim(x, x_hat).cpu())
    model.train()
    return {"val_psnr": torch.cat(p).mean().item(), "val_ssim": torch.cat(s).mean().item()}


@torch.no_grad()
def posterior_samples(model, x_train, device, batch_size) -> torch.Tensor:
    """The latents stage 2 will see, z = μ + σ·ε (VQ: the pre-quantisation encoding), one per image → (N, c, h, w)."""
    model.eval()
    gen = torch.Generator(device).manual_seed(0)
    samples = []
    for i in range(0, len(x_train), batch_size):
        with inference_autocast(device):  # as the latent cache encodes (tinyldm/data/latent_cache.py)
            mean, std = model.latent_moments(to_float(x_train[i : i + batch_size], device))  # (B, c, h, w) each
        mean, std = mean.float(), std.float()
        eps = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)
        samples.append((mean + std * eps).cpu())
    model.train()
    return torch.cat(samples)


def save_pictures(run_dir: Path, model, x_show, device, epoch: int) -> None:
    model.eval()
    with torch.no_grad():
        x = to_float(x_show, device)
        x_hat = reconstruct(model, x).clamp(-1, 1)
    model.train()
    (run_dir / "grids").mkdir(exist_ok=True)
    grid = image_grid([x, x_hat, error_map(x, x_hat)], row_labels=["input", "recon", "error"])
    grid.save(run_dir / "grids" / f"recon_epoch_{epoch:03d}.png")
    grid.save(run_dir / "recon_latest.png")
    log = read_log(run_dir)
    train = [r for r in log if "total" in r]
    series = {k: ([r["step"] for r in train], smooth([r[k] for r in train], 20))
              for k in ("total", "rec", "kl", "freq", "perceptual", "vq") if train and k in train[0]}
    plot_curves(series, run_dir / "loss_curves.png", title="training losses (running mean over 20 steps)")


def model_config(args: argparse.Namespace) -> dict:
    """The preset's autoencoder config with the shape options given on the command line."""
    shape = {"in_channels": args.channels, "out_channels": args.channels}
    if args.image_size:
        shape["sample_size"] = args.image_size
    if args.latent_channels:
        shape["latent_channels"] = args.latent_channels
    if args.mid_attention is not None:
        shape["mid_block_add_attention"] = args.mid_attention
    if args.block_out_channels:
        levels = len(args.block_out_channels)
        shape.update(block_out_channels=args.block_out_channels, down_block_types=["DownEncoderBlock2D"] * levels,
                     up_block_types=["UpDecoderBlock2D"] * levels)
    return autoencoder_config(args.model, args.preset, **shape)


def pretrained_config(args: argparse.Namespace) -> tuple[dict, dict]:
    """--init PATH → (its architecture as this run's model config, its weights). An architecture flag that says
    otherwise is refused; --image-size only changes the size trained at (the model is fully convolutional)."""
    model, source = load_vae(args.init)
    cfg = asdict(model.config)
    given = {"--model": (args.model, source.model_type), "--channels": (args.channels, cfg["in_channels"]),
             "--latent-channels": (args.latent_channels, cfg["latent_channels"]),
             "--block-out-channels": (args.block_out_channels, cfg["block_out_channels"]),
             "--mid-attention": (args.mid_attention, cfg["mid_block_add_attention"])}
    for flag, (value, pretrained) in given.items():
        if value is not None and value != pretrained:
            shown = ",".join(map(str, pretrained)) if isinstance(pretrained, list) else pretrained
            raise ValueError(f"{flag} {','.join(map(str, value)) if isinstance(value, list) else value} conflicts "
                             f"with --init {args.init}, whose architecture has {shown}; drop {flag} (--init takes "
                             "the architecture from the pretrained config)")
    if cfg["in_channels"] not in (1, 3) or cfg["out_channels"] != cfg["in_channels"]:
        raise ValueError(f"--init {args.init} maps {cfg['in_channels']}-channel images to {cfg['out_channels']} "
                         "channels; train_vae.py reconstructs grey (1) or RGB (3) images, so it cannot fine-tune it")
    args.model, args.channels = source.model_type, cfg["in_channels"]
    if args.image_size:
        cfg["sample_size"] = args.image_size  # checked against the downsampling factor by the config class below
    return autoencoder_config(args.model, args.preset, **cfg), model.state_dict()


def model_setup(args: argparse.Namespace, run_dir: Path | None, resuming: bool) -> tuple[dict, dict | None]:
    """→ (the autoencoder's config, the weights to start from or None). With --init: the pretrained model's (a
    resumed fine-tuning run takes its architecture from its own config.json); otherwise the preset's with the shape
    options given."""
    if args.init is None:
        return model_config(args), None
    if resuming:
        return read_config(run_dir)["model"], None
    return pretrained_config(args)


def spread(x: torch.Tensor, n: int) -> torch.Tensor:
    """At most n of the images x, evenly spaced through it (a split is sorted by user: every user is in)."""
    return x[torch.linspace(0, len(x) - 1, min(n, len(x))).long()]


def load_data(args: argparse.Namespace, size: int):
    """The train/validation split in memory as uint8 → (train split, x_train, x_val, the 8 images the grids show,
    the data's fingerprint)."""
    split = dict(image_size=size, channels=args.channels, val_fraction=args.val_fraction, seed=args.seed,
                 strict_size=args.strict_size, aspect=args.aspect)
    train_ds = UserImageFolder(args.data, split="train", **split)
    val_ds = UserImageFolder(args.data, split="val", **split) if args.val_fraction > 0 else []
    if len(train_ds) < args.batch_size:
        raise DataError(f"{args.data}: {len(train_ds)} training images but --batch-size {args.batch_size}; "
                        "add images or lower --batch-size")
    x_train, _ = load_images(train_ds)
    x_val, _ = load_images(val_ds) if len(val_ds) else (x_train[: args.batch_size], None)  # no split: train images
    x_show = spread(x_val, 8)
    return train_ds, x_train, x_val, x_show, data_fingerprint(train_ds, *([val_ds] if len(val_ds) else []))


def build_training(args, model_cfg: dict, device, weights: dict | None, train_state: dict | None,
                   init_weights: dict | None = None):
    """→ (autoencoder, AdamW, step, training seconds so far), from the checkpoint when resuming, from the pretrained
    weights (init_weights) with --init."""
    model = build_autoencoder(args.model, model_cfg).to(device)
    if init_weights is not None:
        model.load_state_dict(init_weights)  # built from the same config: every tensor fits
    opt = adamw(model.parameters(), args.lr, args.weight_decay, args.fused_optimizer)
    if train_state is None:
        return model, opt, 0, 0.0
    restore(model, weights["model"], "model")
    restore(opt, train_state["optimizer"], "optimizer state")
    set_rng_state(train_state["rng"])
    return model, opt, train_state["step"], train_state.get("train_seconds", 0.0)


def end_of_epoch(run_dir: Path, model, x_val, x_show, device, batch_size: int, step: int, epoch: int, bar) -> dict:
    """Validation PSNR/SSIM (on VAL_IMAGES of the split) into the log, the reconstruction grid and the loss
    curves → the validation scores."""
    metrics = validate(model, spread(x_val, VAL_IMAGES), device, batch_size)
    append_log(run_dir, {"step": step, "epoch": epoch, **metrics})
    save_pictures(run_dir, model, x_show, device, epoch)
    bar.write(f"epoch {epoch}: val PSNR {metrics['val_psnr']:.2f} dB, SSIM {metrics['val_ssim']:.3f}")
    return metrics


def compute_loss(model, model_type: str, x: torch.Tensor, weights: AutoencoderLossWeights, perceptual
                 ) -> tuple[torch.Tensor, dict]:
    """The training objective, where the two autoencoders differ: KL term (KL) or codebook loss (VQ)."""
    if model_type == "kl":
        x_hat, posterior = model(x)
        return autoencoder_loss(x, x_hat.float(), weights, posterior_mean=posterior.mean,
                                posterior_logvar=posterior.logvar, perceptual=perceptual)
    x_hat, vq_loss, stats = model(x)
    loss, terms = autoencoder_loss(x, x_hat.float(), weights, vq_loss=vq_loss, perceptual=perceptual)
    return loss, {**terms, "perplexity": stats["perplexity"], "usage": stats["usage"]}


def finish(run_dir: Path, model, run_config: dict, x_train, x_val, device, batch_size: int, results: dict,
           metrics: dict | None) -> None:
    """Measure the latent scale for stage 2 (on STD_IMAGES training images) and, unless the last step just did
    (`metrics`), the final validation scores; write them into config.json."""
    scale = measure_scale(posterior_samples(model, spread(x_train, STD_IMAGES), device, batch_size))  # 1/std(z)
    run_config["model"]["scaling_factor"] = scale
    metrics = metrics or validate(model, spread(x_val, VAL_IMAGES), device, batch_size)
    run_config["results"] = {**metrics, "latent_std": 1 / scale, **results}
    atomic_write_json(run_dir / "config.json", run_config)
    print(f"done after {results['stopped']}: val PSNR {metrics['val_psnr']:.2f} dB, SSIM {metrics['val_ssim']:.3f}; "
          f"latent std {1 / scale:.4f} → scaling_factor {scale:.4f}")
    for what, name in [("weights", "model.safetensors"), ("config", "config.json"), ("recon", "recon_latest.png"),
                       ("losses", "loss_curves.png")]:
        print(f"  {what:8s} {run_dir / name}")


def main(argv=None) -> int:
    args, defaults = parse_args(argv)
    return run_cli("train_vae.py", train, args, defaults)


def set_up(args: argparse.Namespace, defaults: argparse.Namespace):
    """→ (settings, device, checkpoint weights, training state); a resumed run keeps its own settings, except the
    few that may change between sessions (RESUMABLE_OVERRIDES)."""
    weights, train_state = None, None
    if args.resume is not None:
        older_runs = {"lr_schedule": "constant",  # what runs written before these options did
                      "precision": "bf16" if resolve_device(args.device).type == "cuda" else "fp32",
                      "fused_optimizer": False, "crop_size": 0}
        args, weights, train_state = resume_run(args.resume, "autoencoder", "train_vae.py", args, defaults,
                                                RESUMABLE_OVERRIDES, STORED_ELSEWHERE, older_runs)
        args.out = args.resume
    apply_recipe(args, RECIPES[args.preset])
    if args.init is None:  # with --init, the pretrained model decides (pretrained_config)
        args.model, args.channels = args.model or "kl", args.channels or 3
    args.data = Path(args.data) if args.data is not None else default_data_dir(args.preset, family=args.family)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    return args, device, weights, train_state


def make_run_config(args, model_cfg: dict, loss_weights, perceptual_active: bool, train_ds, n_val: int) -> dict:
    """config.json: the model (to rebuild it), the loss, the data and every option (to repeat the run)."""
    return {"kind": "autoencoder", "model_type": args.model, "model": model_cfg, "loss": asdict(loss_weights),
            "perceptual_active": perceptual_active,
            "data": {"root": str(args.data), "image_size": model_cfg["sample_size"], "channels": args.channels,
                     "classes": train_ds.classes, "n_train": len(train_ds), "n_val": n_val},
            "args": args_record(args, STORED_ELSEWHERE)}


def crop_for(args, crop_given: bool, model_cfg: dict, size: int, factor: int) -> int:
    """The side of the training crops in pixels, 0 for whole images. The recipe's crops were measured on the
    autoencoder without mid attention only, so one with it trains on whole images unless --crop-size (or the run
    being resumed) says otherwise; images no larger than the crop are used whole; a crop lies on the downsampling
    grid."""
    if not crop_given and model_cfg.get("mid_block_add_attention", True):
        args.crop_size = 0  # recorded so in config.json
    crop = args.crop_size if args.crop_size and args.crop_size < size else 0
    if crop % factor:
        raise ValueError(f"--crop-size {crop} must be a multiple of the autoencoder's downsampling factor {factor} "
                         "(crops on its grid); or 0 for whole images")
    return crop


def optimizer_step(model, opt, x, args, loss_weights, perceptual, amp, step: int, run_dir: Path):
    """Loss, gradient (stop if either is not finite), one clipped AdamW step (--precision: bf16 autocast).
    Returns the loss terms and the gradient norm before clipping."""
    with autocast_to(x.device, amp):
        loss, terms = compute_loss(model, args.model, x, loss_weights, perceptual)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
    check_finite_step(loss.item(), grad_norm, step, run_dir, opt.param_groups[0]["lr"])
    opt.step()
    return terms, grad_norm


@dataclass
class Training:
    """What the loop reads and changes; `start_training` builds it, resuming from a checkpoint if asked."""

    args: argparse.Namespace  # the run's settings (a resumed run's own)
    run_dir: Path
    run_config: dict  # config.json
    model: nn.Module
    opt: torch.optim.Optimizer
    loss_weights: AutoencoderLossWeights
    perceptual: nn.Module | None  # LPIPS, when its weight is > 0
    x_train: torch.Tensor  # (N, C, H, W) uint8, in memory
    x_val: torch.Tensor  # at most VAL_IMAGES validation images, spread over the users
    x_show: torch.Tensor  # the 8 images of the reconstruction grids
    crop: int  # random crop size on the downsampling grid, 0 = whole images
    total_steps: int
    why: str  # why a finished run stops: its training length
    device: torch.device
    amp: torch.dtype | None  # bf16 autocast, or None (float32)
    step: int = 0
    train_seconds: float = 0.0
    watch: LossWatch = field(default_factory=LossWatch)  # the recent losses, for the divergence guard


def start_training(args: argparse.Namespace, defaults: argparse.Namespace) -> Training:
    """The settings, device and seeds; the model's config (with --init: the pretrained model's); the data in memory;
    the model, loss and optimizer (from the checkpoint when resuming); config.json in the run folder."""
    crop_given = args.crop_size is not None or args.resume is not None  # else the recipe's
    args, device, weights, train_state = set_up(args, defaults)
    model_cfg, init_weights = model_setup(args, args.resume, train_state is not None)
    run_dir = args.out or Path("runs") / f"vae-{args.model}-{args.preset}"
    claim_run_folder(run_dir, "train_vae.py", args.data,  # one writer: a second one is refused before any work
                     resuming=args.resume is not None, overwrite=args.overwrite)
    size = model_cfg["sample_size"]
    train_ds, x_train, x_val, x_show, fingerprint = load_data(args, size)
    if args.resume is not None:
        check_same_data(run_dir, args.data, fingerprint)
    perceptual = load_perceptual_loss(device) if args.perceptual_weight > 0 else None  # before the RNG is restored
    model, opt, step, train_seconds = build_training(args, model_cfg, device, weights, train_state, init_weights)
    loss_weights = AutoencoderLossWeights(rec=1.0, kl=args.kl_weight, perceptual=args.perceptual_weight,
                                          freq=args.freq_weight, rec_kind=args.rec_loss, freq_kind=args.freq_loss,
                                          freq_norm=args.freq_norm)
    amp = autocast_dtype(device, args.precision)
    crop = crop_for(args, crop_given, model_cfg, size, model.config.downsample_factor)
    total_steps, length_words = training_length(args, len(x_train), args.batch_size)
    run_config = {**make_run_config(args, model_cfg, loss_weights, perceptual is not None, train_ds, len(x_val)),
                  "data_fingerprint": fingerprint}
    start_run_folder(run_dir, run_config, step)
    print((f"resumed {run_dir} at step {step}/{total_steps}\n" if step else "") +
          (f"fine-tuning the pretrained autoencoder {args.init}\n" if init_weights is not None else "") +
          f"{model.summary()}\n"
          f"{len(train_ds)} train / {len(x_val)} val images of {len(train_ds.classes)} users at {size}×{size}"
          f"{f', trained on random {crop}×{crop} crops' if crop else ''}; "
          f"{length_words} on {device}, {precision_words(device, amp)}")
    return Training(args, run_dir, run_config, model, opt, loss_weights, perceptual, x_train, x_val, x_show, crop,
                    total_steps, f"the training length: {length_words}", device, amp, step, train_seconds)


def training_step(tr: Training) -> tuple[dict, torch.Tensor]:
    """One optimizer step: the step's batch (cropped) → loss → clipped AdamW step. → (loss terms, grad norm)."""
    args, step = tr.args, tr.step
    idx = batch_indices(step, len(tr.x_train), args.batch_size, args.seed)
    x = to_float(tr.x_train[idx], tr.device)  # (B, C, H, W) in [−1, 1]
    if tr.crop:  # (B, C, crop, crop), the offsets a function of the step (resume stays exact)
        x = random_crops(x, tr.crop, tr.model.config.downsample_factor,
                         torch.Generator().manual_seed(args.seed * 1_000_003 + step))
    set_lr(tr.opt, lr_at(step, args.lr, args.warmup, tr.total_steps, args.lr_schedule))
    terms, grad_norm = optimizer_step(tr.model, tr.opt, x, args, tr.loss_weights, tr.perceptual, tr.amp, step,
                                      tr.run_dir)
    check_loss_trend(tr.watch, float(terms["total"]), step, tr.run_dir, tr.opt.param_groups[0]["lr"])  # finite
    return terms, grad_norm


def train(args: argparse.Namespace, defaults: argparse.Namespace) -> int:
    tr = start_training(args, defaults)
    args, run_dir = tr.args, tr.run_dir
    steps_per_epoch = len(tr.x_train) // args.batch_size
    # Train; Ctrl-C or SIGTERM finishes the step, writes a checkpoint and exits 130.
    bar = tqdm(total=tr.total_steps, initial=tr.step, desc="train_vae", unit="step", dynamic_ncols=True)
    metrics = None  # the latest validation scores (the last step always validates)
    t_start = time.time()
    tr.model.train()
    with StopRequest() as stop:
        while tr.step < tr.total_steps:
            # 1. One optimizer step; the training clock leaves out validation, pictures and checkpoints.
            share_cores()  # fewer threads while other processes use cores (tinyldm/threads.py)
            epoch, t0 = tr.step // steps_per_epoch, time.time()
            terms, grad_norm = training_step(tr)
            tr.step += 1
            tr.train_seconds += time.time() - t0
            # 2. Log; at the end of an epoch validate and draw; every --ckpt-every steps a checkpoint.
            step, finished = tr.step, tr.step == tr.total_steps
            record = {"step": step, "epoch": epoch, "lr": tr.opt.param_groups[0]["lr"], "grad_norm": grad_norm.item(),
                      "train_s": round(tr.train_seconds, 3), **{k: float(v) for k, v in terms.items()}}
            if finished:
                record["stopped"] = tr.why
            append_log(run_dir, record)
            bar.update(1)
            bar.set_postfix({k: f"{record[k]:.3g}" for k in ("total", "rec", "kl", "freq", "vq") if k in record})
            if step % steps_per_epoch == 0 or finished:
                metrics = end_of_epoch(run_dir, tr.model, tr.x_val, tr.x_show, tr.device, args.batch_size, step,
                                       epoch, bar)
            stopping = stop.requested or (args.stop_after is not None and args.stop_after <= step < tr.total_steps)
            if (step % args.ckpt_every == 0 and not tr.watch.suspect) or finished or stopping:  # not while it rises
                state = {"step": step, "optimizer": tr.opt.state_dict(), "rng": rng_state(),
                         "total_steps": tr.total_steps, "train_seconds": tr.train_seconds}
                save_checkpoint(run_dir, step, {"model": tr.model.state_dict()}, state)
            if stopping:
                break
    bar.close()

    # Finish: the latent scale for stage 2 and the final scores, unless stopped early.
    unlock_run(run_dir)
    if tr.step < tr.total_steps:
        print(stop.message("train_vae.py", tr.step, run_dir) if stop.requested else
              stopped_message("train_vae.py", tr.step, run_dir))
        return 130 if stop.requested else 0
    finish(run_dir, tr.model, tr.run_config, tr.x_train, tr.x_val, tr.device, args.batch_size,
           {"steps": tr.step, "stopped": tr.why, "train_seconds": tr.train_seconds,
            "wall_seconds": time.time() - t_start}, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
