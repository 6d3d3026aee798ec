"""GPU training throughput and model FLOP utilisation (MFU) of the big backbones: one full training step
(bf16 autocast forward, backward, fused AdamW) of DiT-XL/2 or the SD-1.x UNet on 32×32×4 latents (256×256 images).

    python benchmarks/bench_mfu.py --model dit-xl --batch-size 256 --compile
    python benchmarks/bench_mfu.py --model sd-unet --batch-size 128 --channels-last --compile
    python benchmarks/bench_mfu.py --model dit-s --device cpu --batch-size 2 --steps 2   # the script itself, on a CPU

The step is the training scripts' (`timing.training_step`: autocast forward, backward, gradient clipped to norm
1, AdamW, fused on a GPU). MFU = (model FLOPs of one step / seconds per step) / the card's dense bf16 peak. The
FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` adds up every matmul, convolution
and attention of one eager step (2·M·N·K per matmul; elementwise work, norms and the optimizer are not counted,
as in the usual definition). The peak is the data-sheet number for the card (H100/H200 SXM: 989.4 TFLOP/s dense
bf16); the script also times one large bf16 matmul, the rate this card really reaches, and prints the step's share
of that.
"""

import argparse
import time

import torch
from timing import training_step
from torch.utils.flop_counter import FlopCounterMode

from tinyldm.models.dit import DiT
from tinyldm.models.unet import UNet2DConditionModel
from tinyldm.train import adamw

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "A100": 312.0, "L4": 121.0}

MODELS = {
    "dit-xl": lambda: DiT.from_preset("DiT-XL/2", num_classes=31),   # 675 M parameters, 256 tokens
    "sd-unet": lambda: UNet2DConditionModel.from_preset("sd1", sample_size=32),  # 860 M parameters
    "dit-s": lambda: DiT.from_preset("DiT-S/2", num_classes=31),     # a quick check of the script
}


def card_peak(device: torch.device) -> float | None:
    """The data-sheet dense bf16 peak of this card in TFLOP/s, or None when it is not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """What one large bf16 matmul (n×n by n×n, 2n³ FLOPs) reaches on this card: the practical ceiling."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def make_batch(batch_size: int, device: torch.device, channels_last: bool):
    """Noisy latents x (B, 4, 32, 32), timesteps t (B,), user ids y (B,) and the regression target (B, 4, 32, 32)."""
    x = torch.randn(batch_size, 4, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.rand(batch_size, device=device) * 999
    y = torch.randint(0, 31, (batch_size,), device=device)
    return x, t, y, torch.randn_like(x)


def step_of(model, forward, opt, batch, bf16: bool):
    """One training step of `forward` (the model or its compiled version) on batch = (x, t, y, target)."""
    x, t, y, target = batch

    def loss_of():
        return (forward(x, t, y).float()[:, :4] - target).square().mean()  # [:, :4]: DiT-XL/2 also predicts σ

    return training_step(model, opt, loss_of, bf16, x.device.type)


def count_flops(step) -> int:
    """Matmul/conv/attention FLOPs of one call of `step` (run eagerly)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="dit-xl")
    p.add_argument("--batch-size", type=int, default=256, help="halved until it fits in memory")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (after 3 warm-up steps)")
    p.add_argument("--compile", action="store_true",
                   help="also time the model under torch.compile (its warm-up pays the compile)")
    p.add_argument("--channels-last", action="store_true", help="model and latents in channels_last memory format")
    p.add_argument("--fp32", action="store_true", help="float32 instead of bf16 autocast")
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the card's dense bf16 peak (default: the data sheet's for H100/H200/A100/L4)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_mfu.py: no CUDA GPU here; pass --device cpu to check the script on a CPU")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    bf16 = not args.fp32

    model = MODELS[args.model]().to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(q.numel() for q in model.parameters())
    opt = adamw(model.parameters(), 1e-4, fused=device.type == "cuda")

    batch_size = args.batch_size
    while True:  # the largest batch ≤ --batch-size that fits (found eagerly)
        try:
            batch = make_batch(batch_size, device, args.channels_last)
            eager_step = step_of(model, model, opt, batch, bf16)
            flops = count_flops(eager_step)
            eager = time_steps(eager_step, device, args.steps)
            break
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            print(f"out of memory: trying batch {batch_size}")

    settings = [("bf16 autocast", bf16), ("float32", not bf16), ("channels_last", args.channels_last),
                ("fused AdamW", device.type == "cuda")]
    how = ", ".join(word for word, on in settings if on)
    print(f"{args.model}: {n_params / 1e6:.1f} M params, batch {batch_size} at 32×32×4, {how}; "
          f"{flops / batch_size / 1e9:.1f} GFLOP per latent (forward + backward)")
    peak = (args.peak_tflops or card_peak(device)) if device.type == "cuda" else None
    ceiling = matmul_tflops(device) if device.type == "cuda" else None
    report("eager", eager, flops, batch_size, peak, ceiling, device)
    if args.compile:
        compiled_step = step_of(model, torch.compile(model), opt, batch, bf16)
        report("torch.compile", time_steps(compiled_step, device, args.steps), flops, batch_size, peak, ceiling,
               device)
    if device.type == "cuda":
        print(f"  ({torch.cuda.get_device_name(device)}: data-sheet peak {peak} TFLOP/s, a large bf16 matmul "
              f"reaches {ceiling:.0f})")


def time_steps(step, device: torch.device, steps: int) -> tuple[float, float, float]:
    """(warm-up seconds, seconds per training step, peak GiB) of `steps` calls of `step` after 3 warm-up calls
    (which pay compiling and autotuning). The mean of one timed stretch: a GPU runs ahead of Python."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    sec = (time.perf_counter() - t0) / steps
    return warmup_s, sec, torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")


def report(name, timing, flops, batch_size, peak, ceiling, device):
    warmup_s, sec, mem = timing
    achieved = flops / sec / 1e12
    line = (f"  {name}: {sec * 1000:.1f} ms/step, {batch_size / sec:.0f} latents/s, {achieved:.1f} TFLOP/s "
            f"(warm-up {warmup_s:.1f} s)")
    if device.type == "cuda":
        mfu = f"MFU {100 * achieved / peak:.1f} %, " if peak else ""
        line += f"; {mfu}{100 * achieved / ceiling:.1f} % of the matmul ceiling; peak memory {mem:.1f} GiB"
    print(line, flush=True)


if __name__ == "__main__":
    main()
