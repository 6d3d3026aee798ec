"""Forward + backward time of the denoising backbones (median of timed steps after two warm-ups).

    python benchmarks/bench_backbones.py                          # tiny UNet, DiT, MMDiT, batch 8, 16×16×4, CPU
    python benchmarks/bench_backbones.py --device cuda --bf16 --big   # SD-1.x UNet, DiT-XL/2, MMDiT small, 32×32×4
"""

import argparse
from functools import partial

import torch
from timing import median_seconds

from tinyldm.models.dit import DiT
from tinyldm.models.mmdit import MMDiT
from tinyldm.models.unet import UNet2DConditionModel


def train_step(model, x, t, y, bf16):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(x, t, y).float().square().mean()
    loss.backward()
    model.zero_grad(set_to_none=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--big", action="store_true",
                   help="SD-1.x UNet, DiT-XL/2 and MMDiT small at 32×32×4 instead of the tiny ones")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.big:
        models = {"SD-1.x UNet": lambda: UNet2DConditionModel.from_preset("sd1", sample_size=32),
                  "DiT-XL/2": lambda: DiT.from_preset("DiT-XL/2", num_classes=31),
                  "MMDiT small": lambda: MMDiT.from_preset("small", num_classes=31)}
        size = 32
    else:
        models = {"tiny UNet": lambda: UNet2DConditionModel.from_preset("tiny"),
                  "tiny DiT": lambda: DiT.from_preset("tiny"),
                  "tiny MMDiT": lambda: MMDiT.from_preset("tiny")}
        size = 16
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, bf16 {args.bf16}")
    for name, make in models.items():
        model = make().to(args.device).train()
        x = torch.randn(args.batch_size, 4, size, size, device=args.device)
        t_max = 1 if isinstance(model, MMDiT) else 999  # MMDiT is a flow model: t ∈ [0, 1]
        t = torch.rand(args.batch_size, device=args.device) * t_max
        y = torch.randint(0, 31, (args.batch_size,), device=args.device)
        sec = median_seconds(partial(train_step, model, x, t, y, args.bf16), args.repeats, args.device)
        n = sum(q.numel() for q in model.parameters())
        print(f"{name}: {n:,} params, batch {args.batch_size} at {size}×{size}×4: forward+backward "
              f"{sec * 1000:.1f} ms/step ({args.batch_size / sec:.0f} latents/s)")


if __name__ == "__main__":
    main()
