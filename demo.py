"""`make demo`: the main job end to end on the built-in simulated micro-Doppler set, sized for 2 CPU cores.

  1. data     generate the preset's simulated set once under data/: 31 people walking (tiny: 40 images each,
              64×64; compact, the users' setting: 150 each, 256×256; jet), or with --family activities 6
              activities (150 recordings each, wide 5:3, viridis)
  2. vae      train the preset's AutoencoderKL with train_vae.py's recipe: tiny f = 2 (64×64×3 → 32×32×4),
              compact f = 8 (256×256×3 → 32×32×4, the users' design)
  3. ldm      train a tiny class-conditional DiT (or --backbone unet) on the frozen latents with train_ldm.py's
              recipe of the preset (rectified flow, CFG dropout 0.1), then choose its guidance on the training
              images: classifier-free w, then autoguidance w_a by its own early weights (RUN/guidance.json)
  4. sample   draw 4 images of every one of the users (sample.py's defaults: the run's guidance), the
              trajectory of 4 users and a real-vs-generated comparison
  5. eval     the user-ID classifier (trained once, in stage 3, then cached), then ≥ 240 generated images
              measured (8 per user for 31 users) at 3 sampling seeds: the first seed's numbers and the spread
              over the three

Every stage is the same script a user runs by hand with its defaults: the demo chooses only where things go (and,
if asked, fewer or more steps). The recipes were found by timing each lever to the evaluation's targets
(benchmarks/time_to_quality.py, docs/speedrun.md). Rerunning the demo starts each stage afresh, replacing the
demo's earlier runs and samples in its --out (the scripts' --overwrite; the simulated data, the latent cache and the
evaluation classifier are reused).

    python demo.py [--preset tiny|compact] [--family walking|activities] [--out runs/demo] [--backbone dit|unet]
                   [--vae-steps N] [--ldm-steps N] [--vae RUN]

`make demo` is the tiny preset (64×64); `make demo-256` the compact one (the users' 256×256 setting).
"""

import argparse
import sys
import time
from pathlib import Path

import sample
import train_ldm
import train_vae
from tinyldm.data import default_data_dir
from tinyldm.evaluation import evaluate_run
from tinyldm.evaluation.report import headline_lines


def default_out(preset: str, family: str) -> Path:
    """runs/demo, runs/demo-activities, runs/demo-256, runs/demo-256-activities."""
    return Path("runs/" + "-".join(["demo"] + (["256"] if preset == "compact" else []) +
                                   ([family] if family != "walking" else [])))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "compact"], default="tiny",
                   help="tiny: 64×64 images, f = 2 (the quick run); compact: the users' setting, 31 × 150 images at "
                        "256×256, f = 8 → 32×32×4 latents")
    p.add_argument("--family", choices=["walking", "activities"], default="walking",
                   help="the built-in data family: 31 people walking (the users' kind of data) or 6 activities "
                        "(another radar, colour map and image shape: what the recipe was not tuned on)")
    p.add_argument("--out", type=Path, default=None,
                   help="where every output of the demo goes (default runs/demo, runs/demo-activities, runs/demo-256, "
                        "runs/demo-256-activities)")
    p.add_argument("--vae-steps", type=int, default=None, help="optimizer steps of stage 1 (default: the recipe's)")
    p.add_argument("--ldm-steps", type=int, default=None, help="optimizer steps of stage 2 (default: the recipe's)")
    p.add_argument("--backbone", choices=["dit", "unet"], default="dit", help="the stage-2 denoiser")
    p.add_argument("--vae", type=Path, default=None,
                   help="reuse this finished autoencoder run (e.g. runs/demo/vae) instead of training stage 1")
    args = p.parse_args(argv)
    args.out = args.out or default_out(args.preset, args.family)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    times, t = {}, time.time()

    def stage(name: str, rc: int = 0) -> None:
        nonlocal t
        times[name] = time.time() - t
        t = time.time()
        print(f"== {name} done in {times[name]:.0f} s ==", flush=True)
        if rc:
            sys.exit(rc)

    data = default_data_dir(args.preset, family=args.family)
    stage("data")

    vae_dir = args.vae or args.out / "vae"
    if args.vae is None:
        stage("vae", train_vae.main(["--preset", args.preset, "--data", str(data), "--out", str(vae_dir),
                                     "--overwrite", *(["--max-steps", str(args.vae_steps)] if args.vae_steps else [])]))

    ldm_dir = args.out / f"ldm-{args.backbone}"
    stage("ldm", train_ldm.main(["--preset", args.preset, "--backbone", args.backbone, "--vae", str(vae_dir),
                                 "--out", str(ldm_dir), "--overwrite",
                                 *(["--max-steps", str(args.ldm_steps)] if args.ldm_steps else [])]))

    samples_dir = args.out / "samples"
    stage("sample", sample.main(["--run", str(ldm_dir), "--users", "all", "--n-per-user", "4",
                                 "--out", str(samples_dir), "--trajectory", "--overwrite"]))

    report = evaluate_run(ldm_dir, args.out / "eval")  # as sample.py samples: the run's own guidance
    stage("eval")

    print("\n== demo finished ==")
    print("  " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {sum(times.values()):.0f} s")
    print(f"  data set               {data}")
    print(f"  autoencoder run        {vae_dir}  (reconstructions: recon_latest.png; losses: loss_curves.png)")
    print(f"  diffusion run          {ldm_dir}  (progress grids: samples/; losses: loss_curves.png)")
    print(f"  generated images       {samples_dir}/<user>/NNN.png")
    print(f"  grid, users in blocks  {samples_dir / 'grid.png'}")
    print(f"  real vs generated      {samples_dir / 'real_vs_generated.png'}")
    print(f"  denoising trajectory   {samples_dir / 'trajectory.png'}")
    print(f"  evaluation report      {args.out / 'eval' / 'report.md'}")
    print("  headline (seed 0; mean and range over " + f"{len(report['seeds']['seeds'])} seeds):")
    for line in headline_lines(report):
        if not line.startswith("report"):  # its path is the line above
            print("    " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
