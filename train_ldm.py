"""Stage 2: train a class-conditional latent-diffusion backbone on the frozen autoencoder's latents.

    python train_ldm.py --backbone dit --vae runs/vae-kl-tiny          # tiny DiT on the simulated set
    python train_ldm.py --backbone unet --prediction v --zero-snr      # UNet, v-prediction, zero terminal SNR
    torchrun --nproc_per_node=4 train_ldm.py --backbone dit --preset small   # the same run on 4 GPUs (DDP)
    python train_ldm.py --resume runs/ldm-dit-tiny                     # continue exactly
    python train_ldm.py --vae path/to/sd-vae-ft-mse --data my_images   # a downloaded diffusers VAE as stage 1

Each optimizer step sees a global batch of batch_size × grad_accum latents z = (μ + σ·ε − shift)·scale (cached
encodings, fresh ε; the autoencoder's own scaling_factor and shift_factor), noised to x_t = α_t z + σ_t ε' at
a random t (logit-normal, then shifted, for flow; uniform for VP: --timesteps), with 10% of user ids replaced by
the null id (classifier-free guidance); the loss is
‖model(x_t, t, y) − target‖² (ε, v or x0; min-SNR-γ optional). Writes runs/<name>/: config.json,
model.safetensors, ema.safetensors, guide.safetensors (the EMA weights at a quarter of the steps: autoguidance's
guide), checkpoints/, log.jsonl, loss_curves.png and samples/grid_step_N.png (rows = users, EMA weights,
DPM-Solver++(2M), fixed seeds). After the last step it chooses the run's guidance scales on its training images,
classifier-free w and then autoguidance w_a, and writes guidance.json (--choose-guidance, on by default:
docs/evaluation.md).
"""

import argparse
import copy
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from tinyldm.checkpoints import restore, save_checkpoint
from tinyldm.data import DataError, UserImageFolder
from tinyldm.data.captions import captions_of
from tinyldm.data.latent_cache import cached_latents, shared_cache_dir
from tinyldm.diffusion import SamplingConfig, Schedule, diffusion_loss, sample_timesteps
from tinyldm.evaluation.classifier import cache_root
from tinyldm.evaluation.report import choice_words
from tinyldm.evaluation.runs import run_reference
from tinyldm.evaluation.sweep import CHOICE_SCALES, choose_guidance, save_guidance
from tinyldm.generate import GUIDANCE_FILE, generate
from tinyldm.latents import measure_scale, scale_latents
from tinyldm.layers import written_out_attention
from tinyldm.loading import (
    GUIDE_FILE,
    autoencoder_split,
    backbone_config,
    build_backbone,
    has_guide,
    inference_layout,
    load_guide,
    load_tokenizer,
    load_vae,
    read_run,
    vae_folder,
)
from tinyldm.models.clip_text import PRESETS as TEXT_PRESETS
from tinyldm.models.conditioning import drop_captions, drop_ids
from tinyldm.options import SEED_RANGE, above, at_least, between, check_ranges, device_name, finite
from tinyldm.runs import (
    RunError,
    StopRequest,
    append_log,
    atomic_save_weights,
    autocast_dtype,
    autocast_to,
    precision_words,
    read_log,
    run_cli,
    unlock_run,
)
from tinyldm.text.tokenizer import CLIPTokenizer, train_bpe
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
    ema_decay_at,
    ema_update,
    init_distributed,
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
from tinyldm.viz import image_grid, plot_curves, smooth

# ---- The training step and the loop ------------------------------------------------------------------------------

@dataclass
class Training:
    """What the loop reads and changes; `start_training` (below) builds it, resuming from a checkpoint if asked."""

    args: argparse.Namespace  # the run's settings (a resumed run's own)
    run_dir: Path
    model: nn.Module  # the backbone; its weights are the checkpoint's "model"
    train_model: nn.Module  # what the optimizer trains through: the model itself, or compiled and/or DDP-wrapped
    ema: nn.Module  # exponential moving average of the model: what the grids and sample.py use
    opt: torch.optim.Optimizer
    gen: torch.Generator  # every per-step random draw, identical on all ranks
    sched: Schedule
    latents: dict  # the cached encodings: "mean", "std" (N, c, h, w) and "y" (N,) user ids
    stage1: dict  # the autoencoder: its source, latent scale and shift, how its images are read (config.json)
    vae: nn.Module  # to decode the progress grids
    config: dict  # config.json
    total_steps: int
    length_words: str  # why that many steps, for the messages
    rank: int  # this process under DDP (0 of 1 without torchrun)
    world: int
    device: torch.device
    amp: torch.dtype | None  # bf16 autocast, or None (float32)
    step: int = 0
    train_seconds: float = 0.0
    watch: LossWatch = field(default_factory=LossWatch)  # the recent losses, for the divergence guard


def training_step(tr: Training) -> tuple[float, torch.Tensor]:
    """One optimizer step: draw latents → scale → noise → predict → loss → AdamW step → EMA. → (loss, grad norm)."""
    args, scale, shift = tr.args, tr.stage1["scaling_factor"], tr.stage1["shift_factor"]
    # 1. Draw the step's randomness for the whole global batch, so every rank agrees: which latents, the posterior
    #    samples' ε_z, the diffusion's noise ε and times t, and the user ids with 10 % null ids (for guidance).
    draw = draw_step(tr.step, tr.latents, tr.config["num_classes"], tr.sched, args, tr.gen)
    set_lr(tr.opt, lr_at(tr.step, args.lr, args.warmup, tr.total_steps, args.lr_schedule))
    autocast = autocast_to(tr.device, tr.amp)
    loss_sum = 0.0
    for micro in range(args.grad_accum):  # this rank's share of each micro-batch
        sub = torch.arange(micro * args.batch_size + tr.rank, (micro + 1) * args.batch_size, tr.world)
        i = draw["idx"][sub]
        # 2. The diffusion's data: a posterior sample of the frozen autoencoder, z = μ + σ·ε_z, scaled to unit
        #    variance, z0 = (z − shift)·scale (tinyldm/latents.py).
        z = tr.latents["mean"][i] + tr.latents["std"][i] * draw["eps_z"][sub]  # (b, c, h, w)
        z0 = scale_latents(z, scale, shift).to(tr.device)
        # 3. Noise it, x_t = α_t z0 + σ_t ε, and regress the network's prediction on its target (ε, v, x0 or the
        #    flow velocity): ‖model(x_t, t, y) − target‖² (tinyldm/diffusion/objectives.py).
        sync = tr.world == 1 or micro == args.grad_accum - 1  # DDP all-reduces on the last micro-batch only
        with nullcontext() if sync else tr.train_model.no_sync():
            with autocast:
                loss = diffusion_loss(tr.train_model, z0, tr.sched, args.prediction, t=draw["t"][sub],
                                      eps=draw["noise"][sub].to(tr.device), min_snr_gamma=args.min_snr_gamma,
                                      cond=draw["y"][sub].to(tr.device))
            (loss / args.grad_accum).backward()
        loss_sum += loss.item() / args.grad_accum
    # 4. One AdamW step on the clipped gradient (none if the loss or the gradient is not finite), then the EMA.
    grad_norm = torch.nn.utils.clip_grad_norm_(tr.model.parameters(), args.grad_clip or float("inf"))
    check_finite_step(loss_sum, grad_norm, tr.step, tr.run_dir, tr.opt.param_groups[0]["lr"])
    check_loss_trend(tr.watch, loss_sum, tr.step, tr.run_dir, tr.opt.param_groups[0]["lr"])  # finite blow-ups
    tr.opt.step()
    tr.opt.zero_grad(set_to_none=True)
    ema_update(tr.ema, tr.model, ema_decay_at(tr.step, args.ema_decay))
    return loss_sum, grad_norm


def draw_step(step: int, latents: dict, num_classes: int, sched: Schedule, args, gen: torch.Generator
              ) -> dict[str, torch.Tensor]:
    """All randomness of one optimizer step, drawn for the whole global batch (G latents). The condition y is the
    user ids with null ids for CFG, or, for --cond text, the captions' token ids (G, L) with empty captions."""
    global_batch, shape = args.batch_size * args.grad_accum, latents["mean"].shape[1:]
    idx = batch_indices(step, len(latents["y"]), global_batch, args.seed)  # (G,) this step's latents
    draw = {"idx": idx,
            "eps_z": torch.randn((global_batch, *shape), generator=gen),  # posterior sample z = μ + σ·ε_z
            "noise": torch.randn((global_batch, *shape), generator=gen),  # ε of q(x_t | z0)
            "t": sample_timesteps(global_batch, sched, gen, kind=args.timesteps)}  # (G,) schedule times
    if "text" in latents:
        draw["y"] = drop_captions(latents["text"][idx], latents["null_text"], args.cond_dropout, gen)  # (G, L)
    else:
        draw["y"] = drop_ids(latents["y"][idx], num_classes, args.cond_dropout, gen)  # (G,)
    return draw


def main(argv=None) -> int:
    args, defaults = parse_args(argv)
    return run_cli("train_ldm.py", train, args, defaults)


def train(args: argparse.Namespace, defaults: argparse.Namespace) -> int:
    tr = start_training(args, defaults)  # settings, latents, backbone, EMA, optimizer, run folder (below)
    args, main_rank = tr.args, tr.rank == 0
    bar = tqdm(total=tr.total_steps, initial=tr.step, desc=f"train_ldm {args.backbone}", unit="step",
               disable=not main_rank, dynamic_ncols=True)
    tr.model.train()
    # Train; Ctrl-C or SIGTERM finishes the step, writes a checkpoint and exits 130. --max-minutes counts training
    # time only (summed over resumes), and rank 0 decides for every rank when to stop.
    timed_out, interrupted = rank0_decides([spent(tr.train_seconds, args.max_minutes), False], tr.world, tr.device)
    with StopRequest() as stop:
        while tr.step < tr.total_steps and not (timed_out or interrupted):
            share_cores()  # fewer threads while other processes use cores (tinyldm/threads.py)
            t0 = time.time()
            loss, grad_norm = training_step(tr)
            tr.step += 1
            tr.train_seconds += time.time() - t0
            timed_out, interrupted = rank0_decides([spent(tr.train_seconds, args.max_minutes), stop.requested],
                                                   tr.world, tr.device)
            finished = tr.step == tr.total_steps or timed_out
            stopping = interrupted or (args.stop_after is not None and args.stop_after <= tr.step and not finished)
            if main_rank:
                after_step(tr, bar, loss, grad_norm, time.time() - t0, finished, stopping, timed_out)
            if stopping:
                break
    bar.close()
    if tr.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    completed = (tr.step == tr.total_steps or timed_out) and not interrupted
    if main_rank and completed and wants_guidance_choice(args, len(tr.config["classes"])):
        choose_run_guidance(tr)  # RUN/guidance.json, before the lock goes: the run is not done without it
    if main_rank:
        unlock_run(tr.run_dir)
        why = stop_reason(tr.length_words, args.max_minutes if timed_out else None)
        print(stop.message("train_ldm.py", tr.step, tr.run_dir) if interrupted else
              stopped_message("train_ldm.py", tr.step, tr.run_dir) if tr.step < tr.total_steps and not timed_out
              else done_message(tr.run_dir, tr.step, tr.train_seconds, why))
    return 130 if interrupted else 0


def after_step(tr: Training, bar, loss: float, grad_norm: torch.Tensor, seconds: float, finished: bool,
               stopping: bool, timed_out: bool) -> None:
    """Rank 0 after each step: a line of log.jsonl; at guide_step the guide (the EMA weights then); every
    --sample-every steps a grid and the loss curves; every --ckpt-every steps (and at the end, or when stopping) a
    checkpoint."""
    args, step = tr.args, tr.step
    global_batch = args.batch_size * args.grad_accum
    record = {"step": step, "epoch": (step - 1) // (len(tr.latents["y"]) // global_batch), "loss": loss,
              "lr": tr.opt.param_groups[0]["lr"], "grad_norm": grad_norm.item(), "images_per_s": global_batch / seconds,
              "train_s": round(tr.train_seconds, 3)}
    if finished:  # the last record says why the run stopped
        record["stopped"] = stop_reason(tr.length_words, args.max_minutes if timed_out else None)
    log_step(tr.run_dir, bar, record, args.max_minutes)
    if step == guide_step(tr.total_steps):  # autoguidance's guide: these EMA weights, for sampling after training
        atomic_save_weights(tr.run_dir / GUIDE_FILE, tr.ema.state_dict(), {"step": step})
    if step % args.sample_every == 0 or finished:
        path = save_grid(tr.run_dir, tr.ema, tr.vae, tr.config, step, tr.device)
        save_loss_curves(tr.run_dir, args.prediction)
        bar.write(f"step {step}: loss {loss:.4f}; grid {path}")
    if (step % args.ckpt_every == 0 and not tr.watch.suspect) or finished or stopping:  # not while the loss rises
        state = {"step": step, "optimizer": tr.opt.state_dict(), "rng": rng_state(), "generator": tr.gen.get_state(),
                 "total_steps": tr.total_steps, "train_seconds": tr.train_seconds}
        save_checkpoint(tr.run_dir, step, {"model": tr.model.state_dict(), "ema": tr.ema.state_dict()}, state)


# ---- Settings: recipes, options, resuming ------------------------------------------------------------------------

RESUMABLE_OVERRIDES = ("epochs", "max_steps", "max_minutes", "stop_after", "ckpt_every", "sample_every", "device",
                       "compile", "data", "choose_guidance")  # --data: the run's data, moved (checked: same images)
# Options that config.json stores once outside "args", and where (read back on --resume).
STORED_ELSEWHERE = {"backbone": ("backbone",), "vae": ("vae",), "data": ("data",), "prediction": ("prediction",),
                    "cond": ("backbone_config", "cond_type"), "patch_size": ("backbone_config", "patch_size"),
                    "schedule": ("schedule", "beta_schedule"),
                    "num_train_timesteps": ("schedule", "num_train_timesteps"),
                    "zero_snr": ("schedule", "zero_terminal_snr"), "flow_shift": ("schedule", "shift"),
                    "grid_cfg": ("grid", "sampling", "cfg_scale")}
PRETRAINED_VAL_FRACTION = 0.1  # a diffusers autoencoder has no split of its own: hold out train_vae.py's default share
CHOOSE_GUIDANCE = True  # --choose-guidance's default (the tests' short runs turn it off: tests/conftest.py)
GRID_SEED = 1234  # progress grids: the same noise at every step, so the rows show training, not sampling luck

# The settings each preset trains with unless told otherwise. tiny and small: the fastest to quality measured on 2 CPU
# cores with the tiny preset on both built-in families (docs/speedrun.md, benchmarks/time_to_quality.py), the length
# in optimizer steps so that a smaller data set is not trained for less (4,420 steps of batch 16 = 64 epochs of the
# walking set: the same images seen as 2,210 of batch 32, twice the updates; eighth round). compact: the seventh
# round's 2,210 steps of batch 32 (batch 16 at 256×256 traded TSTR for top-1 on walking and did nothing for the
# activities). seed: the seed's own hyper-parameters, in epochs (DDPM ε-prediction; MMDiT is always trained with
# rectified flow).
FAST_RECIPE = dict(prediction="flow", flow_shift=3.0, max_steps=4420, batch_size=16, grad_accum=1, lr=4e-3, warmup=100,
                   lr_schedule="cosine", ema_decay=0.999)
RECIPES = {
    "tiny": FAST_RECIPE,
    "compact": FAST_RECIPE | dict(max_steps=2210, batch_size=32),
    "small": FAST_RECIPE,
    "seed": dict(prediction="eps", flow_shift=1.0, epochs=200, batch_size=8, grad_accum=4, lr=1e-4, warmup=0,
                 lr_schedule="constant", ema_decay=0.9999),
}
# Autoguidance's guide (Karras et al. 2024): the run's own EMA weights at this share of its steps, saved as
# RUN/guide.safetensors and asked beside the trained model when sampling with --ag-scale. A quarter guided better
# than an eighth at both sizes, walking (docs/speedrun.md, eleventh round).
GUIDE_AT = 0.25
# The backbone size each preset trains (a name in the model file's PRESETS): compact's latents have tiny's shape.
BACKBONE_SIZE = {"tiny": "tiny", "compact": "tiny", "small": "small", "seed": "seed"}

# What each numeric option allows (tinyldm.options), checked once at start-up; None (not given) is not checked.
OPTION_RANGES = {
    "num_train_timesteps": at_least(2),
    "patch_size": at_least(1),
    "image_size": at_least(1),
    "min_snr_gamma": above(0),
    "cond_dropout": between(0, 1, "0 = no classifier-free guidance", high_open=True),
    "text_merges": at_least(0, "0 = one token per byte"),
    "flow_shift": above(0, "1 = none"),
    "epochs": at_least(1),
    "max_steps": at_least(1),
    "max_minutes": above(0),
    "batch_size": at_least(1),
    "grad_accum": at_least(1),
    "lr": above(0),
    "warmup": at_least(0, "0 = no warmup"),
    "grad_clip": at_least(0, "0 = off"),
    "ema_decay": between(0, 1),
    "ckpt_every": at_least(1),
    "sample_every": at_least(1),
    "grid_cfg": finite("1 = no guidance"),
    "stop_after": at_least(1),
    "seed": SEED_RANGE,
}


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=["unet", "dit", "mmdit"], default="dit",
                   help="denoiser: UNet (cross-attention), DiT (adaLN-Zero) or Flux-style MMDiT (joint attention)")
    g.add_argument("--preset", choices=["tiny", "compact", "small", "seed"], default="tiny",
                   help="tiny: CPU-sized; compact: tiny's backbones on the compact autoencoder's 32×32×4 latents of "
                        "256×256 images (CPU); small: one GPU; seed: the seed's SD-UNet / DiT-XL/2")
    g.add_argument("--cond", choices=["embedding", "onehot_mlp", "tokens", "text"], default=None,
                   help="how a user id is encoded, each with a null id for CFG (default: tokens for mmdit, whose "
                        "condition stream is a token sequence; embedding otherwise); text: each image's caption "
                        "(the data folder's captions.json) through a small CLIP text transformer trained with the "
                        "backbone, the empty caption as the null condition")
    g.add_argument("--text-merges", type=int, default=200,
                   help="--cond text: BPE merges learned from the training captions for the run's tokenizer/")
    g.add_argument("--patch-size", type=int, default=None,
                   help="DiT/MMDiT patch size (default: the preset's); tokens = (latent size / patch)²")
    g = p.add_argument_group("data")
    g.add_argument("--vae", type=Path, default=None,
                   help="stage 1: a train_vae.py run folder, a diffusers AutoencoderKL/VQModel folder (e.g. a "
                        "downloaded sd-vae-ft-mse) or a pipeline folder with vae/; default runs/vae-kl-<preset> or "
                        "runs/demo/vae")
    g.add_argument("--data", type=Path, default=None,
                   help="image folders (one per user); default: the data the autoencoder run was trained on "
                        "(a diffusers autoencoder needs --data)")
    g.add_argument("--image-size", type=int, default=None,
                   help="with a diffusers autoencoder: resize images to this (a multiple of its downsampling "
                        "factor; default: its sample_size); a train_vae.py run keeps its own size")
    g = p.add_argument_group("diffusion (1000 training steps; prediction from the preset's recipe)")
    g.add_argument("--prediction", choices=["eps", "v", "x0", "flow"], default=None,
                   help="what the network predicts; flow = rectified-flow velocity ε − x0 on the flow schedule "
                        "(default: the recipe's: flow for tiny and small, eps for seed; mmdit always flow)")
    g.add_argument("--schedule", choices=["linear", "scaled_linear", "cosine"], default="linear", help="β schedule")
    g.add_argument("--num-train-timesteps", type=int, default=1000)
    g.add_argument("--zero-snr", action="store_true", help="rescale to zero terminal SNR (pair with --prediction v)")
    g.add_argument("--min-snr-gamma", type=float, default=None, help="min-SNR-γ loss weighting, e.g. 5")
    g.add_argument("--cond-dropout", type=float, default=0.1, help="share of user ids replaced by the null id")
    g.add_argument("--flow-shift", type=float, default=None,
                   help="rectified flow: timestep shift t' = s·t/(1 + (s − 1)·t) (SD3 uses 3 at 1024², 1 = none; "
                        "default: the recipe's)")
    g.add_argument("--timesteps", choices=["uniform", "logit_normal"], default=None,
                   help="training-time sampling (default: logit_normal for flow, uniform for VP)")
    g = p.add_argument_group("optimisation (defaults: the preset's recipe, " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:g}" if not isinstance(v, str) else f"{k} {v}" for k, v in r.items())
        for name, r in RECIPES.items() if name != "small") + "; small as tiny)")
    g.add_argument("--epochs", type=int, default=None,
                   help="passes over the training set (the seed recipe's unit); replaces the recipe's length")
    g.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps in total, whatever the data's size (the tiny/small recipe's unit: 2,210); "
                        "overrides --epochs and the recipe's length")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="also stop once this much training time is spent (summed over resumes; grids and "
                        "checkpoints not counted): for comparisons at equal compute")
    g.add_argument("--batch-size", type=int, default=None, help="latents per micro-batch (all GPUs together)")
    g.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=None, help="AdamW learning rate (no weight decay)")
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="after warmup: constant, or half-cosine decay to 0 at the last step")
    g.add_argument("--warmup", type=int, default=None, help="linear LR warmup steps")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0 = off)")
    g.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=True,
                   help="AdamW's fused kernel (the same update, faster); --no-fused-optimizer: PyTorch's default")
    g.add_argument("--ema-decay", type=float, default=None, help="EMA decay (with warmup (1 + k)/(10 + k))")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone's training forward")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16 autocast: auto = on CUDA and on CPUs that multiply bf16 in hardware (AMX-BF16: 1.5× "
                        "faster with the written-out attention; AVX512-BF16: 1.5×), float32 elsewhere and with "
                        "--compile on the CPU")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=None, help="run folder (default runs/ldm-<backbone>-<preset>)")
    g.add_argument("--resume", type=Path, default=None, help="continue this run folder exactly")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its weights, config.json, checkpoints and log are deleted "
                        "first); without it such an --out is refused")
    g.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N optimizer steps (and at the end)")
    g.add_argument("--sample-every", type=int, default=500, help="write a sample grid every N steps (and at the end)")
    g.add_argument("--choose-guidance", action=argparse.BooleanOptionalAction, default=CHOOSE_GUIDANCE,
                   help="after training, choose the guidance scale w on the training images (lowest Fréchet distance "
                        "in the evaluation classifier's features among w = "
                        f"{', '.join(f'{w:g}' for w in CHOICE_SCALES)}, up to the first rise) and write it to "
                        "RUN/guidance.json, the default of sample.py and evaluate.py; on 2 CPU cores about 40–60 s at "
                        "64×64 and 1.5–5 min at 256×256. Off: they use w = 1.25")
    g.add_argument("--grid-cfg", type=float, default=SamplingConfig.cfg_scale,
                   help="guidance scale of the progress grids (default: sample.py's)")
    g.add_argument("--stop-after", type=int, default=None, help="checkpoint and stop after N steps (resume later)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", type=device_name, default="auto",
                   help="auto, cpu, cuda, cuda:1 … or mps (under torchrun: one GPU per process)")
    args = p.parse_args(argv)
    check_ranges(p, args, OPTION_RANGES)
    if args.resume is not None and args.overwrite:
        p.error("--resume continues the run in its folder and --overwrite replaces it; choose one")
    return args, p.parse_args([])


def set_up(args: argparse.Namespace, defaults: argparse.Namespace):
    """→ (settings, rank, world size, device, checkpoint weights, training state). Joins DDP under torchrun (a plain
    `python train_ldm.py` is rank 0 of 1); on --resume the run's saved settings come back (tinyldm.train)."""
    rank, world, device = init_distributed(args.device)
    weights, train_state = None, None
    if args.resume is not None:
        older_runs = {"precision": "bf16" if device.type == "cuda" else "fp32",  # before --precision existed
                      "fused_optimizer": False}  # and before --fused-optimizer
        args, weights, train_state = resume_run(args.resume, "ldm", "train_ldm.py", args, defaults,
                                                RESUMABLE_OVERRIDES, STORED_ELSEWHERE, older_runs)
    resolve_defaults(args)
    args.vae = Path(args.vae) if args.vae is not None else default_vae(args.preset)
    args.data = Path(args.data) if args.data is not None else default_data(args.vae)
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    seed_everything(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return args, rank, world, device, weights, train_state


def resolve_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on other choices: the preset's recipe; MMDiT is trained with rectified flow on user
    tokens."""
    if args.backbone == "mmdit" and args.prediction is None:
        args.prediction = "flow"
    apply_recipe(args, RECIPES[args.preset])
    args.cond = args.cond or ("tokens" if args.backbone == "mmdit" else "embedding")
    args.timesteps = args.timesteps or ("logit_normal" if args.prediction == "flow" else "uniform")
    if args.zero_snr and args.prediction == "eps":
        raise ValueError("--zero-snr with --prediction eps cannot predict x0 at the last step (SNR 0); "
                         "use --prediction v")


def make_schedule(args: argparse.Namespace) -> Schedule:
    if args.prediction == "flow":
        return Schedule.flow(shift=args.flow_shift, num_train_timesteps=args.num_train_timesteps)
    return Schedule.vp(args.schedule, num_train_timesteps=args.num_train_timesteps, zero_terminal_snr=args.zero_snr)


def default_vae(preset: str) -> Path:
    for candidate in (Path("runs") / f"vae-kl-{preset}", Path("runs/demo/vae")):
        if (candidate / "model.safetensors").is_file():
            return candidate
    raise RunError(f"no autoencoder run found (looked for runs/vae-kl-{preset} and runs/demo/vae); train one with "
                   f"`python train_vae.py --preset {preset}` (or `make demo`), or pass --vae RUN_DIR")


def default_data(vae: Path) -> Path:
    """No --data: the data the autoencoder run was trained on; a diffusers autoencoder names none."""
    fmt, folder = vae_folder(vae)
    if fmt == "diffusers":
        raise RunError(f"--vae {vae} is a diffusers autoencoder, which names no training data; pass --data (a folder "
                       "with one sub-folder of images per user)")
    return Path(read_run(folder, "autoencoder", "train_vae.py")["data"]["root"])


def start_training(args: argparse.Namespace, defaults: argparse.Namespace) -> Training:
    """Everything before the first step: DDP, the settings (a resumed run keeps its own) and the seeds; the frozen
    autoencoder and its data's latents (encoded once, then cached); the backbone, its EMA, the schedule and AdamW
    (from the checkpoint when resuming); config.json in the run folder."""
    args, rank, world, device, weights, train_state = set_up(args, defaults)
    run_dir = Path(args.resume or args.out or Path("runs") / f"ldm-{args.backbone}-{args.preset}")
    if rank == 0:
        claim_run_folder(run_dir, "train_ldm.py", args.data,  # one writer: a second is refused before any work
                         resuming=args.resume is not None, overwrite=args.overwrite)
    vae, stage1, train_ds, latents = load_latents(args, device, rank == 0)
    fingerprint = data_fingerprint(train_ds)
    if args.resume is not None:  # before the checkpoint is restored: a removed user would not fit the backbone
        check_same_data(run_dir, args.data, fingerprint)
    n, latent_shape, classes = len(latents["y"]), tuple(latents["mean"].shape[1:]), train_ds.classes
    total_steps, length_words = count_steps(args, n)
    c, h, _ = latent_shape
    tokenizer, text_config = None, None
    if args.cond == "text":  # each latent's caption, tokenized; the text model is sized by the tokenizer
        tokenizer, captions = caption_tokenizer(args, run_dir, train_ds)
        latents["text"], latents["null_text"] = tokenizer(captions), tokenizer("")[0]  # (N, L), (L,)
        text_config = {**TEXT_PRESETS["tiny"], "vocab_size": tokenizer.vocab_size,
                       "max_position_embeddings": tokenizer.max_length, "eos_token_id": tokenizer.eos_id,
                       "bos_token_id": tokenizer.bos_id, "pad_token_id": tokenizer.pad_id}
    bb_config = backbone_config(args.backbone, BACKBONE_SIZE[args.preset], c, h, len(classes), args.cond,
                                args.patch_size, text_config)
    sched = make_schedule(args)
    amp = autocast_dtype(device, args.precision, args.compile)  # bf16 autocast or None (float32)
    model, train_model, ema, opt, gen, step, train_seconds = build_training(args, bb_config, world, device, amp,
                                                                            weights, train_state)
    config = {**run_config(args, bb_config, sched, stage1, classes, latent_shape, world),
              "data_fingerprint": fingerprint}
    if tokenizer is not None:  # the grid's rows: the caption of each grid user's first training image
        first = {user: i for i, (_, user, _) in reversed(list(enumerate(train_ds.samples)))}
        config["grid"]["prompts"] = [captions[first[u]] for u in config["grid"]["users"]]
    if rank == 0:
        start_run_folder(run_dir, config, step)
        if tokenizer is not None and args.resume is None:
            tokenizer.save(run_dir / "tokenizer")
        print_start(run_dir, model, step, total_steps, length_words, n, latent_shape, len(classes), args, world,
                    device, amp, sched)
    return Training(args, run_dir, model, train_model, ema, opt, gen, sched, latents, stage1, vae, config,
                    total_steps, length_words, rank, world, device, amp, step, train_seconds)


def caption_tokenizer(args: argparse.Namespace, run_dir: Path, train_ds) -> tuple[CLIPTokenizer, list[str]]:
    """--cond text → (the run's tokenizer, each training latent's caption). A new run learns a small BPE vocabulary
    from its training captions (--text-merges) and sizes its length L to the longest; a resumed run reads back its
    own run_dir/tokenizer/."""
    captions = captions_of(args.data, [path for path, _, _ in train_ds.samples])
    if args.resume is not None:
        tokenizer = CLIPTokenizer.from_folder(run_dir / "tokenizer")
    else:
        vocab, merges = train_bpe(sorted(set(captions)), args.text_merges)
        unpadded = CLIPTokenizer(vocab, merges)  # CLIP's 77 positions, only to count each caption's tokens
        longest = max(len(unpadded.encode(text)) for text in set(captions))
        tokenizer = CLIPTokenizer(vocab, merges, max_length=longest)
    return tokenizer, captions


def stage1_split(args: argparse.Namespace, source, vae_run: dict | None) -> tuple[dict, bool]:
    """How stage 2 reads its images → (UserImageFolder's image_size, channels, val_fraction, seed; strict_size).
    A train_vae.py run (`vae_run`, its config): its own settings, so both stages see the same images and split. A
    diffusers autoencoder: its sample_size (or --image-size) and channels, train_vae.py's default validation share,
    this run's seed."""
    if vae_run is not None:
        split = autoencoder_split(vae_run)
        if args.image_size not in (None, split["image_size"]):
            raise ValueError(f"--image-size {args.image_size}: the autoencoder run {args.vae} was trained at "
                             f"{split['image_size']}×{split['image_size']}, and stage 2 reads the images as it did; "
                             "drop --image-size")
        strict = split.pop("strict_size")
        return split, strict
    f, size = source.downsample_factor, args.image_size or source.image_size
    if source.channels not in (1, 3):
        raise ValueError(f"--vae {args.vae} reads {source.channels}-channel images (in_channels), but image folders "
                         "are read as 1 (grey) or 3 (RGB) channels; use an autoencoder with in_channels 1 or 3")
    if size % f:
        fix = "pass --image-size" if args.image_size is None else "use"
        raise ValueError(f"image size {size} is not a multiple of the autoencoder's downsampling factor {f} "
                         f"({args.vae}); {fix} e.g. {max(f, size // f * f)} or {(size // f + 1) * f}")
    return {"image_size": size, "channels": source.channels, "val_fraction": PRETRAINED_VAL_FRACTION,
            "seed": args.seed}, False


def load_latents(args: argparse.Namespace, device, main_rank: bool):
    """The frozen autoencoder and its data's cached latents → (vae, what config.json records about stage 1, train
    split, latents).

    The autoencoder is a train_vae.py run or a diffusers folder (tinyldm.loading.load_vae). The data goes
    through the same `UserImageFolder` conversions (size, channels, split) as in train_vae.py, so both stages accept
    the same folders. The latent scale and shift are the autoencoder's own (train_vae.py measures the scale at its
    end; diffusers' config.json states both); for an autoencoder run that never finished the scale is measured here,
    1/std(z) over the cached latents, and said so.
    """
    vae, source = load_vae(args.vae, device)
    vae = inference_layout(vae.requires_grad_(False))  # frozen: it only encodes the latents and decodes samples
    vae_run = read_run(source.folder, "autoencoder", "train_vae.py") if source.format == "tinyldm" else None
    split, strict = stage1_split(args, source, vae_run)
    train_ds = UserImageFolder(args.data, split="train", strict_size=strict, **split)
    if vae_run is not None:  # the cache lives beside the autoencoder's weights, keyed by its run's config
        cache_dir, described = Path(source.folder) / "latent_cache", {k: vae_run[k] for k in ("model_type", "model")}
    else:
        cache_dir, described = shared_cache_dir(), {"model_type": source.model_type, "model": asdict(vae.config)}
    latents, cache_path, built = cached_latents(vae, cache_dir, source.sha256, described, train_ds, split, device)
    if source.scaling_factor is not None:
        scale = source.scaling_factor
        how = "measured by train_vae.py" if source.format == "tinyldm" else f"{source.folder}/config.json"
    else:
        z = latents["mean"] + latents["std"] * torch.randn(latents["mean"].shape, generator=torch.Generator()
                                                          .manual_seed(0))  # (N, c, h, w) posterior samples
        scale, how = measure_scale(z), f"measured here: {args.vae} {missing_scale_reason(vae_run)}"
    shift = source.shift_factor
    if main_rank:
        print(f"latents: {'encoded' if built else 'reused'} {cache_path}; scaling_factor {scale:.4f} ({how})"
              + (f", shift_factor {shift:g}" if shift else ""))
    identity = {k: v for k, v in asdict(source).items() if k not in ("image_size", "channels", "scaling_factor",
                                                                        "shift_factor")}  # these are stored below
    stage1 = {"vae_source": identity, "scaling_factor": scale, "shift_factor": shift,
              "image_size": split["image_size"], "channels": split["channels"],
              "split": {"val_fraction": split["val_fraction"], "seed": split["seed"], "strict_size": strict,
                        "aspect": split.get("aspect", "windows")}}
    return vae, stage1, train_ds, latents


def missing_scale_reason(vae_run: dict | None) -> str:
    """Why an autoencoder states no usable latent scale (load_vae's scaling_factor None), in true words."""
    if vae_run is None:
        return "states no scaling_factor in its config.json"
    if "latent_std" not in vae_run.get("results", {}):
        return "did not finish, so it has none"
    if "scaling_factor" not in vae_run["model"]:
        return "has no scaling_factor in its config.json (edited by hand?)"
    return f"has an unusable scaling_factor {vae_run['model']['scaling_factor']!r} in config.json (not a number > 0)"


def count_steps(args: argparse.Namespace, n: int) -> tuple[int, str]:
    """→ (optimizer steps in all, why that many) for n training latents."""
    global_batch = args.batch_size * args.grad_accum
    if n < global_batch:
        raise DataError(f"{args.data}: {n} training images but a global batch of {global_batch} "
                        f"(--batch-size × --grad-accum); lower them or add data")
    return training_length(args, n, global_batch)


def run_config(args, bb_config: dict, sched: Schedule, stage1: dict, classes: list[str], latent_shape, world: int
               ) -> dict:
    """config.json: everything sample.py needs to rebuild the model and sample, each setting once. `stage1`: the
    autoencoder's source, latent scale and shift, and the image size, channels and split the data is read with."""
    num_classes = len(classes)
    grid_users = sorted({round(k * (num_classes - 1) / 7) for k in range(8)}) if num_classes > 8 \
        else list(range(num_classes))
    grid_sampling = SamplingConfig(cfg_scale=args.grid_cfg, seed=GRID_SEED)
    return {"kind": "ldm", "backbone": args.backbone, "backbone_config": bb_config, "vae": str(args.vae), **stage1,
            "latent_shape": list(latent_shape), "num_classes": num_classes, "classes": classes,
            "data": str(args.data), "schedule": sched.to_config(),
            "prediction": args.prediction, "grid": {"users": grid_users, "sampling": vars(grid_sampling)},
            "world_size": world, "args": args_record(args, STORED_ELSEWHERE)}


def build_training(args, bb_config: dict, world: int, device, amp: torch.dtype | None, weights: dict | None,
                   train_state: dict | None):
    """→ (backbone, the module that trains it (compiled and/or DDP-wrapped, or itself), its EMA, AdamW, the per-step
    generator, step, training seconds), from the checkpoint when resuming."""
    model = build_backbone(args.backbone, bb_config).to(device)
    if device.type == "cpu" and amp is not None:
        written_out_attention(model)  # CPU bf16: SDPA's flash backward is slow there, the written-out 1.5× faster
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = adamw(model.parameters(), args.lr, 0.0, args.fused_optimizer)
    gen = torch.Generator().manual_seed(args.seed)  # every per-step random draw, identical on all ranks
    step, train_seconds = 0, 0.0
    if train_state is not None:
        restore(model, weights["model"], "model")
        restore(ema, weights.get("ema", {}), "EMA")
        restore(opt, train_state["optimizer"], "optimizer state")
        set_rng_state(train_state["rng"])
        gen.set_state(train_state["generator"])
        step, train_seconds = train_state["step"], train_state.get("train_seconds", 0.0)
    train_model = torch.compile(model) if args.compile else model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, train_model, ema, opt, gen, step, train_seconds


def print_start(run_dir: Path, model, step: int, total_steps: int, length_words: str, n: int, latent_shape,
                num_classes: int, args, world: int, device, amp: torch.dtype | None, sched: Schedule) -> None:
    if step:
        print(f"resumed {run_dir} at step {step}/{total_steps}")
    print(model.summary())
    print(f"{n} latents {'×'.join(map(str, latent_shape))} of {num_classes} users, global batch "
          f"{args.batch_size * args.grad_accum} ({args.batch_size} × {args.grad_accum} accumulation, {world} "
          f"process(es)), {length_words} on {device}, {precision_words(device, amp)}; schedule {sched}, "
          f"prediction {args.prediction}")


def save_grid(run_dir: Path, ema, vae, config: dict, step: int, device) -> Path:
    """samples/grid_step_N.png: rows = the grid users (a text run: their captions), EMA weights, the grid's fixed
    sampling settings."""
    users = config["grid"]["users"]
    x, _ = generate(ema, vae, config, users, 4, SamplingConfig(**config["grid"]["sampling"]),
                    prompts=config["grid"].get("prompts"), tokenizer=load_tokenizer(run_dir, config), device=device)
    (run_dir / "samples").mkdir(exist_ok=True)
    path = run_dir / "samples" / f"grid_step_{step:06d}.png"
    image_grid(list(x), row_labels=[config["classes"][u] for u in users]).save(path)
    return path


def guide_step(total_steps: int) -> int:
    """The step whose EMA weights become autoguidance's guide (RUN/guide.safetensors): GUIDE_AT of the run."""
    return max(1, round(GUIDE_AT * total_steps))


def wants_guidance_choice(args: argparse.Namespace, num_classes: int) -> bool:
    """Choose w after training? Only where there is something to choose: user ids with dropped ids (guidance needs
    the null id) and at least 2 users (the choice measures with a user-ID classifier)."""
    return args.choose_guidance and args.cond != "text" and args.cond_dropout > 0 and num_classes >= 2


def choose_run_guidance(tr: Training) -> None:
    """The run's own guidance scale, on its training images (tinyldm/evaluation/sweep.py: choose_guidance), written
    to RUN/guidance.json. The user-ID classifier it measures with is the evaluation's, trained here once and then
    reused by evaluate.py (RUN/classifier and the shared cache)."""
    t0 = time.time()
    try:
        ref, _ = run_reference(tr.run_dir, tr.config, tr.run_dir / "classifier", 0, str(tr.device), False,
                               cache_root())
    except DataError as e:  # e.g. too few validation images for the classifier: the trained run stands as it is
        print(f"guidance: not chosen ({e}); sample.py and evaluate.py use w = {SamplingConfig.cfg_scale:g}")
        return
    guide = load_guide(tr.run_dir, tr.device) if has_guide(tr.run_dir) else None
    choice = choose_guidance(tr.ema, tr.vae, tr.config, ref, device=tr.device, guide=guide)
    save_guidance(tr.run_dir, choice)
    print(f"guidance: w = {choice['cfg_scale']:g}, autoguidance w_a = {choice['ag_scale']:g}, the lowest Fréchet "
          f"distance to the training images (w → FD: {choice_words(choice)}; {time.time() - t0:.0f} s); "
          f"{tr.run_dir / GUIDANCE_FILE} is sample.py's and evaluate.py's default from now on (--cfg-scale and "
          "--ag-scale override it)")


def save_loss_curves(run_dir: Path, prediction: str) -> None:
    log = read_log(run_dir)
    plot_curves({"loss": ([r["step"] for r in log], smooth([r["loss"] for r in log], 25))},
                run_dir / "loss_curves.png", title=f"{prediction}-loss (running mean over 25 steps)")


def log_step(run_dir: Path, bar, record: dict, max_minutes: float | None) -> None:
    """One line of log.jsonl and the progress bar's numbers (with the training clock under --max-minutes)."""
    append_log(run_dir, record)
    bar.update(1)
    clock = {"minutes": f"{record['train_s'] / 60:.1f}/{max_minutes:g}"} if max_minutes else {}
    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2g}", img_s=f"{record['images_per_s']:.0f}",
                    **clock)


def spent(train_seconds: float, max_minutes: float | None) -> bool:
    """Is the --max-minutes training budget spent?"""
    return max_minutes is not None and train_seconds >= 60 * max_minutes


def rank0_decides(flags: list[bool], world: int, device) -> list[bool]:
    """Stop flags (budget spent, Ctrl-C) as rank 0 sees them, for every rank, so all stop at the same step."""
    if world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    torch.distributed.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def stop_reason(length_words: str, spent_minutes: float | None) -> str:
    """Why a finished run stopped, for the log and the last line."""
    return f"--max-minutes {spent_minutes:g} spent" if spent_minutes is not None else \
        f"the training length: {length_words}"


def done_message(run_dir: Path, step: int, train_seconds: float, why: str) -> str:
    return (f"done: {step} steps in {train_seconds / 60:.1f} min of training ({why}); weights "
            f"{run_dir / 'ema.safetensors'} (EMA) and model.safetensors; samples {run_dir / 'samples'}"
            f"\n  sample with: python sample.py --run {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
