"""What `--precision auto` chooses on this CPU and what it buys: the demo's two training steps in float32 and bf16.

    python benchmarks/bench_precision.py                 # 5 rounds, alternating the variants
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_precision.py
                                                         # the same CPU as an AVX2-only machine sees it

Steps: the tiny f = 2 autoencoder (64×64 → 32×32×4, batch 8, L1 + KL + FFT loss, fused AdamW) as `train_vae.py`
trains it, plain and `channels_last`; the tiny DiT (32×32×4 latents, patch 4, batch 32, fused AdamW) as
`train_ldm.py` trains it, with PyTorch's fused attention (SDPA) and with the written-out attention that
`train_ldm.py` switches to for CPU bf16. Each round times every variant once (3 steps each, after 3 warm-up
steps), so a busy moment hits them all alike; the table gives the median ms per step and the ratio to float32.
"""

import argparse
import statistics
import time

import torch
from timing import cpu_name, training_step

from tinyldm.layers import written_out_attention
from tinyldm.loading import autoencoder_config, backbone_config, build_autoencoder, build_backbone
from tinyldm.losses import AutoencoderLossWeights, autoencoder_loss
from tinyldm.runs import autocast_dtype, precision_words
from tinyldm.train import adamw


def autoencoder_step(channels_last: bool, bf16: bool):
    torch.manual_seed(0)
    model = build_autoencoder("kl", autoencoder_config("kl", "tiny"))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = adamw(model.parameters(), 1e-3, 0.0, True)
    x = (torch.rand(8, 3, 64, 64) * 2 - 1).contiguous(memory_format=fmt)  # (B, 3, 64, 64)

    def loss_of():  # train_vae.py's loss: L1 + KL + FFT
        x_hat, posterior = model(x)
        return autoencoder_loss(x, x_hat.float(), AutoencoderLossWeights(),
                                posterior_mean=posterior.mean, posterior_logvar=posterior.logvar)[0]
    return training_step(model, opt, loss_of, bf16)


def dit_step(written_out: bool, bf16: bool):
    torch.manual_seed(0)
    model = build_backbone("dit", backbone_config("dit", "tiny", 4, 32, 31, patch_size=4))
    if written_out:
        written_out_attention(model)
    opt = adamw(model.parameters(), 1e-3, 0.0, True)
    x, t, y = torch.randn(32, 4, 32, 32), torch.rand(32), torch.randint(0, 31, (32,))  # flow: t ∈ [0, 1]

    # train_ldm.py's flow loss on random data: the time is what is measured
    return training_step(model, opt, lambda: (model(x, t, y).float() - x).square().mean(), bf16)


VARIANTS = {
    "autoencoder float32": lambda: autoencoder_step(False, False),
    "autoencoder float32 channels_last": lambda: autoencoder_step(True, False),
    "autoencoder bf16": lambda: autoencoder_step(False, True),
    "autoencoder bf16 channels_last": lambda: autoencoder_step(True, True),
    "DiT float32 (SDPA)": lambda: dit_step(False, False),
    "DiT float32 (written-out attention)": lambda: dit_step(True, False),
    "DiT bf16 (SDPA)": lambda: dit_step(False, True),
    "DiT bf16 (written-out attention)": lambda: dit_step(True, True),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    args = p.parse_args()
    cpu = torch.device("cpu")
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads, kernels "
          f"{torch.backends.cpu.get_cpu_capability()}; --precision auto trains in "
          f"{precision_words(cpu, autocast_dtype(cpu, 'auto'))}")
    steps = {name: make() for name, make in VARIANTS.items()}
    for step in steps.values():
        for _ in range(3):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
    print("| step | ms per step (median) | float32 / this |\n|---|---|---|")
    for name, ts in times.items():
        model = name.split()[0]  # "autoencoder" or "DiT"; each model's first variant is its float32 baseline
        base = statistics.median(next(v for n, v in times.items() if n.split()[0] == model))
        print(f"| {name} | {statistics.median(ts) * 1000:.0f} | {base / statistics.median(ts):.2f}× |")


if __name__ == "__main__":
    main()
