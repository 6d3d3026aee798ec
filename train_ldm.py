"""Stage 2: train a class-conditional latent-diffusion backbone on the frozen autoencoder's latents.

    python train_ldm.py --backbone dit --vae runs/vae-kl-tiny          # tiny DiT on the simulated set
    python train_ldm.py --backbone unet --prediction v --zero-snr      # UNet, v-prediction, zero terminal SNR
    torchrun --nproc_per_node=4 train_ldm.py --backbone dit --preset small   # the same run on 4 GPUs (DDP)
    python train_ldm.py --resume runs/ldm-dit-tiny                     # continue exactly

Each optimizer step sees a global batch of batch_size × grad_accum latents z = (μ + σ·ε)·scaling_factor
(cached encodings, fresh ε), noised to x_t = α_t z + σ_t ε' at uniform t, with 10% of user ids replaced by
the null id (classifier-free guidance); the loss is ‖model(x_t, t, y) − target‖² (ε, v or x0; min-SNR-γ
optional). Writes runs/<name>/: config.json, model.safetensors, ema.safetensors, checkpoints/, log.jsonl,
loss_curves.png and samples/grid_step_N.png (rows = users, EMA weights, DPM-Solver++(2M), fixed seeds).
"""

import argparse
import copy
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image

from tinyldm.data import DataError, UserImageFolder
from tinyldm.data.latent_cache import cached_latents
from tinyldm.diffusion import Schedule, diffusion_loss, sample_timesteps
from tinyldm.generate import generate
from tinyldm.models.conditioning import drop_ids
from tinyldm.models.loading import backbone_config, build_backbone, load_autoencoder
from tinyldm.runs import RunError, append_log, atomic_write_json, check_writable, read_config, read_log, run_cli
from tinyldm.train import (
    ema_decay_at,
    ema_update,
    init_distributed,
    load_checkpoint,
    lr_at,
    resume_args,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    truncate_log,
)
from tinyldm.viz import image_grid, plot_curves, smooth

RESUMABLE_OVERRIDES = ("epochs", "max_steps", "max_minutes", "stop_after", "ckpt_every", "sample_every", "device",
                       "compile")


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=["unet", "dit", "mmdit"], default="dit",
                   help="denoiser: UNet (cross-attention), DiT (adaLN-Zero) or Flux-style MMDiT (joint attention)")
    g.add_argument("--preset", choices=["tiny", "small", "seed"], default="tiny",
                   help="tiny: CPU-sized; small: one GPU; seed: the seed's SD-UNet / DiT-XL/2")
    g.add_argument("--cond", choices=["embedding", "onehot_mlp", "tokens"], default=None,
                   help="how a user id is encoded, each with a null id for CFG (default: tokens for mmdit, whose "
                        "condition stream is a token sequence; embedding otherwise)")
    g = p.add_argument_group("data")
    g.add_argument("--vae", type=Path, default=None,
                   help="the stage-1 run folder (train_vae.py); default runs/vae-kl-<preset> or runs/demo/vae")
    g.add_argument("--data", type=Path, default=None,
                   help="image folders (one per user); default: the data the autoencoder was trained on")
    g = p.add_argument_group("diffusion (defaults follow the seed: DDPM, 1000 steps, ε-prediction)")
    g.add_argument("--prediction", choices=["eps", "v", "x0", "flow"], default=None,
                   help="what the network predicts; flow = rectified-flow velocity ε − x0 on the flow schedule "
                        "(default: flow for mmdit, eps otherwise)")
    g.add_argument("--schedule", choices=["linear", "scaled_linear", "cosine"], default="linear", help="β schedule")
    g.add_argument("--num-train-timesteps", type=int, default=1000)
    g.add_argument("--zero-snr", action="store_true", help="rescale to zero terminal SNR (pair with --prediction v)")
    g.add_argument("--min-snr-gamma", type=float, default=None, help="min-SNR-γ loss weighting, e.g. 5")
    g.add_argument("--cond-dropout", type=float, default=0.1, help="share of user ids replaced by the null id")
    g.add_argument("--flow-shift", type=float, default=1.0,
                   help="rectified flow: timestep shift t' = s·t/(1 + (s − 1)·t) (SD3 uses 3 at 1024², 1 = none)")
    g.add_argument("--timesteps", choices=["uniform", "logit_normal"], default=None,
                   help="training-time sampling (default: logit_normal for flow, uniform for VP)")
    g = p.add_argument_group("optimisation (defaults follow the seed)")
    g.add_argument("--epochs", type=int, default=None, help="passes over the training set (default 200)")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps in total (overrides --epochs)")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="also stop once this much training time is spent (summed over resumes; grids and "
                        "checkpoints not counted): for comparisons at equal compute")
    g.add_argument("--batch-size", type=int, default=8, help="latents per micro-batch (all GPUs together)")
    g.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (no weight decay)")
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    g.add_argument("--warmup", type=int, default=0, help="linear LR warmup steps")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0 = off)")
    g.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay (with warmup (1 + k)/(10 + k))")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone's training forward")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=None, help="run folder (default runs/ldm-<backbone>-<preset>)")
    g.add_argument("--resume", type=Path, default=None, help="continue this run folder exactly")
    g.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N optimizer steps (and at the end)")
    g.add_argument("--sample-every", type=int, default=500, help="write a sample grid every N steps (and at the end)")
    g.add_argument("--grid-cfg", type=float, default=4.0, help="guidance scale of the progress grids")
    g.add_argument("--stop-after", type=int, default=None, help="checkpoint and stop after N steps (resume later)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun: one GPU per process)")
    return p.parse_args(argv), p.parse_args([])


def default_vae(preset: str) -> Path:
    for candidate in (Path("runs") / f"vae-kl-{preset}", Path("runs/demo/vae")):
        if (candidate / "model.safetensors").is_file():
            return candidate
    raise RunError(f"no autoencoder run found (looked for runs/vae-kl-{preset} and runs/demo/vae); train one with "
                   f"`python train_vae.py --preset {preset}` (or `make demo`), or pass --vae RUN_DIR")


def check_data_matches(data: UserImageFolder, vae_dir: Path, size: int, channels: int) -> None:
    """The autoencoder only understands images like the ones it was trained on."""
    path = data.samples[0][0]
    with Image.open(path) as img:
        w, h = img.size
        c = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
    if (w, h) != (size, size) or c != channels:
        raise DataError(f"{path} is {w}×{h}×{c} but the autoencoder {vae_dir} was trained on {size}×{size}×{channels} "
                        "images; train an autoencoder on this data (train_vae.py --data ...) or pass matching --data")


def save_grid(run_dir, ema, vae, run_config, step, device) -> Path:
    users = run_config["grid_users"]
    x, _ = generate(ema, vae, run_config, users, n_per_user=4, steps=20, cfg_scale=run_config["args"]["grid_cfg"],
                    seed=1234, device=device)
    (run_dir / "samples").mkdir(exist_ok=True)
    path = run_dir / "samples" / f"grid_step_{step:06d}.png"
    classes = run_config["classes"]
    image_grid(list(x), row_labels=[classes[u] for u in users]).save(path)
    return path


def main(argv=None) -> int:
    args, defaults = parse_args(argv)
    return run_cli("train_ldm.py", train, args, defaults)


def train(args: argparse.Namespace, defaults: argparse.Namespace) -> None:
    # Set up DDP (a plain `python train_ldm.py` is rank 0 of 1).
    rank, world, device = init_distributed(args.device)
    main_rank = rank == 0

    # Resume: the run's settings win; asking for a different setting is an error, not a silent change.
    weights, train_state = None, None
    if args.resume is not None:
        weights, train_state = load_checkpoint(args.resume)
        saved = read_config(args.resume)
        if saved.get("kind") != "ldm":
            raise RunError(f"--resume {args.resume}: a {saved.get('kind')!r} run, not a train_ldm.py run")
        args = resume_args(saved["args"], args, defaults, RESUMABLE_OVERRIDES, "--resume " + str(args.resume))
    # Defaults that depend on other choices: MMDiT is trained with rectified flow on user tokens.
    args.epochs = 200 if args.epochs is None and args.max_steps is None else args.epochs
    args.prediction = args.prediction or ("flow" if args.backbone == "mmdit" else "eps")
    args.cond = args.cond or ("tokens" if args.backbone == "mmdit" else "embedding")
    args.timesteps = args.timesteps or ("logit_normal" if args.prediction == "flow" else "uniform")
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    seed_everything(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Load the frozen autoencoder and the data it was trained on.
    vae_dir = Path(args.vae) if args.vae is not None else default_vae(args.preset)
    args.vae = vae_dir
    vae, vae_run = load_autoencoder(vae_dir, device)
    vae.requires_grad_(False)
    d = vae_run["data"]
    data_root = Path(args.data) if args.data is not None else Path(d["root"])
    split = {"image_size": d["image_size"], "channels": d["channels"],
             "val_fraction": vae_run["args"]["val_fraction"], "seed": vae_run["args"]["seed"]}
    train_ds = UserImageFolder(data_root, split="train", **split)
    check_data_matches(train_ds, vae_dir, d["image_size"], d["channels"])

    # Encode the data once (cached beside the autoencoder; rebuilt when weights or data change).
    latents, cache_path, built = cached_latents(vae, vae_run["model_type"], vae_dir, train_ds, split, device)
    if main_rank:
        print(f"latents: {'encoded' if built else 'reused'} {cache_path}")
    mean, std, labels = latents["mean"], latents["std"], latents["y"]
    n, (c, h, w) = len(labels), mean.shape[1:]
    scale = float(vae_run["model"]["scaling_factor"])
    num_classes = len(train_ds.classes)

    # Build the backbone, its EMA and the schedule.
    bb_config = backbone_config(args.backbone, args.preset, c, h, num_classes, args.cond)
    model = build_backbone(args.backbone, bb_config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    if args.prediction == "flow":
        sched = Schedule.flow(shift=args.flow_shift, num_train_timesteps=args.num_train_timesteps)
        schedule_cfg = {"kind": "flow", "shift": args.flow_shift, "num_train_timesteps": args.num_train_timesteps}
    else:
        sched = Schedule.vp(args.schedule, num_train_timesteps=args.num_train_timesteps,
                            zero_terminal_snr=args.zero_snr)
        schedule_cfg = {"kind": "vp", "beta_schedule": args.schedule, "num_train_timesteps": args.num_train_timesteps,
                        "zero_terminal_snr": args.zero_snr}
    if args.zero_snr and args.prediction == "eps":
        raise ValueError("--zero-snr with --prediction eps cannot predict x0 at the last step (SNR 0); "
                         "use --prediction v")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    global_batch = args.batch_size * args.grad_accum
    if n < global_batch:
        raise DataError(f"{data_root}: {n} training images but a global batch of {global_batch} "
                        f"(--batch-size × --grad-accum); lower them or add data")
    steps_per_epoch = n // global_batch
    total_steps = args.max_steps if args.max_steps is not None else args.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(args.seed)  # every per-step random draw, identical on all ranks
    step, train_seconds = 0, 0.0
    if train_state is not None:
        model.load_state_dict(weights["model"])
        ema.load_state_dict(weights["ema"])
        opt.load_state_dict(train_state["optimizer"])
        set_rng_state(train_state["rng"])
        gen.set_state(train_state["generator"])
        step = train_state["step"]
        train_seconds = train_state.get("train_seconds", 0.0)
    train_model = torch.compile(model) if args.compile else model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    # Run folder and config.json: everything sample.py needs to rebuild and sample.
    run_dir = Path(args.resume or args.out or Path("runs") / f"ldm-{args.backbone}-{args.preset}")
    grid_users = sorted({round(k * (num_classes - 1) / 7) for k in range(8)}) if num_classes > 8 \
        else list(range(num_classes))
    run_config = {"kind": "ldm", "backbone": args.backbone, "backbone_config": bb_config,
                  "vae": str(vae_dir), "vae_model_type": vae_run["model_type"], "scaling_factor": scale,
                  "latent_shape": [c, h, w], "num_classes": num_classes, "classes": train_ds.classes,
                  "image_size": d["image_size"], "channels": d["channels"], "data": str(data_root),
                  "schedule": schedule_cfg,
                  "prediction": args.prediction, "grid_users": grid_users, "world_size": world,
                  "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if main_rank:
        check_writable(run_dir)
        if train_state is None:
            (run_dir / "log.jsonl").unlink(missing_ok=True)
        else:
            truncate_log(run_dir, step)
            print(f"resumed {run_dir} at step {step}/{total_steps}")
        atomic_write_json(run_dir / "config.json", run_config)
        print(model.summary())
        print(f"{n} latents {c}×{h}×{w} of {num_classes} users, global batch {global_batch} "
              f"({args.batch_size} × {args.grad_accum} accumulation, {world} process(es)), {total_steps} steps on "
              f"{device}; schedule {sched}, prediction {args.prediction}")

    def checkpoint():
        state = {"step": step, "optimizer": opt.state_dict(), "rng": rng_state(), "generator": gen.get_state(),
                 "total_steps": total_steps, "train_seconds": train_seconds}
        save_checkpoint(run_dir, step, {"model": model.state_dict(), "ema": ema.state_dict()}, state)

    # Train.
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, desc=f"train_ldm {args.backbone}", unit="step", disable=not main_rank,
               dynamic_ncols=True)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext

    def out_of_time() -> bool:
        """--max-minutes spent? Rank 0's clock decides for every rank."""
        if args.max_minutes is None:
            return False
        spent = train_seconds >= 60 * args.max_minutes
        if world == 1:
            return spent
        flag = torch.tensor([float(spent)], device=device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    model.train()
    timed_out = out_of_time()
    while step < total_steps and not timed_out:
        t0 = time.time()
        epoch, i = divmod(step, steps_per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100003 + epoch))
        idx = order[i * global_batch:(i + 1) * global_batch]  # this step's global batch
        # The step's randomness, drawn for the whole global batch so every rank agrees on it.
        eps_z = torch.randn((global_batch, c, h, w), generator=gen)  # posterior sample
        noise = torch.randn((global_batch, c, h, w), generator=gen)  # ε of q(x_t | z)
        t = sample_timesteps(global_batch, sched, gen, kind=args.timesteps)
        y = drop_ids(labels[idx], num_classes, args.cond_dropout, gen)  # 10% null ids for CFG
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup, total_steps, args.lr_schedule)
        loss_sum = 0.0
        for micro in range(args.grad_accum):
            sub = torch.arange(micro * args.batch_size + rank, (micro + 1) * args.batch_size, world)  # this rank
            z0 = ((mean[idx[sub]] + std[idx[sub]] * eps_z[sub]) * scale).to(device)  # (b, c, h, w)
            sync = world == 1 or micro == args.grad_accum - 1  # DDP all-reduces only on the last micro-batch
            with nullcontext() if sync else train_model.no_sync():
                with autocast():
                    loss = diffusion_loss(train_model, z0, sched, args.prediction, t=t[sub],
                                          eps=noise[sub].to(device), min_snr_gamma=args.min_snr_gamma,
                                          cond=y[sub].to(device))
                (loss / args.grad_accum).backward()
            loss_sum += loss.item() / args.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, model, ema_decay_at(step, args.ema_decay))
        step += 1
        train_seconds += time.time() - t0
        timed_out = out_of_time()
        finished = step == total_steps or timed_out

        if main_rank:
            record = {"step": step, "epoch": epoch, "loss": loss_sum, "lr": opt.param_groups[0]["lr"],
                      "grad_norm": grad_norm.item(), "images_per_s": global_batch / (time.time() - t0),
                      "train_s": round(train_seconds, 3)}
            append_log(run_dir, record)
            bar.update(1)
            clock = {"minutes": f"{train_seconds / 60:.1f}/{args.max_minutes:g}"} if args.max_minutes else {}
            bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{record['lr']:.2g}", img_s=f"{record['images_per_s']:.0f}",
                            **clock)
            if step % args.sample_every == 0 or finished:
                path = save_grid(run_dir, ema, vae, run_config, step, device)
                log = read_log(run_dir)
                plot_curves({"loss": ([r["step"] for r in log], smooth([r["loss"] for r in log], 25))},
                            run_dir / "loss_curves.png", title=f"{args.prediction}-loss (running mean over 25 steps)")
                bar.write(f"step {step}: loss {loss_sum:.4f}; grid {path}")
        stopping = args.stop_after is not None and args.stop_after <= step and not finished
        if main_rank and (step % args.ckpt_every == 0 or finished or stopping):
            checkpoint()
        if stopping:
            break
    bar.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if main_rank and step < total_steps and not timed_out:
        print(f"stopped at step {step} (--stop-after); continue with: python train_ldm.py --resume {run_dir}")
    elif main_rank:
        budget = f" (--max-minutes {args.max_minutes:g} spent)" if timed_out else ""
        print(f"done: {step} steps in {train_seconds / 60:.1f} min of training{budget}; weights "
              f"{run_dir / 'ema.safetensors'} (EMA) and model.safetensors; samples {run_dir / 'samples'}"
              f"\n  sample with: python sample.py --run {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
