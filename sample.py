"""Generate spectrograms of chosen users from a train_ldm.py run (EMA weights, classifier-free guidance).

    python sample.py --run runs/ldm-dit-tiny                          # 4 images of every user, DPM-Solver++(2M)
    python sample.py --run runs/ldm-dit-tiny --users 0,5,7 --n-per-user 16 --cfg-scale 8
    python sample.py --run runs/ldm-dit-tiny --sampler heun --steps 30 --trajectory

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

Nothing a user made is replaced: an --out inside the run's data folder, or one holding folders of files sample.py
did not write, is refused; earlier samples of other settings are replaced only with --overwrite. Ctrl-C or SIGTERM
finishes the batch being made, says how many images are written and exits 130.
"""

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from tinyldm.data import DataError, UserImageFolder
from tinyldm.diffusion import Schedule
from tinyldm.generate import add_sampling_args, generate, sampling_config
from tinyldm.loading import data_split, load_ldm, load_run_vae
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
from tinyldm.viz import real_vs_generated, thumbnails, to_uint8, trajectory_picture, user_blocks

# Users (the first ones asked for) in real_vs_generated.png, which shows images at full size: 8, or 4 for images
# larger than LARGE px (8 rows of 256×256 images would be over 2,000 px tall).
COMPARE_USERS, COMPARE_USERS_LARGE, LARGE = 8, 4, 128
THUMBNAIL = 64  # grid.png shows images larger than this as thumbnails of this size (the PNGs beside it are full size)
SETTINGS = "samples.json"  # in OUT: what was sampled, and how; a rerun with the same settings may write there again
PICTURES = ("grid.png", "trajectory.png", "real_vs_generated.png")

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
                        "config.json 'classes') or by 0-based id, e.g. user_01,alice,7; id:7 is always an id. A "
                        "value that could mean two users (a folder named 1 and id 1; a name holding a comma, "
                        "smith,john, beside users smith and john) is refused: write id:N. A user given twice is "
                        "written once")
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace earlier sample.py output of other settings in --out (its user folders and pictures); "
                        "without it such an --out is refused. Folders sample.py did not write are never replaced")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1 … or mps")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images")
    add_sampling_args(p)
    args = p.parse_args(argv)
    check_ranges(p, args, OPTION_RANGES)
    return args


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
        users = [name for name in before.get("users", []) if isinstance(name, str) and Path(name).name == name]
        differ = [key for key in settings if before.get(key) != settings[key]]
        paths = [out / name for name in (*users, *PICTURES, SETTINGS)]
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


def run(args: argparse.Namespace) -> int:
    sampling = sampling_config(args)
    device = resolve_device(args.device)
    model, cfg = load_ldm(args.run, device, args.weights)
    vae = load_run_vae(cfg, device)
    users = parse_users(args.users, cfg["classes"])
    names = [cfg["classes"][u] for u in users]
    out = args.out or Path(args.run) / "samples" / f"{sampling.sampler}_{sampling.steps}"
    settings = {"run": str(Path(args.run).resolve()), "weights": args.weights,
                "weights_sha256": file_sha256(Path(args.run) / f"{args.weights}.safetensors"), "users": names,
                "n_per_user": args.n_per_user, "batch_size": args.batch_size, "sampling": asdict(sampling)}
    claim_out(out, cfg.get("data"), settings, args.overwrite)

    # Sample, writing each image as soon as its batch is made (atomically: a kill leaves no cut-short PNG). Ctrl-C or
    # SIGTERM stops after the batch being made.
    total, written = len(users) * args.n_per_user, []

    def write_batch(batch: list[tuple[int, int]], x: torch.Tensor) -> None:  # x: (B, C, H, W)
        for (u, i), img in zip(batch, to_uint8(x)):
            (out / cfg["classes"][u]).mkdir(exist_ok=True)
            image = Image.fromarray(img if cfg["channels"] == 3 else img[..., 0])
            atomic_save_image(out / cfg["classes"][u] / f"{i:03d}.png", image)
        written.extend(batch)
        if stop.requested:
            raise Stopped

    try:
        with StopRequest() as stop:
            try:
                images, trajectory = generate(model, vae, cfg, users, args.n_per_user, sampling,
                                              batch_size=args.batch_size, device=device, progress=True,
                                              trajectory=args.trajectory, on_batch=write_batch)
            except Stopped:
                pass
        if stop.requested:
            print(f"{stop.signal}: stopped: {len(written)} of {total} images written to {out}; run the same command "
                  f"again to write all {total} (it starts afresh)", flush=True)
            return 130
        pictures = save_pictures(out, cfg, names, images, trajectory, sampling, args)
    finally:
        unlock_run(out)
    print(f"wrote {total} images of {len(users)} users to {out}/<user>/NNN.png and {', '.join(pictures)} to {out}")
    return 0


def save_pictures(out: Path, cfg: dict, names: list[str], images: torch.Tensor, trajectory, sampling, args
                  ) -> list[str]:
    """The grid, the denoising trajectory (with --trajectory) and real beside generated → the file names written."""
    atomic_save_image(out / "grid.png", user_blocks([thumbnails(row, THUMBNAIL) for row in images], names))
    pictures = ["grid.png"]

    # The trajectory, its columns headed by the time t of each step: `sample` builds its time grid ts from --steps
    # and --spacing and reports step i at ts[i].
    if trajectory is not None:
        ts = Schedule.from_config(cfg["schedule"]).timesteps(sampling.steps, sampling.spacing)  # (N,)
        atomic_save_image(out / "trajectory.png",
                          trajectory_picture(trajectory, names, ts.tolist(), users=args.trajectory_users))
        pictures.append("trajectory.png")

    # Real beside generated, for the first users.
    if args.compare_real > 0:
        shown = names[:COMPARE_USERS if images[0].shape[-1] <= LARGE else COMPARE_USERS_LARGE]
        real = real_images(cfg, shown, args.compare_real)
        if real is not None:
            generated = [row[:args.compare_real] for row in images[:len(shown)]]  # each (≤ N, C, H, W)
            atomic_save_image(out / "real_vs_generated.png", real_vs_generated(real, generated, shown))
            pictures.append("real_vs_generated.png")
    return pictures


def main(argv=None) -> int:
    return run_cli("sample.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
