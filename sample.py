"""Generate spectrograms of chosen users from a train_ldm.py run (EMA weights, classifier-free guidance).

    python sample.py --run runs/ldm-dit-tiny                          # 4 images of every user, DPM-Solver++(2M)
    python sample.py --run runs/ldm-dit-tiny --users 0,5,7 --n-per-user 16 --cfg-scale 8
    python sample.py --run runs/ldm-dit-tiny --sampler heun --steps 30 --trajectory

Writes OUT/<user>/<index>.png (the layout of a data folder, so the evaluation can read it) and three pictures:
  OUT/grid.png                 every user's images, a row per user with its name, in up to 4 blocks of 8 users
                               (images larger than 64 px as 64 px thumbnails: 256×256 ones are 4× smaller)
  OUT/real_vs_generated.png    the first ≤ 8 users (≤ 4 for images larger than 128 px, shown at full size):
                               --compare-real N real training images | N generated ones
                               (skipped, with a notice, when the run's data folder cannot be read here)
  OUT/trajectory.png           with --trajectory: the decoded x̂0 prediction of the first image of the first
                               --trajectory-users users at ≤ 8 evenly spaced steps (the last included), enlarged
                               to ≥ 128 px, columns headed by step and time t — how denoising builds the picture.
"""

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from tinyldm.data import DataError, UserImageFolder
from tinyldm.diffusion import Schedule
from tinyldm.generate import add_sampling_args, generate, sampling_config
from tinyldm.loading import data_split, load_ldm, load_run_vae
from tinyldm.options import SEED_RANGE, at_least, check_ranges, device_name
from tinyldm.runs import check_writable, resolve_device, run_cli
from tinyldm.viz import real_vs_generated, thumbnails, to_uint8, trajectory_picture, user_blocks

# Users (the first ones asked for) in real_vs_generated.png, which shows images at full size: 8, or 4 for images
# larger than LARGE px (8 rows of 256×256 images would be over 2,000 px tall).
COMPARE_USERS, COMPARE_USERS_LARGE, LARGE = 8, 4, 128
THUMBNAIL = 64  # grid.png shows images larger than this as thumbnails of this size (the PNGs beside it are full size)

# What each numeric option allows (tinyldm.options), checked once at start-up. The sampling options (--steps, --eta,
# --cfg-scale, --cfg-rescale) are checked by SamplingConfig, the first thing run() builds.
OPTION_RANGES = {
    "n_per_user": at_least(1),
    "batch_size": at_least(1),
    "trajectory_users": at_least(1),
    "compare_real": at_least(0, "0 = off"),
    "seed": SEED_RANGE,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a train_ldm.py run folder")
    p.add_argument("--users", default="all",
                   help="'all', or comma-separated users by name (the data folders the run was trained on, "
                        "config.json 'classes') or by 0-based id, e.g. user_01,alice,7. A token that exactly equals "
                        "a name is that user; any other must be an id. A user given twice is written once")
    p.add_argument("--n-per-user", type=int, default=4, help="images per user")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA (default) or raw weights")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--trajectory", action="store_true",
                   help="also write OUT/trajectory.png: x̂0 after ≤ 8 evenly spaced steps (the last included), "
                        "enlarged to ≥ 128 px, for the first --trajectory-users users")
    p.add_argument("--trajectory-users", type=int, default=4, metavar="N",
                   help="users (the first N of --users) shown in trajectory.png")
    p.add_argument("--compare-real", type=int, default=4, metavar="N",
                   help="write OUT/real_vs_generated.png: for the first ≤ 8 users, N real images from the run's "
                        "training data beside N generated ones; 0 = off. Skipped, with a notice, when the data "
                        "folder (config.json 'data') cannot be read from here")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/samples/<sampler>_<steps>)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1 … or mps")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images")
    add_sampling_args(p)
    args = p.parse_args(argv)
    check_ranges(p, args, OPTION_RANGES)
    return args


def parse_users(spec: str, classes: list[str]) -> list[int]:
    """--users → class ids in the order first given. A token that exactly equals a class name (config.json
    "classes") is that user; any other token must be an integer id in 0…len(classes) − 1. A user asked for more than
    once is written once, with a notice."""
    if spec == "all":
        return list(range(len(classes)))
    some = ", ".join(classes[:3]) + (", …" if len(classes) > 3 else "")
    users = []
    for token in (s.strip() for s in spec.split(",")):
        if not token:
            continue
        if token in classes:
            users.append(classes.index(token))
            continue
        try:
            user = int(token)
        except ValueError:
            raise ValueError(f"--users {spec!r}: no user named {token!r} in this run; its {len(classes)} users are "
                             f"{some} (or ids 0…{len(classes) - 1})") from None
        if not 0 <= user < len(classes):
            raise ValueError(f"--users {spec!r}: id {user} is no user here; ids must lie in 0…{len(classes) - 1} "
                             f"(this run has {len(classes)} users: {some})")
        users.append(user)
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


def run(args: argparse.Namespace) -> Path:
    sampling = sampling_config(args)
    device = resolve_device(args.device)
    model, cfg = load_ldm(args.run, device, args.weights)
    vae = load_run_vae(cfg, device)
    users = parse_users(args.users, cfg["classes"])
    out = args.out or Path(args.run) / "samples" / f"{sampling.sampler}_{sampling.steps}"
    check_writable(out)

    # Sample.
    images, trajectory = generate(model, vae, cfg, users, args.n_per_user, sampling, batch_size=args.batch_size,
                                  device=device, progress=True, trajectory=args.trajectory)

    # Write one PNG per image and the grid.
    names = [cfg["classes"][u] for u in users]
    for name, row in zip(names, images):
        (out / name).mkdir(exist_ok=True)
        for i, img in enumerate(to_uint8(row)):
            Image.fromarray(img if cfg["channels"] == 3 else img[..., 0]).save(out / name / f"{i:03d}.png")
    user_blocks([thumbnails(row, THUMBNAIL) for row in images], names).save(out / "grid.png")
    pictures = ["grid.png"]

    # The trajectory, its columns headed by the time t of each step: `sample` builds its time grid ts from --steps
    # and --spacing and reports step i at ts[i].
    if trajectory is not None:
        ts = Schedule.from_config(cfg["schedule"]).timesteps(sampling.steps, sampling.spacing)  # (N,)
        trajectory_picture(trajectory, names, ts.tolist(), users=args.trajectory_users).save(out / "trajectory.png")
        pictures.append("trajectory.png")

    # Real beside generated, for the first users.
    if args.compare_real > 0:
        shown = names[:COMPARE_USERS if images[0].shape[-1] <= LARGE else COMPARE_USERS_LARGE]
        real = real_images(cfg, shown, args.compare_real)
        if real is not None:
            generated = [row[:args.compare_real] for row in images[:len(shown)]]  # each (≤ N, C, H, W)
            real_vs_generated(real, generated, shown).save(out / "real_vs_generated.png")
            pictures.append("real_vs_generated.png")
    print(f"wrote {len(users) * args.n_per_user} images of {len(users)} users to {out}/<user>/NNN.png and "
          f"{', '.join(pictures)} to {out}")
    return out


def main(argv=None) -> int:
    return run_cli("sample.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
