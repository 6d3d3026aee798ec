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
from tinyldm.runs import check_writable, resolve_device, run_cli
from tinyldm.viz import image_grid, to_uint8


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a train_ldm.py run folder")
    p.add_argument("--users", default="all", help="comma-separated user ids (0-based, as in config.json 'classes') "
                                                   "or 'all'")
    p.add_argument("--n-per-user", type=int, default=4, help="images per user")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA (default) or raw weights")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--trajectory", action="store_true", help="also write the denoising trajectory strip")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/samples/<sampler>_<steps>)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images")
    add_sampling_args(p)
    return p.parse_args(argv)


def parse_users(spec: str, num_classes: int) -> list[int]:
    if spec == "all":
        return list(range(num_classes))
    try:
        users = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--users {spec!r}: give comma-separated integers such as 0,5,7, or 'all'") from None
    bad = [u for u in users if not 0 <= u < num_classes]
    if bad or not users:
        raise ValueError(f"--users {spec!r}: ids must lie in 0…{num_classes - 1} (this run has {num_classes} users)")
    return users


def run(args: argparse.Namespace) -> Path:
    sampling = sampling_config(args)
    if args.n_per_user < 1:
        raise ValueError(f"--n-per-user {args.n_per_user}: at least 1 image per user")
    device = resolve_device(args.device)
    model, cfg = load_ldm(args.run, device, args.weights)
    vae, _ = load_autoencoder(cfg["vae"], device)
    users = parse_users(args.users, cfg["num_classes"])
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
