"""How much of TSTR ÷ TRTR is the number of images? TRTR trained on as few real images as TSTR gets.

TSTR (evaluation/pipeline.py) trains a classifier on the generated set, a few hundred images (`images_per_user`:
8 per walker, 40 per activity), while TRTR, the classifier ceiling, trained on the whole real training split
(1,116 walking or 1,620 activity windows). So TSTR ÷ TRTR mixes two things: how good the generated images are, and
how many there are. This benchmark trains the same classifier, for the same fixed number of steps TSTR uses,
on n real training images per user (drawn at random, several draws) and scores it on the real validation split:
TRTR at count n, the best a generator could reach if its images were as good as real ones.

    python benchmarks/trtr_count.py --run runs/demo/ldm-dit --counts 8 16 36 --draws 3
    python benchmarks/trtr_count.py --run runs/demo-activities/ldm-dit --counts 40 80 270 --draws 3

Prints a table (n per user, mean and range of the accuracy over the draws, ÷ the ceiling) and writes
OUT/trtr_count.json. The benchmark is not a test; state the CPU with its timings.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import cpu_name  # noqa: E402

from tinyldm.evaluation.classifier import ClassifierConfig, embed, train_classifier  # noqa: E402
from tinyldm.evaluation.pipeline import random_per_user  # noqa: E402
from tinyldm.evaluation.runs import run_reference  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a train_ldm.py run (its data, split and classifier)")
    p.add_argument("--counts", type=int, nargs="+", required=True, help="real training images per user")
    p.add_argument("--draws", type=int, default=3, help="random subsets per count (default 3)")
    p.add_argument("--out", type=Path, default=None, help="where trtr_count.json goes (default RUN/trtr_count)")
    args = p.parse_args(argv)

    config = json.loads((args.run / "config.json").read_text())
    ref, _ = run_reference(args.run, config, args.run / "classifier", seed=0, device="cpu", retrain=False, cache=None)
    clf_config = ClassifierConfig(**ref.record["config"])
    steps = ref.record["results"]["best_step"]
    print(f"{cpu_name()}; {args.run}: ceiling {ref.ceiling:.3f} on {len(ref.val_y)} validation images, "
          f"{len(ref.train_y)} training images, {steps} classifier steps")
    rows = []
    for n in args.counts:
        accs = []
        for draw in range(args.draws):
            idx = random_per_user(ref.train_y, [n] * len(ref.classes), torch.Generator().manual_seed(draw))
            start = time.perf_counter()
            model, _ = train_classifier(ref.train_x[idx], ref.train_y[idx], clf_config, fixed_steps=steps, seed=draw,
                                        desc=f"TRTR at {n} per user")
            _, logits = embed(model, ref.val_x)
            accs.append((logits.argmax(1) == ref.val_y).float().mean().item())
            seconds = time.perf_counter() - start
        mean = sum(accs) / len(accs)
        rows.append({"n_per_user": n, "images": len(idx), "acc": accs, "mean": mean, "ratio": mean / ref.ceiling,
                     "seconds_per_classifier": seconds})
    print("\n| real images per user | images | TRTR at that count, mean (min–max) | ÷ ceiling |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['n_per_user']} | {r['images']} | {r['mean']:.3f} ({min(r['acc']):.3f}–{max(r['acc']):.3f}) "
              f"| {r['ratio']:.2f} |")
    out = args.out or args.run / "trtr_count"
    out.mkdir(parents=True, exist_ok=True)
    (out / "trtr_count.json").write_text(json.dumps({"cpu": cpu_name(), "ceiling": ref.ceiling, "rows": rows},
                                                    indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
