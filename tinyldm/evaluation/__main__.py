"""Does user k's sample look like user k, and how close is it to real data? Measured by a user-ID classifier.

    python evaluate.py --real data/microdoppler-v1-tiny --generated runs/demo/samples     # a folder of PNGs
    python evaluate.py --run runs/demo/ldm-dit                                          # sample, then measure
    python evaluate.py --run runs/demo/ldm-dit --sweep                                  # + guidance, samplers × steps
    python evaluate.py --run runs/demo/ldm-dit --choose-guidance                        # choose its w, then measure
    python evaluate.py --run runs/demo/vae                                              # autoencoder reconstructions

A small ResNet-style classifier is trained on the real training split (spectrogram-safe augmentation),
early-stopped on the real validation split, saved (RUN/classifier or OUT/classifier) and reused. It is also
cached in $TINYLDM_CACHE/classifier (default ~/.cache/tinyldm/classifier), keyed by the real images' pixels,
split and training settings, so a new run folder on the same data loads it instead of training it again
(--no-cache: neither read nor write that cache; --classifier DIR: only DIR). Its validation
accuracy is the ceiling every figure is read against. Measured on generated images, per user and overall:
condition accuracy (top-1/top-5 on images made for user k), Fréchet distance and KID in the classifier's
penultimate features, precision/recall (k-NN manifolds), TSTR (classifier trained on generated images only,
tested on real validation images) against TRTR; for an autoencoder run PSNR, SSIM and the Fréchet distance of
reconstructions. Writes OUT/report.json, OUT/report.md and PNG plots (confusion matrix, per-user accuracy,
sweep curves). See docs/evaluation.md.
"""

import argparse
import sys
from pathlib import Path

from tinyldm.evaluation.runs import evaluate_folders, evaluate_run
from tinyldm.evaluation.sweep import GUIDANCE_SCALES, SWEEP_SAMPLERS, SWEEP_STEPS
from tinyldm.generate import add_sampling_args, fill_run_guidance, guidance_choice, sampling_config
from tinyldm.options import SEED_RANGE, at_least, between, check_ranges, device_name
from tinyldm.runs import resolve_device, run_cli


def parse_list(text: str, kind, flag: str) -> list:
    try:
        values = [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give a comma-separated list such as "
                         f"{'1,2,4' if kind is not str else 'ddim,heun'}") from None
    if not values:
        raise ValueError(f"{flag} is empty; give at least one value")
    return values


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring verbatim, and every option's default (unless it is None or off)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


# What each numeric option allows (tinyldm.options), checked once at start-up; None (not given) is not checked. The
# sampling options and the --sweep-* lists are checked by SamplingConfig, where run() and the sweeps build one.
OPTION_RANGES = {
    "image_size": at_least(1),
    "val_fraction": between(0, 1, "the classifier is early-stopped on the validation images", low_open=True,
                            high_open=True),
    "split_seed": SEED_RANGE,
    "n_per_user": at_least(1),
    "seeds": at_least(1),
    "sweep_n_per_user": at_least(1),
    "seed": SEED_RANGE,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("what to evaluate (either --run, or --real with --generated)")
    g.add_argument("--run", type=Path, metavar="RUN_DIR",
                   help="a train_ldm.py run (samples, then measures) or a train_vae.py run")
    g.add_argument("--real", type=Path, metavar="DIR",
                   help="real data: a folder with one sub-folder per user (or a CSV path,user)")
    g.add_argument("--generated", type=Path, metavar="DIR",
                   help="generated images as <user>/NNN.png (sample.py's --out)")
    g.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where the report goes (default RUN/eval; required with --real/--generated)")
    g.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="--run only: the run's data where it is now, if it moved since training (default: the "
                        "folder its config.json names; checked to hold the same users)")
    g = p.add_argument_group("real data and classifier")
    g.add_argument("--image-size", type=int, default=None,
                   help="--real only: size the images are read at (default: that of the first real image)")
    g.add_argument("--channels", type=int, choices=[1, 3], default=None, help="--real only (default: the real data's)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="--real only: validation share per user (a run uses its autoencoder's split)")
    g.add_argument("--split-seed", type=int, default=0, help="--real only: seed of the train/validation split")
    g.add_argument("--classifier", type=Path, default=None, metavar="DIR",
                   help="folder to keep/reuse the classifier in (default RUN/classifier or OUT/classifier)")
    g.add_argument("--retrain-classifier", action="store_true",
                   help="train a new classifier even if one fits (and refresh the cached one)")
    g.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the shared classifier cache ($TINYLDM_CACHE, default ~/.cache/tinyldm)")
    g.add_argument("--no-tstr", action="store_true", help="skip TSTR (it trains a second classifier)")
    add_sampling_args(p)  # --run with a train_ldm.py run: the main measurement's settings (and the sweeps' others)
    g = p.add_argument_group("images (--run with a train_ldm.py run)")
    g.add_argument("--n-per-user", type=int, default=None,
                   help="images per user for the main measurement (default: at least 8, and at least 240 in all: "
                        "8 for 31 users, 48 for 5 classes)")
    g.add_argument("--seeds", type=int, default=3,
                   help="repeat the main measurement at this many sampling seeds (--seed, --seed + 1, …) and report "
                        "the spread of top-1, FD / floor and TSTR beside the first seed's numbers")
    g.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA or raw weights of the run")
    g.add_argument("--choose-guidance", action="store_true",
                   help="first choose the run's guidance scale on its training images, as train_ldm.py does after "
                        "training (for runs trained with --no-choose-guidance or before it existed), write it to "
                        "RUN/guidance.json, then measure at it")
    g = p.add_argument_group("sweep: quality against cost")
    g.add_argument("--sweep", action="store_true", help="also sweep guidance scales and samplers × steps")
    g.add_argument("--sweep-guidance", default=",".join(f"{w:g}" for w in GUIDANCE_SCALES), help="guidance scales")
    g.add_argument("--sweep-samplers", default=",".join(SWEEP_SAMPLERS), help="samplers")
    g.add_argument("--sweep-steps", default=",".join(map(str, SWEEP_STEPS)), help="step counts")
    g.add_argument("--sweep-n-per-user", type=int, default=4, help="images per user at each sweep point")
    p.add_argument("--seed", type=int, default=0, help="seeds sampling, the classifiers and KID's subsets")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1 … or mps")
    args = p.parse_args(argv)
    check_ranges(p, args, OPTION_RANGES)
    return args


def run(args: argparse.Namespace) -> dict:
    device = str(resolve_device(args.device))
    if args.run is not None:
        if args.real is not None or args.generated is not None:
            raise ValueError("give either --run, or --real with --generated, not both")
        for name in ("cfg_scale", "ag_scale"):
            if args.choose_guidance and getattr(args, name) is not None:
                raise ValueError(f"--choose-guidance chooses w and w_a itself; drop --{name.replace('_', '-')} "
                                 f"{getattr(args, name):g}")
        note = fill_run_guidance(args)  # the run's own w and w_a (replaced by the new choice with --choose-guidance)
        if note and not args.choose_guidance and guidance_choice(args.run) is not None:
            print(note)
        return evaluate_run(args.run, args.out, data=args.data, sampling=sampling_config(args),
                            n_per_user=args.n_per_user, seeds=args.seeds, with_tstr=not args.no_tstr, sweep=args.sweep,
                            guidance_scales=parse_list(args.sweep_guidance, float, "--sweep-guidance"),
                            samplers=parse_list(args.sweep_samplers, str, "--sweep-samplers"),
                            steps_list=parse_list(args.sweep_steps, int, "--sweep-steps"),
                            sweep_n_per_user=args.sweep_n_per_user, classifier_dir=args.classifier, device=device,
                            weights=args.weights, retrain=args.retrain_classifier, use_cache=not args.no_cache,
                            choose=args.choose_guidance)
    if args.real is None or args.generated is None:
        raise ValueError("give --run RUN_DIR, or both --real DIR and --generated DIR")
    if args.data is not None:
        raise ValueError("--data is for --run (the run's data, moved); with --generated give the real data as --real")
    if args.choose_guidance:
        raise ValueError("--choose-guidance samples new images, so it needs --run RUN_DIR, not a --generated folder")
    if args.sweep:
        raise ValueError("--sweep samples new images, so it needs --run RUN_DIR, not a --generated folder")
    if args.out is None:
        raise ValueError("--out DIR is needed with --real/--generated (where report.md and the classifier go)")
    return evaluate_folders(args.real, args.generated, args.out, args.image_size, args.channels, args.val_fraction,
                            args.split_seed, args.classifier, not args.no_tstr, args.seed, device,
                            args.retrain_classifier, use_cache=not args.no_cache)


def main(argv=None) -> int:
    return run_cli("evaluate.py", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
