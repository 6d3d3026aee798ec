"""Generate spectrograms of chosen users from a train_ldm.py run (EMA weights, classifier-free and autoguidance).

    python sample.py --run runs/ldm-dit-tiny                          # 4 images of every user, DPM-Solver++(2M)
    python sample.py --run runs/ldm-dit-tiny --users 0,5,7 --n-per-user 16 --cfg-scale 8
    python sample.py --run runs/ldm-dit-tiny --sampler heun --steps 30 --trajectory
    python sample.py --run runs/text-dit --prompt "a 1.60 m person walking at 1.75 m/s, 0.95 s gait cycle, wide arm \
        swing" --n-per-prompt 8 --cfg-scale 4      # a run trained with --cond text: a row per --prompt

Writes OUT/<user>/<index>.png (the layout of a data folder, so the evaluation can read it), each as soon as its batch
is made, and OUT/samples.json (the settings); then three pictures:
  OUT/grid.png                 every user's images, a row per user with its name, in up to 4 blocks of 8 users
                               (images larger than 64 px as 64 px thumbnails: 256×256 ones are 4× smaller)
  OUT/real_vs_generated.png    the first ≤ 8 users (≤ 4 for images larger than 128 px, shown at full size):
                               --compare-real N real training images | N generated ones
                               (skipped, with a notice, when the run's data folder cannot be read here)
  OUT/trajectory.png           with --trajectory: the decoded x̂0 prediction of the first image of the first
                               --trajectory-users users at ≤ 8 evenly spaced steps (the last included), enlarged
                               to ≥ 128 px, columns headed by step and time t — how denoising builds the picture.

Or text → image with Stable Diffusion 1.x / 2.x from a diffusers folder, run by tinyldm's own parts
(tinyldm/interop/stable_diffusion.py); the same --seed and scheduler give diffusers' images (on the CPU):

    python sample.py --pipeline ~/sd15 --prompt "a photo of an astronaut riding a horse" --out out/horse \\
        --scheduler DPMSolverMultistepScheduler --steps 25 --negative-prompt "blurry" --n-per-prompt 2

writes OUT/prompt_<k>/<index>.png (prompt k in the order given), OUT/samples.json and OUT/grid.png (a row per
prompt). SD 1.x folders ship PNDMScheduler (PLMS), which tinyldm reproduces; --scheduler picks another, on the
folder's settings (as diffusers' Scheduler.from_config).

Nothing a user made is replaced: an --out inside the run's data folder, or one holding folders of files sample.py
did not write, is refused; earlier samples of other settings are replaced only with --overwrite. Ctrl-C or SIGTERM
finishes the batch being made, says how many images are written and exits 130.
"""

import argparse
import json
import math
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from tinyldm.data import DataError, UserImageFolder
from tinyldm.diffusion import Schedule
from tinyldm.generate import DEFAULT_SAMPLING, add_sampling_args, fill_run_guidance, generate, sampling_config
from tinyldm.interop.diffusers_grids import DEFAULTS as SCHEDULERS
from tinyldm.interop.stable_diffusion import (
    latent_shape,
    load_stable_diffusion,
    scheduler_grid,
    text_to_image,
    with_scheduler,
)
from tinyldm.loading import data_split, load_guide, load_ldm, load_run_vae, load_tokenizer
from tinyldm.options import SEED_RANGE, at_least, check_ranges, device_name
from tinyldm.runs import (
    RunError,
    StopRequest,
    atomic_save_image,
    atomic_write_json,
    check_out_not_in_data,
    check_writable,
    file_sha256,
    lock_run,
    resolve_device,
    run_cli,
    unlock_run,
)
from tinyldm.threads import share_cores
from tinyldm.viz import real_vs_generated, thumbnails, to_uint8, trajectory_picture, user_blocks

# Users (the first ones asked for) in real_vs_generated.png, which shows images at full size: 8, or 4 for images
# larger than LARGE px (8 rows of 256×256 images would be over 2,000 px tall).
COMPARE_USERS, COMPARE_USERS_LARGE, LARGE = 8, 4, 128
THUMBNAIL = 64  # grid.png shows images larger than this as thumbnails of this size (the PNGs beside it are full size)
SETTINGS = "samples.json"  # in OUT: what was sampled, and how; a rerun with the same settings may write there again
PICTURES = ("grid.png", "trajectory.png", "real_vs_generated.png")
PROMPT_THUMBNAIL, PROMPT_LABEL = 128, 40  # --pipeline's grid.png: thumbnails of ≤ 128 px, prompts cut to 40 characters
# The options that only one source reads; one given with the other source is refused (a value other than the
# parser's default counts as given). The defaults that differ: tinyldm's SamplingConfig for a run; diffusers'
# StableDiffusionPipeline.__call__ for a pipeline, in batches of 4 (SD's 512 px images, two UNet passes each).
# --prompt and --n-per-prompt go with both: a pipeline, and a run trained with --cond text.
RUN_ONLY = ("users", "n_per_user", "weights", "trajectory", "trajectory_users", "compare_real", "sampler", "spacing",
            "ag_scale")
PIPELINE_ONLY = ("negative_prompt", "scheduler", "height", "width")
RUN_DEFAULTS = {"batch_size": 32, "sampler": DEFAULT_SAMPLING.sampler, "spacing": DEFAULT_SAMPLING.spacing,
                "steps": DEFAULT_SAMPLING.steps}  # and --cfg-scale, --ag-scale: the run's own (run_guidance), in run()
PIPELINE_DEFAULTS = {"batch_size": 4, "steps": 50, "cfg_scale": 7.5, "n_per_prompt": 1}

# What each numeric option allows (tinyldm.options), checked once at start-up. The sampling options (--steps, --eta,
# --cfg-scale, --cfg-rescale) are checked by SamplingConfig, the first thing run() builds.
OPTION_RANGES = {
    "n_per_user": at_least(1),
    "batch_size": at_least(1),
    "trajectory_users": at_least(1),
    "compare_real": at_least(0, "0 = off"),
    "seed": SEED_RANGE,
    "n_per_prompt": at_least(1),
    "height": at_least(1),
    "width": at_least(1),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a train_ldm.py run folder")
    source.add_argument("--pipeline", type=Path, metavar="DIR",
                        help="a diffusers StableDiffusionPipeline folder (SD 1.x, 2.x: model_index.json, unet/, vae/, "
                             "text_encoder/, tokenizer/, scheduler/), sampled by tinyldm's own parts as diffusers "
                             "samples it; needs --prompt and --out")
    p.add_argument("--users", default="all",
                   help="'all', or comma-separated users by name (the data folders the run was trained on, "
                        "config.json 'classes') or by 0-based id, e.g. user_01,alice,7; id:7 is always an id. A "
                        "value that could mean two users (a folder named 1 and id 1; a name holding a comma, "
                        "smith,john, beside users smith and john) is refused: write id:N. A user given twice is "
                        "written once")
    p.add_argument("--n-per-user", type=int, default=4, help="images per user")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA (default) or raw weights")
    p.add_argument("--batch-size", type=int,
                   help=f"images per batch (default {RUN_DEFAULTS['batch_size']}; {PIPELINE_DEFAULTS['batch_size']} "
                        "with --pipeline)")
    p.add_argument("--trajectory", action="store_true",
                   help="also write OUT/trajectory.png: x̂0 after ≤ 8 evenly spaced steps (the last included), "
                        "enlarged to ≥ 128 px, for the first --trajectory-users users")
    p.add_argument("--trajectory-users", type=int, default=4, metavar="N",
                   help="users (the first N of --users) shown in trajectory.png")
    p.add_argument("--compare-real", type=int, default=4, metavar="N",
                   help="write OUT/real_vs_generated.png: for the first ≤ 8 users, N real images from the run's "
                        "training data beside N generated ones; 0 = off. Skipped, with a notice, when the data "
                        "folder (config.json 'data') cannot be read from here")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default with --run: RUN/samples/<sampler>_<steps>; --pipeline needs one)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace earlier sample.py output of other settings in --out (its user folders and pictures); "
                        "without it such an --out is refused. Folders sample.py did not write are never replaced")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1 … or mps")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images")
    text = p.add_argument_group("text prompts")
    text.add_argument("--prompt", action="append", metavar="TEXT",
                      help="what to draw: a row of images each; give it once per prompt (with --pipeline, or a run "
                           "trained with train_ldm.py --cond text, instead of --users)")
    text.add_argument("--negative-prompt", action="append", metavar="TEXT",
                      help="what guidance steers away from (the unconditional side of w): once for all prompts, or "
                           "once per --prompt; default \"\" (as diffusers)")
    text.add_argument("--n-per-prompt", "--n", type=int, default=None, metavar="N",
                      help="images per prompt (default 1 with --pipeline, --n-per-user with a text run)")
    sd = p.add_argument_group("Stable Diffusion (--pipeline)", (
        "Sampling defaults are diffusers' (the folder's scheduler, {steps} steps, --cfg-scale {cfg_scale}); guidance\n"
        "acts only for w > 1, as in diffusers. --sampler and --spacing are tinyldm's grids and go with --run.\n"
        "--seed seeds one generator for all latents, as diffusers' generator= does.").format(**PIPELINE_DEFAULTS))
    sd.add_argument("--scheduler", choices=tuple(SCHEDULERS), metavar="NAME",
                    help="the diffusers scheduler to sample with, on the folder's settings (as Scheduler.from_config): "
                         f"{', '.join(SCHEDULERS)}; default: the folder's own (SD 1.x's: PNDMScheduler)")
    sd.add_argument("--height", type=int, help="image height in pixels (default: the UNet's sample_size × the VAE's "
                                               "downsampling, 512 for SD 1.5)")
    sd.add_argument("--width", type=int, help="image width in pixels (default as --height)")
    add_sampling_args(p)  # --cfg-scale's default None: the pipeline's (PIPELINE_DEFAULTS) or the run's (run())
    p.set_defaults(**dict.fromkeys(RUN_DEFAULTS))  # each source's own, set by check_source
    args = p.parse_args(argv)
    check_ranges(p, args, OPTION_RANGES)
    check_source(p, args)
    return args


def check_source(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--run or --pipeline, each with its own options (another one given is a usage error); then the sampling
    defaults of the one chosen."""
    others, other_flag, flag = (RUN_ONLY, "--run", "--pipeline") if args.pipeline else (PIPELINE_ONLY, "--pipeline",
                                                                                          "--run")
    stray = ["--" + name.replace("_", "-") for name in others if getattr(args, name) != p.get_default(name)]
    if stray:
        p.error(f"{', '.join(stray)} {'goes' if len(stray) == 1 else 'go'} with {other_flag}, not {flag}")
    if args.pipeline and not args.prompt:
        p.error("--pipeline needs --prompt \"…\" (once per prompt)")
    if args.pipeline and args.out is None:
        p.error("--pipeline needs --out, the folder for the images (nothing is written into the model folder)")
    for name, value in (PIPELINE_DEFAULTS if args.pipeline else RUN_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def parse_users(spec: str, classes: list[str]) -> list[int]:
    """--users → class ids in the order first given. Tokens are split at commas; each is a user's name (config.json
    "classes"; a name holding commas, e.g. smith,john, written whole), a 0-based id, or id:N (always an id). A token
    that could mean two users (the name "1" and id 1; smith,john and the users smith and john) is refused, naming
    both: id:N then says which. A user asked for more than once is written once, with a notice."""
    if spec == "all":
        return list(range(len(classes)))
    some = ", ".join(classes[:3]) + (", …" if len(classes) > 3 else "")
    tokens = [s.strip() for s in spec.split(",")]
    users, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        # Every reading of the tokens from i on: (user, tokens used).
        readings = {(k, name.count(",") + 1) for k, name in enumerate(classes)
                    if ",".join(tokens[i:i + name.count(",") + 1]) == name}
        explicit, number = token.startswith("id:"), token.removeprefix("id:")
        if number.isascii() and number.lstrip("-").isdigit():
            user = int(number)
            if 0 <= user < len(classes):
                readings = {(user, 1)} if explicit else readings | {(user, 1)}
            elif explicit or not readings:
                raise ValueError(f"--users {spec!r}: id {user} is no user here; ids must lie in 0…{len(classes) - 1} "
                                 f"(this run has {len(classes)} users: {some})")
        elif explicit:
            raise ValueError(f"--users {spec!r}: {token!r} is no id; write id:N with N in 0…{len(classes) - 1}")
        if not token and not readings:
            i += 1
            continue
        if not readings:
            raise ValueError(f"--users {spec!r}: no user named {token!r} in this run; its {len(classes)} users are "
                             f"{some} (or ids 0…{len(classes) - 1})")
        if len({user for user, _ in readings}) > 1:
            options = " or ".join(f"{classes[u]!r} (id:{u})" for u, _ in sorted(readings))
            raise ValueError(f"--users {spec!r} is ambiguous at {','.join(tokens[i:i + max(n for _, n in readings)])!r}"
                             f": it could mean {options}; write id:N for the user you mean")
        user, used = readings.pop()
        users.append(user)
        i += used
    if not users:
        raise ValueError(f"--users {spec!r} names no user; give names such as {classes[0]}, ids such as 0, or 'all'")
    unique = list(dict.fromkeys(users))  # first appearances, in order
    if len(unique) < len(users):
        repeats = ", ".join(f"{classes[u]} {users.count(u)} times" for u in unique if users.count(u) > 1)
        print(f"notice: --users asks for {repeats}; writing each user once")
    return unique


def real_images(cfg: dict, names: list[str], n: int) -> list[torch.Tensor] | None:
    """The first n training images of each named user, read as train_ldm.py read them (the run's data folder at its
    size, channels and split) → a list of (≤ n, C, H, W) in [−1, 1]; None, after one notice line, when that data
    cannot be read here (moved, another machine, other users): the sampling never fails for it."""
    root = cfg.get("data")
    try:
        if root is None:
            raise DataError("the run's config.json names no data folder")
        if not Path(root).exists():
            raise DataError(f"the run's data folder {root} is not here")
        ds = UserImageFolder(root, split="train", **data_split(cfg))
        missing = [name for name in names if name not in ds.class_to_idx]
        if missing:
            raise DataError(f"{root} has no user {missing[0]!r} now")
    except (DataError, OSError) as e:
        print(f"notice: no real_vs_generated.png: {e}; set 'data' in the run's config.json to its training data, "
              "or pass --compare-real 0")
        return None
    index = {name: [i for i, (_, k, _) in enumerate(ds.samples) if k == ds.class_to_idx[name]][:n] for name in names}
    return [torch.stack([ds[i][0] for i in index[name]]) for name in names]  # each (≤ n, C, H, W)


class Stopped(Exception):
    """Raised after a batch's images are written once Ctrl-C or SIGTERM asked to stop."""


def earlier_output(out: Path, settings: dict) -> tuple[list[Path], str]:
    """What is in --out already → (earlier sample.py output of other settings, to replace only with --overwrite;
    why it differs). The same settings give [] (a rerun writes the same images again: after a stop, all of them).
    Folders of files that sample.py did not write (a data set?) are a RunError, with or without --overwrite."""
    if (out / SETTINGS).is_file():
        try:
            before = json.loads((out / SETTINGS).read_text())
        except (OSError, json.JSONDecodeError):
            before = None
        if before == settings:
            return [], ""
        before = before if isinstance(before, dict) else {}
        folders = before.get("folders", before.get("users", []))  # --pipeline's prompt_<k>, or --run's users
        folders = [name for name in folders if isinstance(name, str) and Path(name).name == name]
        differ = [key for key in settings if before.get(key) != settings[key]]
        paths = [out / name for name in (*folders, *PICTURES, SETTINGS)]
        return [path for path in paths if path.exists()], f"other {', '.join(differ) or 'settings'}"
    folders = [d for d in sorted(out.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if (out / "grid.png").is_file():  # written by sample.py before it wrote samples.json: its NNN.png folders
        mine = [d for d in folders if all(f.suffix == ".png" and f.stem.isdigit() for f in d.iterdir())]
        return mine + [out / name for name in PICTURES if (out / name).exists()], "unknown settings (no samples.json)"
    foreign = [d.name for d in folders if any(not f.name.startswith(".") for f in d.iterdir())]
    if foreign:
        raise RunError(f"--out {out} holds folders that sample.py did not write ({', '.join(foreign[:3])}"
                       f"{', …' if len(foreign) > 3 else ''}): a data set? choose an empty or new --out")
    return [], ""


def claim_out(out: Path, data: str | None, settings: dict, overwrite: bool) -> None:
    """Make --out (never inside the run's data) and take its lock, so a second sample.py into it is refused; replace
    earlier output of other settings only with --overwrite; record the settings in OUT/samples.json."""
    if data is not None:
        check_out_not_in_data(out, data)
    check_writable(out)
    lock_run(out, "sample.py")
    try:
        earlier, why = earlier_output(out, settings)
        if earlier and not overwrite:
            raise RunError(f"--out {out} holds earlier samples of {why}; pass --overwrite to replace them, or "
                           "choose another --out")
    except RunError:
        unlock_run(out)  # refused: the folder is left as it was
        raise
    for path in earlier:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    atomic_write_json(out / SETTINGS, settings)


def rows_of(args: argparse.Namespace, cfg: dict, tokenizer) -> tuple[list[int], list[str], list[str] | None, int]:
    """What the rows of pictures are → (row ids, folder names, prompts or None, images per row): the --users of a
    run conditioned on user ids, or the --prompt texts of a run trained with --cond text (folders prompt_<k>)."""
    if tokenizer is None:
        if args.prompt or args.n_per_prompt is not None:
            raise ValueError(f"{args.run} is conditioned on user ids, not text: choose --users (and --n-per-user) "
                             "instead of --prompt")
        users = parse_users(args.users, cfg["classes"])
        return users, [cfg["classes"][u] for u in users], None, args.n_per_user
    if not args.prompt or args.users != "all":
        raise ValueError(f"{args.run} was trained on captions (--cond text): give --prompt \"…\" once per row "
                         "instead of --users, e.g. one of its training captions (config.json, grid.prompts)")
    k = range(len(args.prompt))
    return list(k), [f"prompt_{i}" for i in k], args.prompt, args.n_per_prompt or args.n_per_user


def prompt_labels(prompts: list[str]) -> list[str]:
    """Row labels of a grid: each prompt, cut to PROMPT_LABEL characters."""
    return [p if len(p) <= PROMPT_LABEL else p[:PROMPT_LABEL - 3] + "..." for p in prompts]


def run(args: argparse.Namespace) -> int:
    note = fill_run_guidance(args)  # --cfg-scale / --ag-scale not given: the run's own
    if note:
        print(note)
    sampling = sampling_config(args)
    device = resolve_device(args.device)
    model, cfg = load_ldm(args.run, device, args.weights)
    guide = load_guide(args.run, device) if sampling.ag_scale != 1.0 else None
    vae, tokenizer = load_run_vae(cfg, device), load_tokenizer(args.run, cfg)
    users, names, prompts, n = rows_of(args, cfg, tokenizer)
    out = args.out or Path(args.run) / "samples" / f"{sampling.sampler}_{sampling.steps}"
    settings = {"run": str(Path(args.run).resolve()), "weights": args.weights,
                "weights_sha256": file_sha256(Path(args.run) / f"{args.weights}.safetensors"), "users": names,
                "n_per_user": n, "batch_size": args.batch_size, "sampling": asdict(sampling)}
    if prompts is not None:
        settings["prompts"] = prompts
    claim_out(out, cfg.get("data"), settings, args.overwrite)

    # Sample, writing each image as soon as its batch is made (atomically: a kill leaves no cut-short PNG). Ctrl-C or
    # SIGTERM stops after the batch being made.
    total, written, folder = len(users) * n, [], dict(zip(users, names))

    def write_batch(batch: list[tuple[int, int]], x: torch.Tensor) -> None:  # x: (B, C, H, W)
        for (u, i), img in zip(batch, to_uint8(x)):
            (out / folder[u]).mkdir(exist_ok=True)
            image = Image.fromarray(img if cfg["channels"] == 3 else img[..., 0])
            atomic_save_image(out / folder[u] / f"{i:03d}.png", image)
        written.extend(batch)
        if stop.requested:
            raise Stopped

    try:
        with StopRequest() as stop:
            try:
                images, trajectory = generate(model, vae, cfg, users, n, sampling, prompts=prompts,
                                              tokenizer=tokenizer, batch_size=args.batch_size, device=device,
                                              progress=True, on_batch=write_batch, guide=guide,
                                              trajectory_users=args.trajectory_users if args.trajectory else 0)
            except Stopped:
                pass
        if stop.requested:
            print(f"{stop.signal}: stopped: {len(written)} of {total} images written to {out}; run the same command "
                  f"again to write all {total} (it starts afresh)", flush=True)
            return 130
        labels = names if prompts is None else prompt_labels(prompts)
        pictures = save_pictures(out, cfg, labels, images, trajectory, sampling, args, real=prompts is None)
    finally:
        unlock_run(out)
    rows = f"{len(users)} users to {out}/<user>" if prompts is None else f"{len(users)} prompts to {out}/prompt_<k>"
    print(f"wrote {total} images of {rows}/NNN.png and {', '.join(pictures)} to {out}")
    return 0


def save_pictures(out: Path, cfg: dict, names: list[str], images: torch.Tensor, trajectory, sampling, args,
                  real: bool = True) -> list[str]:
    """The grid, the denoising trajectory (with --trajectory) and real beside generated (users' rows, `real`) → the
    file names written."""
    atomic_save_image(out / "grid.png", user_blocks([thumbnails(row, THUMBNAIL) for row in images], names))
    pictures = ["grid.png"]

    # The trajectory, its columns headed by the time t of each step: `sample` builds its time grid ts from --steps
    # and --spacing and reports step i at ts[i].
    if trajectory is not None:
        ts = Schedule.from_config(cfg["schedule"]).timesteps(sampling.steps, sampling.spacing)  # (N,)
        atomic_save_image(out / "trajectory.png",
                          trajectory_picture(trajectory, names[:len(trajectory[0])], ts.tolist(),
                                             users=args.trajectory_users))
        pictures.append("trajectory.png")

    # Real beside generated, for the first users.
    if args.compare_real > 0 and real:
        shown = names[:COMPARE_USERS if images[0].shape[-1] <= LARGE else COMPARE_USERS_LARGE]
        real = real_images(cfg, shown, args.compare_real)
        if real is not None:
            generated = [row[:args.compare_real] for row in images[:len(shown)]]  # each (≤ N, C, H, W)
            atomic_save_image(out / "real_vs_generated.png", real_vs_generated(real, generated, shown))
            pictures.append("real_vs_generated.png")
    return pictures


def run_pipeline(args: argparse.Namespace) -> int:
    """--pipeline: prompts → images by tinyldm's parts of a diffusers Stable Diffusion folder, each written as made."""
    if not math.isfinite(args.cfg_scale):
        raise ValueError(f"--cfg-scale {args.cfg_scale}: must be a finite number")
    sd = load_stable_diffusion(args.pipeline, resolve_device(args.device))
    sd = with_scheduler(sd, args.scheduler) if args.scheduler else sd
    prompts, negative = args.prompt, args.negative_prompt or [""]
    if len(negative) not in (1, len(prompts)):
        raise ValueError(f"{len(negative)} --negative-prompt for {len(prompts)} --prompt; give it once for all "
                         "prompts, or once per prompt")
    negative = negative * len(prompts) if len(negative) == 1 else negative
    shape = latent_shape(sd, args.height, args.width)
    scheduler_grid(sd, args.steps, args.eta)  # a scheduler or setting tinyldm does not reproduce: refused here
    folders = [f"prompt_{k}" for k in range(len(prompts))]
    settings = {"pipeline": str(Path(args.pipeline).resolve()), "prompts": prompts, "negative_prompts": negative,
                "folders": folders, "n_per_prompt": args.n_per_prompt, "batch_size": args.batch_size,
                "scheduler": sd.scheduler, "steps": args.steps, "cfg_scale": args.cfg_scale,
                "cfg_rescale": args.cfg_rescale, "eta": args.eta, "seed": args.seed, "latent_shape": list(shape)}
    out = args.out
    claim_out(out, None, settings, args.overwrite)

    # All latents from one generator seeded with --seed, each prompt's n images in a row: what diffusers'
    # pipe(prompts, num_images_per_prompt=n, generator=torch.Generator().manual_seed(seed)) draws, so a
    # deterministic scheduler gives its images whatever --batch-size. Ctrl-C or SIGTERM stops after the batch.
    jobs = [(k, i) for k in range(len(prompts)) for i in range(args.n_per_prompt)]
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn((len(jobs), *shape), generator=generator)
    images = []
    try:
        with StopRequest() as stop:
            for start in range(0, len(jobs), args.batch_size):
                share_cores()  # fewer threads while other processes use cores (tinyldm/threads.py)
                batch = jobs[start:start + args.batch_size]
                x = text_to_image(sd, [prompts[k] for k, _ in batch], [negative[k] for k, _ in batch],
                                  steps=args.steps, cfg_scale=args.cfg_scale, cfg_rescale=args.cfg_rescale,
                                  eta=args.eta, height=args.height, width=args.width,
                                  noise=noise[start:start + len(batch)], generator=generator, progress=True).cpu()
                for (k, i), img in zip(batch, to_uint8(x * 2 - 1)):  # (B, 3, H, W) in [0, 1] → uint8
                    (out / folders[k]).mkdir(exist_ok=True)
                    atomic_save_image(out / folders[k] / f"{i:03d}.png", Image.fromarray(img))
                images.append(x)
                if stop.requested:
                    print(f"{stop.signal}: stopped: {start + len(batch)} of {len(jobs)} images written to {out}; run "
                          f"the same command again to write all {len(jobs)} (it starts afresh)", flush=True)
                    return 130
        rows = (torch.cat(images) * 2 - 1).reshape(len(prompts), args.n_per_prompt, *images[0].shape[1:])
        labels = prompt_labels(prompts)
        atomic_save_image(out / "grid.png", user_blocks([thumbnails(r, PROMPT_THUMBNAIL) for r in rows], labels))
    finally:
        unlock_run(out)
    print(f"wrote {len(jobs)} images of {len(prompts)} prompts to {out}/prompt_<k>/NNN.png and grid.png to {out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli("sample.py", run_pipeline if args.pipeline else run, args)


if __name__ == "__main__":
    sys.exit(main())
