"""Time to quality: how many seconds of training a stage needs to reach the evaluation's targets (a speedrun).

A training change is judged by the seconds it takes to reach a quality target, not by its loss curve. This
benchmark trains a stage in chunks — the real script, stopped with `--stop-after` and continued with `--resume`
(which is exact, tested) — and after every chunk measures the run as the evaluation does:

  vae   stage 1: validation PSNR and the user-ID classifier's top-1 on the reconstructions (stage 2 can not make
        a user more recognisable than the autoencoder reconstructs them)
  ldm   stage 2 on a fixed autoencoder: condition top-1 and Fréchet distance of ≥ 240 generated images
        (EMA weights, `--sampler/--steps/--cfg-scale`), against the classifier ceiling and the real floor

x-axis: the run's own training clock (`train_s` in log.jsonl: optimizer steps only — no validation, pictures,
checkpoints or measurements). Writes OUT/ttq.json (one row per point), OUT/ttq.png (the curves with the targets),
and prints a table and the seconds to target. Extra arguments after `--` go to train_vae.py / train_ldm.py.

    python benchmarks/time_to_quality.py vae --out runs/ttq/vae-base --every 100 --steps 800 -- --lr 1e-3
    python benchmarks/time_to_quality.py ldm --vae runs/ttq/vae-base --out runs/ttq/ldm-base --every 300 \\
        --steps 3000 -- --backbone dit
    python benchmarks/time_to_quality.py plot runs/ttq/vae-* --out docs/images/ttq_vae.png   # curves side by side
    python benchmarks/time_to_quality.py vae --out runs/ttq/vae-compact --every 250 --steps 1000 \
        --classifier-dir runs/ttq/classifier-256 -- --preset compact          # the users' 256×256, f = 8 setting

Targets (issue 12): stage 1 reconstructions recognised ≥ 95 % of the classifier ceiling; stage 2 top-1 ≥ 90 % of the
ceiling and FD ≤ 4 × the real-vs-real floor. Timings depend on the machine (state `lscpu`); compare runs made
in the same hour on the same machine, and prefer ratios. The benchmark is not a test.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import cpu_name  # noqa: E402

import train_ldm  # noqa: E402
import train_vae  # noqa: E402
from tinyldm.diffusion import SamplingConfig  # noqa: E402
from tinyldm.evaluation.pipeline import (  # noqa: E402
    build_reference,
    images_per_user,
    real_floor,
    reconstruction_metrics,
)
from tinyldm.evaluation.sweep import measure_point, sample_users  # noqa: E402
from tinyldm.loading import load_autoencoder, load_ldm  # noqa: E402
from tinyldm.runs import read_config, read_log  # noqa: E402
from tinyldm.viz import plot_curves  # noqa: E402

VAE_TARGET = 0.95  # reconstructions' top-1 ≥ this × ceiling
LDM_TARGET_ACC, LDM_TARGET_FD = 0.90, 4.0  # top-1 ≥ 0.9 × ceiling, FD ≤ 4 × floor


def reference_for(vae_dir: Path, classifier_dir: Path):
    """The evaluation's real reference on the autoencoder's own split (the classifier trained once, then reused)."""
    cfg = read_config(vae_dir)
    d = cfg["data"]
    return build_reference(d["root"], d["image_size"], d["channels"], cfg["args"]["val_fraction"], cfg["args"]["seed"],
                           classifier_dir)


def measure_vae(run: Path, ref) -> dict:
    vae, _ = load_autoencoder(run)
    with torch.no_grad():
        m = reconstruction_metrics(vae, ref)
    return {"psnr": m["psnr"], "top1": m["condition_top1"], "fd": m["fd"]}


def measure_ldm(run: Path, ref, sampling: SamplingConfig, n_per_user: int | None) -> dict:
    model, cfg = load_ldm(run)
    vae, _ = load_autoencoder(cfg["vae"])
    x, y, _ = sample_users(model, vae, cfg, images_per_user(len(ref.classes), n_per_user), sampling)
    point = measure_point(ref, x, y, sampling.seed)
    return {"top1": point["top1"], "fd": point["fd"], "fd_floor": real_floor(ref, y, sampling.seed)}


def reached(row: dict, stage: str, ceiling: float) -> bool:
    if stage == "vae":
        return row["top1"] >= VAE_TARGET * ceiling
    return row["top1"] >= LDM_TARGET_ACC * ceiling and row["fd"] <= LDM_TARGET_FD * row["fd_floor"]


def run_curve(args, extra: list[str]) -> dict:
    """Train in chunks of --every steps up to --steps, measuring after each chunk."""
    script = train_vae if args.stage == "vae" else train_ldm
    base = ["--out", str(args.out), "--max-steps", str(args.steps), "--ckpt-every", str(10**9), *extra]
    if args.stage == "ldm":
        base += ["--vae", str(args.vae), "--sample-every", str(10**9)]
    vae_dir = args.out if args.stage == "vae" else args.vae
    sampling = SamplingConfig(sampler=args.sampler, steps=args.sample_steps, cfg_scale=args.cfg_scale)
    ref, rows = None, []
    for stop in range(args.every, args.steps + args.every, args.every):
        stop = min(stop, args.steps)
        argv = (base if stop == args.every else ["--resume", str(args.out)]) + (
            ["--stop-after", str(stop)] if stop < args.steps else [])
        if script.main(argv) != 0:
            raise SystemExit(f"{args.stage} training failed at chunk ending {stop}")
        ref = ref or reference_for(vae_dir, args.classifier_dir)
        train_s = [r for r in read_log(args.out) if "train_s" in r][-1]["train_s"]
        m = measure_vae(args.out, ref) if args.stage == "vae" else measure_ldm(args.out, ref, sampling,
                                                                                   args.n_per_user)
        row = {"step": stop, "train_s": train_s, **m}
        row["reached"] = reached(row, args.stage, ref.ceiling)
        rows.append(row)
        print("ttq " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
              flush=True)
        result = summary(args, extra, ref.ceiling, rows, sampling)
        (args.out / "ttq.json").write_text(json.dumps(result, indent=1))  # after every point: a stopped curve keeps
        if row["reached"] and args.until_target:
            break
    plot([result], args.out / "ttq.png")
    print(table([result]))
    return result


def summary(args, extra: list[str], ceiling: float, rows: list[dict], sampling: SamplingConfig) -> dict:
    first = next((r for r in rows if r["reached"]), None)
    return {"stage": args.stage, "run": str(args.out), "extra_args": extra, "ceiling": ceiling,
            "cpu": cpu_name(), "threads": torch.get_num_threads(), "rows": rows,
            "seconds_to_target": first["train_s"] if first else None,
            "steps_to_target": first["step"] if first else None,
            "sampling": vars(sampling) if args.stage == "ldm" else None}


def table(results: list[dict]) -> str:
    lines = ["| run | extra args | steps to target | seconds to target | last: step, s | last: top-1 | last: FD |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        last = r["rows"][-1]
        lines.append(f"| {Path(r['run']).name} | `{' '.join(r['extra_args'])}` | {r['steps_to_target'] or '—'} | "
                     f"{r['seconds_to_target'] or '—'} | {last['step']}, {last['train_s']:.0f} | "
                     f"{100 * last['top1']:.1f} % | {last['fd']:.1f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """top-1 / ceiling against training seconds, one line per run (and PSNR or FD/floor in a second file)."""
    acc = {Path(r["run"]).name: ([p["train_s"] for p in r["rows"]], [p["top1"] / r["ceiling"] for p in r["rows"]])
           for r in results}
    stage = results[0]["stage"]
    plot_curves(acc, path, title=f"{stage}: top-1 / classifier ceiling against training seconds",
                xlabel="training seconds", log_y=False)
    key = "psnr" if stage == "vae" else "fd"
    other = {Path(r["run"]).name: ([p["train_s"] for p in r["rows"]],
                                   [p[key] if key == "psnr" else p["fd"] / p["fd_floor"] for p in r["rows"]])
             for r in results}
    plot_curves(other, path.with_name(path.stem + f"_{key}.png"), xlabel="training seconds", log_y=key != "psnr",
                title=f"{stage}: {'PSNR (dB)' if key == 'psnr' else 'FD / real floor'} against training seconds")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["vae", "ldm", "plot"])
    p.add_argument("runs", nargs="*", type=Path, help="plot: run folders holding ttq.json")
    p.add_argument("--out", type=Path, required=True, help="run folder (vae/ldm) or PNG path (plot)")
    p.add_argument("--vae", type=Path, help="ldm: the fixed autoencoder run")
    p.add_argument("--every", type=int, default=100, help="measure every N optimizer steps")
    p.add_argument("--steps", type=int, default=1000, help="train this many steps in all")
    p.add_argument("--until-target", action="store_true", help="stop at the first point that reaches the target")
    p.add_argument("--classifier-dir", type=Path, default=Path("runs/ttq/classifier"),
                   help="the evaluation classifier, trained once and reused by every curve")
    p.add_argument("--n-per-user", type=int, default=None,
                   help="ldm: generated images per user per point (default: the evaluation's, ≥ 240 in all)")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    args = p.parse_args(argv)
    if args.stage == "plot":
        missing = [str(r) for r in args.runs if not (r / "ttq.json").is_file()]
        if missing or not args.runs:
            p.error(f"plot needs run folders written by this benchmark (with ttq.json); not: {missing or 'none given'}")
        results = [json.loads((r / "ttq.json").read_text()) for r in args.runs]
        plot(results, args.out)
        print(table(results))
        return 0
    if args.stage == "ldm" and args.vae is None:
        p.error("ldm needs --vae RUN (a finished train_vae.py run)")
    run_curve(args, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
