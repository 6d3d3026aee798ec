"""DiT (ε), DiT (flow) and MMDiT (flow) at equal training time on the same latents: what does the SD3/Flux recipe buy?

    python benchmarks/compare_mmdit.py --vae runs/vae-tiny-long --minutes 12 --out runs/compare-mmdit

1. Train each model with train_ldm.py and --max-minutes (the training clock: grids and checkpoints are not
   counted), everything else equal: the autoencoder and its latents, the tiny preset (per-token width 128),
   global batch 32, AdamW at a constant 5e-4 after 50 warm-up steps, EMA 0.999, condition dropout 0.1, seed 0.
   The ε model samples t uniformly; the flow models use logit-normal t and shift 1 (train_ldm's flow defaults).
   A finished run is reused, an interrupted one resumed.
2. Evaluate each run with the evaluation's user-ID classifier (one classifier, shared by the three):
   condition accuracy and Fréchet distance of 8 images per user at DPM-Solver++(2M), 20 steps, guidance 4; a
   guidance sweep; and samplers × steps (Euler, Heun, DPM-Solver++(2M) × 1/2/3/5/10/20/50 steps) at guidance 4.
3. "Steps needed" = the fewest steps of a sampler whose Fréchet distance is within 10 % of that sampler's value
   at 50 steps and whose condition accuracy is no more than 3 points below it.

Writes OUT/report.md (the tables), OUT/report.json, OUT/fd_vs_nfe.png, OUT/acc_vs_nfe.png, and each run's own
evaluation under OUT/<run>/eval/. Run it on an otherwise idle machine: the budget is wall-clock training time.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for train_ldm.py
import train_ldm  # noqa: E402
from tinyldm.evaluation import evaluate_run  # noqa: E402
from tinyldm.loading import load_ldm  # noqa: E402
from tinyldm.runs import RunError, atomic_write_json, read_config, read_log  # noqa: E402
from tinyldm.viz import plot_curves  # noqa: E402

MODELS = {  # run folder name → (label, train_ldm.py arguments that differ)
    "dit-eps": ("DiT (ε)", ["--backbone", "dit", "--prediction", "eps"]),
    "dit-flow": ("DiT (flow)", ["--backbone", "dit", "--prediction", "flow"]),
    "mmdit-flow": ("MMDiT (flow)", ["--backbone", "mmdit", "--prediction", "flow"]),
}
COMMON = ["--preset", "tiny", "--batch-size", "8", "--grad-accum", "4", "--lr", "5e-4", "--warmup", "50",
          "--ema-decay", "0.999", "--cond-dropout", "0.1", "--max-steps", "1000000", "--ckpt-every", "500",
          "--sample-every", "1000000", "--seed", "0"]
SAMPLERS = ("euler", "heun", "dpmpp_2m")
STEPS = (1, 2, 3, 5, 10, 20, 50)
GUIDANCE = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def train(run: Path, vae: Path, minutes: float, extra: list[str]) -> None:
    """Train (or resume, or reuse) one run until its training clock shows `minutes`."""
    if (run / "checkpoints").is_dir():
        rc = train_ldm.main(["--resume", str(run), "--max-minutes", str(minutes)])
    else:
        rc = train_ldm.main([*extra, *COMMON, "--vae", str(vae), "--out", str(run), "--max-minutes", str(minutes)])
    if rc:
        raise RunError(f"training {run} failed (exit code {rc}); see its output above")


def training_record(run: Path) -> dict:
    """Steps, training seconds and throughput from the run's log."""
    log, cfg = read_log(run), read_config(run)
    batch = cfg["args"]["batch_size"] * cfg["args"]["grad_accum"]
    return {"steps": log[-1]["step"], "train_seconds": log[-1]["train_s"], "final_loss_mean_100":
            sum(r["loss"] for r in log[-100:]) / len(log[-100:]),
            "latents_per_s": log[-1]["step"] * batch / log[-1]["train_s"]}


def steps_needed(points: list[dict], sampler: str, fd_slack: float = 0.10, acc_slack: float = 0.03) -> int | None:
    """Fewest steps of `sampler` within fd_slack (relative) and acc_slack (absolute) of its largest-steps point."""
    mine = sorted((p for p in points if p["sampler"] == sampler), key=lambda p: p["steps"])
    if not mine:
        return None
    ref = mine[-1]
    for p in mine:
        if p["fd"] <= (1 + fd_slack) * ref["fd"] and p["top1"] >= ref["top1"] - acc_slack:
            return p["steps"]
    return ref["steps"]


def markdown(results: dict, minutes: float, vae: Path, n: int) -> str:
    first = next(iter(results.values()))["report"]
    lines = [f"# DiT (ε) vs DiT (flow) vs MMDiT (flow) at {minutes:g} min of CPU training each", "",
             f"Autoencoder `{vae}` (reconstructions: PSNR {first['autoencoder']['psnr']:.2f} dB, classifier "
             f"accuracy {first['autoencoder']['condition_top1']:.1%}, FD {first['autoencoder']['fd']:.1f}). "
             f"Classifier ceiling (real validation) {first['classifier']['val_acc']:.1%}; chance "
             f"{1 / len(first['classes']):.1%}; FD of real validation vs real train images (the floor) "
             f"{first['generated']['fd_real_floor']:.1f}.", "",
             "| model | params | steps trained | latents/s | top-1 | top-5 | FD | precision | recall | TSTR |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.values():
        g, t = r["report"]["generated"], r["training"]
        lines.append(f"| {r['label']} | {r['params']:,} | {t['steps']} | {t['latents_per_s']:.0f} | "
                     f"{g['condition_accuracy']['top1']:.1%} | {g['condition_accuracy']['top5']:.1%} | {g['fd']:.1f} | "
                     f"{g['precision']:.2f} | {g['recall']:.2f} | {g['tstr']:.1%} |")
    lines += ["", f"{n} images per user, DPM-Solver++(2M), 20 steps, guidance 4, EMA weights.", "",
              f"## Guidance (DPM-Solver++(2M), 20 steps, {n} images per user): top-1 / FD", "",
              "| model | " + " | ".join(f"w = {w:g}" for w in GUIDANCE) + " |",
              "| --- |" + " --- |" * len(GUIDANCE)]
    for r in results.values():
        pts = {p["cfg_scale"]: p for p in r["report"]["sweep"]["guidance"]}
        lines.append(f"| {r['label']} | " + " | ".join(f"{pts[w]['top1']:.1%} / {pts[w]['fd']:.1f}" for w in GUIDANCE)
                     + " |")
    lines += ["", f"## Samplers × steps (guidance 4, {n} images per user): top-1 / FD; last column: steps needed", "",
              "| model | sampler | " + " | ".join(f"{n} steps" for n in STEPS) + " | needed |",
              "| --- | --- |" + " --- |" * (len(STEPS) + 1)]
    for r in results.values():
        pts = {(p["sampler"], p["steps"]): p for p in r["report"]["sweep"]["samplers"]}
        for s in SAMPLERS:
            cells = " | ".join(f"{pts[s, n]['top1']:.1%} / {pts[s, n]['fd']:.1f}" for n in STEPS)
            lines.append(f"| {r['label']} | {s} | {cells} | {r['steps_needed'][s]} |")
    lines += ["", "Steps needed: fewest steps within 10 % of the sampler's 50-step FD and 3 points of its 50-step "
              "accuracy. Heun costs 2·steps − 1 network evaluations, the others one per step.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", type=Path, help="the stage-1 run all three models diffuse in (required to train)")
    p.add_argument("--minutes", type=float, default=12.0, help="training minutes per model (default 12)")
    p.add_argument("--out", type=Path, default=Path("runs/compare-mmdit"))
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    p.add_argument("--n-per-user", type=int, default=8, help="images per user for every measured point")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--report-only", action="store_true", help="rewrite report.md and the plots from report.json")
    args = p.parse_args(argv)
    if args.report_only:
        write_report(args.out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vae is None:
        raise SystemExit("--vae RUN_DIR is required: the stage-1 run all three models diffuse in")
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    results = {}
    for name in names:
        label, extra = MODELS[name]
        run = args.out / name
        print(f"== {label}: train {args.minutes:g} min ==", flush=True)
        train(run, args.vae, args.minutes, extra)
        print(f"== {label}: evaluate ==", flush=True)
        t0 = time.time()
        report = evaluate_run(run, run / "eval", n_per_user=args.n_per_user, classifier_dir=args.out / "classifier",
                              sweep=True, guidance_scales=GUIDANCE, samplers=SAMPLERS, steps_list=STEPS,
                              sweep_n_per_user=args.n_per_user)
        model, _ = load_ldm(run, "cpu", "ema")
        results[name] = {"label": label, "training": training_record(run), "report": report,
                         "params": sum(q.numel() for q in model.parameters() if q.requires_grad),
                         "steps_needed": {s: steps_needed(report["sweep"]["samplers"], s) for s in SAMPLERS},
                         "eval_seconds": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "report.json", {"minutes": args.minutes, "vae": str(args.vae), "results": results,
                                                 "n_per_user": args.n_per_user})
    write_report(args.out)
    return 0


def write_report(out: Path) -> None:
    """OUT/report.md and the two plots from OUT/report.json (also: --report-only)."""
    saved = json.loads((out / "report.json").read_text())
    results = saved["results"]
    (out / "report.md").write_text(markdown(results, saved["minutes"], saved["vae"], saved.get("n_per_user", 8)))
    for key, title, path in (("fd", "Frechet distance vs network evaluations (guidance 4)", "fd_vs_nfe.png"),
                             ("top1", "condition accuracy vs network evaluations (guidance 4)", "acc_vs_nfe.png")):
        series = {}
        for r in results.values():
            for s in SAMPLERS:
                pts = sorted((q for q in r["report"]["sweep"]["samplers"] if q["sampler"] == s), key=lambda q: q["nfe"])
                series[f"{r['label'].replace('ε', 'eps')} {s}"] = ([q["nfe"] for q in pts], [q[key] for q in pts])
        plot_curves(series, out / path, title=title, xlabel="network evaluations (log scale)",
                    log_y=key == "fd", log_x=True, size=(900, 480))
    print((out / "report.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
