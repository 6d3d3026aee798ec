"""Generate spectrograms of chosen users from a train_ldm.py run (EMA weights, classifier-free guidance).

    python sample.py --run runs/ldm-dit-tiny                          # 4 images of every user, DPM-Solver++(2M)
    python sample.py --run runs/ldm-dit-tiny --users 0,5,7 --n-per-user 16 --cfg-scale 8
    python sample.py --run runs/ldm-dit-tiny --sampler heun --steps 30 --trajectory

Writes OUT/<user>/<index>.png (the layout of a data folder, so the evaluation can read it), OUT/grid.png
(rows = users) and, with --trajectory, OUT/trajectory.png: the decoded x̂0 prediction after each step for
the first image of every user (rows = users, columns = steps) — how denoising builds the picture.
"""

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from tinyldm.generate import add_sampling_args, generate, sampling_config
from tinyldm.models.loading import load_autoencoder, load_ldm
from tinyldm.options import SEED_RANGE, at_least, check_ranges, device_name
from tinyldm.runs import check_writable, resolve_device, run_cli
from tinyldm.viz import image_grid, to_uint8

# What each numeric option allows (tinyldm.options), checked once at start-up. The sampling options (--steps, --eta,
# --cfg-scale, --cfg-rescale) are checked by SamplingConfig, the first thing run() builds.
OPTION_RANGES = {
    "n_per_user": at_least(1),
    "batch_size": at_least(1),
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
    p.add_argument("--trajectory", action="store_true", help="also write the denoising trajectory strip")
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


def run(args: argparse.Namespace) -> Path:
    sampling = sampling_config(args)
    device = resolve_device(args.device)
    model, cfg = load_ldm(args.run, device, args.weights)
    vae, _ = load_autoencoder(cfg["vae"], device)
    users = parse_users(args.users, cfg["classes"])
    out = args.out or Path(args.run) / "samples" / f"{sampling.sampler}_{sampling.steps}"
    check_writable(out)

    # Sample.
    images, trajectory = generate(model, vae, cfg, users, args.n_per_user, sampling, batch_size=args.batch_size,
                                  device=device, progress=True, trajectory=args.trajectory)

    # Write one PNG per image, the grid and the trajectory.
    names = [cfg["classes"][u] for u in users]
    for name, row in zip(names, images):
        (out / name).mkdir(exist_ok=True)
        for i, img in enumerate(to_uint8(row)):
            Image.fromarray(img if cfg["channels"] == 3 else img[..., 0]).save(out / name / f"{i:03d}.png")
    image_grid(list(images), row_labels=names).save(out / "grid.png")
    if trajectory is not None:
        image_grid(list(torch.stack(trajectory, dim=1)), row_labels=names).save(out / "trajectory.png")
    print(f"wrote {len(users) * args.n_per_user} images of {len(users)} users to {out}/<user>/NNN.png; "
          f"grid {out / 'grid.png'}" + (f"; trajectory {out / 'trajectory.png'}" if trajectory else ""))
    return out


def main(argv=None) -> int:
    return run_cli("sample.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
