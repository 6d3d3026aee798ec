"""Do generated spectrograms follow their captions' numbers? The walking speed read back from the torso line.

A text-conditioned run (`train_ldm.py --cond text`) is asked for images of captions it never saw:
  seen people     the validation split of its own data: new recordings of people it trained on
  unseen people   a folder of people held out of training, e.g. every short (< 1.65 m) fast (> 1.5 m/s) walker,
                  so their (height, speed) combinations were never in a training caption
For each caption, `--n` images are generated, and the torso line's speed (tinyldm/evaluation/doppler.py) is read
back from each, as it is from the real image of that caption. The real images' own error against their captions
(the caption states the walking speed v; the torso line shows v cos(aspect), and the aspect is not in the caption)
is the floor. Writes OUT/captions.json (per caption) and OUT/summary.json, OUT/speeds.png (caption speed against
measured speed, real and generated), and prints the table.

    python -m tinyldm.data.microdoppler --out data/people --users 300 --per-user 6 --size 64 --seed 1
    python benchmarks/caption_following.py split data/people --out data/people-split   # train/ and unseen/
    python train_ldm.py --cond text --vae runs/demo/vae --data data/people-split/train --out runs/text-dit
    python benchmarks/caption_following.py measure --run runs/text-dit --unseen data/people-split/unseen \\
        --out runs/text-dit/captions

The benchmark is not a test; state the CPU (`lscpu`) with any time.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinyldm.data import UserImageFolder  # noqa: E402
from tinyldm.data.captions import CAPTIONS, captions_of, read_captions  # noqa: E402
from tinyldm.diffusion import SamplingConfig  # noqa: E402
from tinyldm.evaluation.doppler import torso_speed  # noqa: E402
from tinyldm.generate import generate  # noqa: E402
from tinyldm.loading import data_split, load_ldm, load_run_vae, load_tokenizer  # noqa: E402
from tinyldm.viz import to_uint8  # noqa: E402


def caption_speed(caption: str) -> float:
    """The walking speed a simulator caption states ("… walking at 1.31 m/s, …")."""
    return float(caption.split(" walking at ")[1].split(" m/s")[0])


def caption_height(caption: str) -> float:
    return float(caption.split("a ", 1)[1].split(" m person")[0])


def split_people(data: Path, out: Path, short: float, fast: float) -> None:
    """data's user folders → out/train and out/unseen (people shorter than `short` m and faster than `fast` m/s),
    as symbolic links, each with its share of captions.json."""
    meta = json.loads((data / "metadata.json").read_text())
    captions = read_captions(data)
    for part in ("train", "unseen"):
        (out / part).mkdir(parents=True, exist_ok=True)
    for user, person in meta["people"].items():
        part = "unseen" if person["height"] < short and person["speed"] > fast else "train"
        link = out / part / user
        if not link.exists():
            os.symlink((data / user).resolve(), link)
    for part in ("train", "unseen"):
        users = {p.name for p in (out / part).iterdir() if p.is_dir()}
        mine = {name: text for name, text in captions.items() if name.split("/")[0] in users}
        (out / part / CAPTIONS).write_text(json.dumps(mine, indent=0, sort_keys=True))
        print(f"{out / part}: {len(users)} people, {len(mine)} images")


def read_set(root: Path, run: dict, split: str, limit: int, seed: int) -> list[tuple[Path, str]]:
    """Up to `limit` (image path, caption) pairs of `root`'s split, read as the run reads its data."""
    ds = UserImageFolder(root, split=split, **data_split(run))
    paths = sorted({p for p, _, _ in ds.samples})
    rng = np.random.default_rng(seed)
    paths = [paths[i] for i in sorted(rng.choice(len(paths), min(limit, len(paths)), replace=False))]
    return list(zip(paths, captions_of(root, paths)))


def measure(args) -> int:
    model, run = load_ldm(args.run)
    vae, tokenizer = load_run_vae(run), load_tokenizer(args.run, run)
    if tokenizer is None:
        raise SystemExit(f"{args.run} is not text-conditioned (train it with --cond text)")
    sets = {"seen people": read_set(Path(run["data"]), run, "val", args.captions, 0)}
    if args.unseen:
        sets["unseen people"] = read_set(args.unseen, run, "train", args.captions, 1)
    rows, summary = [], {}
    for name, pairs in sets.items():
        prompts = [text for _, text in pairs]
        sampling = SamplingConfig(cfg_scale=args.cfg_scale, seed=args.seed, steps=args.steps)
        x, _ = generate(model, vae, run, list(range(len(prompts))), args.n, sampling, prompts=prompts,
                        tokenizer=tokenizer, progress=True)  # (P, n, C, H, W)
        for (path, text), images in zip(pairs, x):
            real = torso_speed(np.asarray(Image.open(path).convert("RGB").resize(images.shape[-2:][::-1])))
            made = [torso_speed(img) for img in to_uint8(images)]  # images (n, C, H, W) → n speeds
            rows.append({"set": name, "caption": text, "file": str(path), "caption_speed": caption_speed(text),
                         "real_speed": real, "generated_speeds": made})
        mine = [r for r in rows if r["set"] == name]
        v = np.array([r["caption_speed"] for r in mine])
        real = np.array([r["real_speed"] for r in mine])
        made = np.array([r["generated_speeds"] for r in mine])  # (P, n)
        summary[name] = {"captions": len(mine), "images_per_caption": args.n,
                         "real_mae": float(np.abs(real - v).mean()), "real_bias": float((real - v).mean()),
                         "generated_mae": float(np.abs(made - v[:, None]).mean()),
                         "generated_bias": float((made - v[:, None]).mean()),
                         "real_corr": float(np.corrcoef(v, real)[0, 1]),
                         "generated_corr": float(np.corrcoef(v, made.mean(1))[0, 1]),
                         "real_slope": float(np.polyfit(v, real, 1)[0]),  # measured ≈ slope · caption + b
                         "generated_slope": float(np.polyfit(v, made.mean(1), 1)[0]),
                         "generated_spread": float(made.std(1).mean())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "captions.json").write_text(json.dumps(rows, indent=1))
    (args.out / "summary.json").write_text(json.dumps({"run": str(args.run), "cfg_scale": args.cfg_scale,
                                                       "steps": args.steps, "sets": summary}, indent=1))
    plot(rows, args.out / "speeds.png")
    print("| set | captions | real: MAE, bias (m/s) | generated: MAE, bias (m/s) | corr. real / generated | "
          "spread within a caption |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['captions']} × {s['images_per_caption']} | {s['real_mae']:.3f}, {s['real_bias']:+.3f} "
              f"| {s['generated_mae']:.3f}, {s['generated_bias']:+.3f} | {s['real_corr']:.2f} / "
              f"{s['generated_corr']:.2f} | {s['generated_spread']:.3f} |")
    print(f"wrote {args.out}/summary.json, captions.json, speeds.png")
    return 0


def plot(rows: list[dict], path: Path, size: int = 360) -> None:
    """Caption speed (x) against measured speed (y) per set, drawn with PIL: real images blue, generated orange
    (the mean over a caption's images), the diagonal grey."""
    sets = sorted({r["set"] for r in rows})
    v = [r["caption_speed"] for r in rows]
    lo, hi = min(v) - 0.2, max(v) + 0.2
    img = Image.new("RGB", (size * len(sets), size + 20), "white")
    d = ImageDraw.Draw(img)
    for k, name in enumerate(sets):
        ox = k * size
        px = lambda s, ox=ox: ox + 30 + (s - lo) / (hi - lo) * (size - 40)  # noqa: E731
        py = lambda s: size - 10 - (s - lo) / (hi - lo) * (size - 40)  # noqa: E731
        d.rectangle([px(lo), py(hi), px(hi), py(lo)], outline="black")
        d.line([px(lo), py(lo), px(hi), py(hi)], fill=(160, 160, 160))
        d.text((ox + 34, 4), f"{name}: x caption, y torso line (m/s), {lo:.1f}-{hi:.1f}", fill="black")
        for r in (r for r in rows if r["set"] == name):
            for y, colour in ((r["real_speed"], (31, 119, 180)), (np.mean(r["generated_speeds"]), (255, 127, 14))):
                x, yy = px(r["caption_speed"]), py(min(max(y, lo), hi))
                d.ellipse([x - 2, yy - 2, x + 2, yy + 2], fill=colour)
    d.text((8, size + 4), "blue: the caption's real image; orange: generated (mean of n); grey: measured = caption",
           fill="black")
    img.save(path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="a simulator folder → train/ and unseen/ (held-out height-speed corner)")
    s.add_argument("data", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--short", type=float, default=1.65, help="unseen: people shorter than this (m) …")
    s.add_argument("--fast", type=float, default=1.5, help="… and faster than this (m/s)")
    m = sub.add_parser("measure", help="generate for captions and read the speeds back")
    m.add_argument("--run", type=Path, required=True, help="a train_ldm.py --cond text run")
    m.add_argument("--unseen", type=Path, default=None, help="a folder of held-out people with captions.json")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--captions", type=int, default=60, help="captions per set")
    m.add_argument("--n", type=int, default=4, help="generated images per caption")
    m.add_argument("--cfg-scale", type=float, default=2.0)
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "split":
        split_people(args.data, args.out, args.short, args.fast)
        return 0
    return measure(args)


if __name__ == "__main__":
    raise SystemExit(main())
