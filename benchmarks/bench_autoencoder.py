"""Forward + backward time of the autoencoders on CPU (or --device cuda), median of a few timed steps.

    python benchmarks/bench_autoencoder.py                   # tiny KL and VQ, 64×64, batch 8
    python benchmarks/bench_autoencoder.py --preset seed --batch-size 1
"""

import argparse
from functools import partial

import torch
from timing import median_seconds

from tinyldm.loading import autoencoder_config, build_autoencoder


def train_step(model, model_type, x):
    if model_type == "kl":
        x_hat, posterior = model(x)
        loss = (x_hat - x).abs().mean() + 1e-6 * posterior.kl().mean()
    else:
        x_hat, vq_loss, _ = model(x)
        loss = (x_hat - x).abs().mean() + vq_loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=["tiny", "seed"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for model_type in ("kl", "vq"):
        cfg = autoencoder_config(model_type, args.preset)
        model = build_autoencoder(model_type, cfg).to(args.device)
        size = cfg["sample_size"]
        x = torch.rand(args.batch_size, 3, size, size, device=args.device) * 2 - 1
        sec = median_seconds(partial(train_step, model, model_type, x), args.repeats, args.device)
        n = sum(p.numel() for p in model.parameters())
        print(f"{model_type} {args.preset}: {n:,} params, batch {args.batch_size} at {size}×{size}: "
              f"forward+backward {sec * 1000:.0f} ms/step ({args.batch_size / sec:.1f} images/s)")


if __name__ == "__main__":
    main()
