"""From a trained latent-diffusion run to images: noise → sampler (with CFG) → latents → autoencoder decode.

Used by sample.py, by train_ldm.py for its progress grids, and by the evaluation, all with one `SamplingConfig`.
The initial noise of image (user k, index i) is drawn from its own seeded generator, so the same seed gives the
same picture whatever the batch size or the set of users asked for (stochastic samplers draw their step noise
per batch).
"""

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from tinyldm.diffusion import SAMPLERS, SPACINGS, SamplingConfig, Schedule, sample
from tinyldm.latents import unscale_latents
from tinyldm.runs import RunError, inference_autocast
from tinyldm.threads import share_cores

# The generator of image (user, index) is seeded with seed·SEED_STRIDE + user·USER_STRIDE + index: two primes
# larger than any user count × images per user, so no two images of one call (or of nearby seeds) share noise.
SEED_STRIDE = 1_000_003
USER_STRIDE = 10_007
DEFAULT_SAMPLING = SamplingConfig()  # DPM-Solver++(2M), 20 steps, trailing, guidance w = 1.25, seed 0
# Latents per decoder pass. At 256×256 a pass over 64 images holds GBs of activations and cost 171–267 ms an image
# against 130–132 ms in passes of 16 (the compact decoder, 2 CPU cores: benchmarks/bench_codec_batch.py); each
# image is decoded on its own either way, so the pictures do not depend on it (bit-identical, measured).
DECODE_BATCH = 16
GUIDANCE_FILE = "guidance.json"  # a run's own guidance scale, chosen on its training images (evaluation/sweep.py)


def add_sampling_args(parser: argparse.ArgumentParser, defaults: SamplingConfig = DEFAULT_SAMPLING) -> None:
    """The command-line options of a `SamplingConfig`, the same names in every script (--cfg-scale → cfg_scale).
    The script adds --seed itself (in evaluate.py it seeds more than sampling)."""
    g = parser.add_argument_group("sampling")
    g.add_argument("--sampler", default=defaults.sampler,
                   help=f"one of {', '.join(SAMPLERS)}; see docs/samplers_guide.md")
    g.add_argument("--steps", type=int, default=defaults.steps, help="sampling steps (network calls: see the guide)")
    g.add_argument("--spacing", choices=SPACINGS, default=defaults.spacing, help="time grid of the steps")
    g.add_argument("--eta", type=float, default=defaults.eta, help="DDIM's η (0 = deterministic, 1 = DDPM-like)")
    g.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance w (1 = none, 0 = unconditional); default: the run's own, chosen "
                        f"after its training (RUN/{GUIDANCE_FILE}), else {defaults.cfg_scale:g}")
    g.add_argument("--cfg-rescale", type=float, default=defaults.cfg_rescale,
                   help="guidance rescale φ ∈ [0, 1] (0.7 tames large w)")
    g.add_argument("--ag-scale", type=float, default=None,
                   help="autoguidance w_a (1 = none): also push away from the run's guide, its own weights at a "
                        "quarter of its training (RUN/guide.safetensors; Karras et al. 2024); default: the run's own, "
                        f"chosen after its training ({GUIDANCE_FILE}), else {defaults.ag_scale:g}")


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    """The options `add_sampling_args` added → a validated SamplingConfig (--cfg-scale and --ag-scale already
    resolved: numbers)."""
    return SamplingConfig(sampler=args.sampler, steps=args.steps, spacing=args.spacing, eta=args.eta,
                          cfg_scale=args.cfg_scale, cfg_rescale=args.cfg_rescale, ag_scale=args.ag_scale,
                          seed=args.seed)


def guidance_choice(run_dir) -> dict | None:
    """RUN/guidance.json: the guidance scales chosen after the run's training and how (None if there is none);
    a choice written before autoguidance has no ag_scale: 1, none."""
    path = Path(run_dir) / GUIDANCE_FILE
    if not path.is_file():
        return None
    try:
        choice = json.loads(path.read_text())
        choice["cfg_scale"] = float(choice["cfg_scale"])
        choice["ag_scale"] = float(choice.get("ag_scale", 1.0))
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path} is unreadable ({e}); delete it to sample with the default w = "
                       f"{DEFAULT_SAMPLING.cfg_scale:g}, or pass --cfg-scale") from None
    return choice


def run_guidance(run_dir) -> tuple[float, float, str]:
    """The guidance a run samples with when --cfg-scale or --ag-scale is not given → (w, w_a, where they come
    from): the scales chosen at the end of its training (guidance_choice), else SamplingConfig's defaults."""
    choice = guidance_choice(run_dir)
    if choice is None:
        return DEFAULT_SAMPLING.cfg_scale, DEFAULT_SAMPLING.ag_scale, "the default"
    return choice["cfg_scale"], choice["ag_scale"], f"chosen on the training images ({Path(run_dir) / GUIDANCE_FILE})"


def fill_run_guidance(args: argparse.Namespace) -> str | None:
    """--cfg-scale / --ag-scale left out → the run's own (run_guidance), written into args → the line that says so
    (None if both were given)."""
    if args.cfg_scale is not None and args.ag_scale is not None:
        return None
    w, w_a, source = run_guidance(args.run)
    args.cfg_scale = w if args.cfg_scale is None else args.cfg_scale
    args.ag_scale = w_a if args.ag_scale is None else args.ag_scale
    return (f"guidance w = {args.cfg_scale:g}, autoguidance w_a = {args.ag_scale:g}: {source} where not given "
            "(--cfg-scale W, --ag-scale W_A to change them)")


def initial_noise(seed: int, user: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """x_T for image `index` of `user`: unit Gaussian from a generator seeded by (seed, user, index)."""
    g = torch.Generator().manual_seed(seed * SEED_STRIDE + user * USER_STRIDE + index)
    return torch.randn(shape, generator=g)


@torch.no_grad()
def decode_latents(vae, z0: torch.Tensor, scaling_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
    """Diffusion latents (B, c, h, w) → images (B, C, H, W) in [−1, 1] (float32): undo the scale and shift, decode, at
    most DECODE_BATCH latents per decoder pass, in bf16 where the hardware has it."""
    z = unscale_latents(z0, scaling_factor, shift_factor)
    with inference_autocast(z.device):
        x = torch.cat([vae.decode_latent(part).float() for part in z.split(DECODE_BATCH)])
    return x.clamp(-1, 1).contiguous()  # (B, C, H, W) as a PNG read back is, whatever the decoder's layout


def row_conditions(run_config: dict, users: list[int], prompts: list[str] | None, tokenizer
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """What each row of pictures is conditioned on → (cond (U, ...), the null condition (1, ...)): user ids and
    the null id; or, for a text-conditioned run (cond_type "text"), the prompts' token ids and the empty caption's."""
    num_classes = run_config["num_classes"]
    if run_config["backbone_config"].get("cond_type") == "text":
        if prompts is None or tokenizer is None or len(prompts) != len(users):
            raise ValueError("this run is text-conditioned: give one prompt per row (sample.py --prompt \"…\") and "
                             "the run's tokenizer")
        return tokenizer(prompts), tokenizer("")  # (U, L), (1, L)
    if prompts is not None:
        raise ValueError("this run is conditioned on user ids, not text; leave out --prompt and choose --users")
    for u in users:
        if not 0 <= u < num_classes:
            raise ValueError(f"user id {u} is outside 0…{num_classes - 1} (this run has {num_classes} users)")
    return torch.tensor(users), torch.tensor([num_classes])  # (U,), (1,)


@torch.no_grad()
def generate(model, vae, run_config: dict, users: list[int], n_per_user: int,
             sampling: SamplingConfig = DEFAULT_SAMPLING, *, prompts: list[str] | None = None, tokenizer=None,
             batch_size: int = 64, device="cpu", progress: bool = False, trajectory_users: int = 0, on_batch=None,
             guide=None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Images for each (user, index) → (images (U, n, C, H, W) in [−1, 1], trajectory or None).

    prompts: for a text-conditioned run, the caption of each row (with the run's tokenizer); `users` then only
    numbers the rows' noise, as user ids do for a user-conditioned run. guide: the run's guide network
    (tinyldm.loading.load_guide), needed where sampling.ag_scale ≠ 1 (autoguidance).

    trajectory_users: with k > 0, the decoded x̂0 predictions after every step for the first image of each of the
    first k users, a list over steps of (k, C, H, W): the teaching view of denoising. Only those are decoded (at
    256×256 a decode costs ~0.1 s, so all 31 users × 20 steps would be a minute).
    on_batch: called as `on_batch([(user, index), …], images (B, C, H, W))` as soon as a batch is decoded, so that a
    caller can write images as they are made (sample.py); an exception it raises stops the sampling.
    """
    c, h, w = run_config["latent_shape"]
    scale, shift = run_config["scaling_factor"], run_config.get("shift_factor", 0.0)  # older runs have no shift: 0
    sched, prediction = Schedule.from_config(run_config["schedule"]), run_config["prediction"]
    cond_rows, null_cond = row_conditions(run_config, users, prompts, tokenizer)
    row_of = {u: r for r, u in enumerate(users)}
    jobs = [(u, i) for u in users for i in range(n_per_user)]
    traced = set(users[:trajectory_users])  # whose first image's x̂0 is kept after every step
    images, first_x0s = [], {}
    bar = tqdm(total=len(jobs), desc="sampling", unit="img", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        share_cores()  # fewer threads while other processes use cores (tinyldm/threads.py)
        batch = jobs[start:start + batch_size]
        noise = torch.stack([initial_noise(sampling.seed, u, i, (c, h, w)) for u, i in batch]).to(device)
        y = cond_rows[[row_of[u] for u, _ in batch]].to(device)  # (B,) user ids or (B, L) caption ids
        steps_x0 = []
        callback = (lambda i, t, x, x0_hat, acc=steps_x0: acc.append(x0_hat)) if traced else None
        with inference_autocast(device):  # the network in bf16 where the hardware has it, as it trained; the
            # sampler's own arithmetic stays float32 (a bf16 output meets float32 x)
            z = sample(model, noise, sched, sampling, prediction=prediction, cond=y, null_cond=null_cond.to(device),
                       guide=guide, generator=torch.Generator().manual_seed(sampling.seed + start), callback=callback)
        images.append(decode_latents(vae, z, scale, shift).cpu())
        if on_batch is not None:
            on_batch(batch, images[-1])
        for k, (u, i) in enumerate(batch):
            if u in traced and i == 0:
                first_x0s[u] = torch.stack([x0[k] for x0 in steps_x0])  # (S, c, h, w)
        bar.update(len(batch))
    bar.close()
    x = torch.cat(images).reshape(len(users), n_per_user, *images[0].shape[1:])  # (U, n, C, H, W)
    traj = None
    if traced:
        stacked = torch.stack([first_x0s[u] for u in users if u in traced], dim=1)  # (S, k, c, h, w)
        decoded = decode_latents(vae, stacked.flatten(0, 1).to(device), scale, shift).cpu()  # (S·k, C, H, W)
        traj = list(decoded.unflatten(0, stacked.shape[:2]))  # S × (k, C, H, W)
    return x, traj
