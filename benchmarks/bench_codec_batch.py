"""Encode and decode time per image against the images per pass: is one pass over a whole batch the fastest?

    python benchmarks/bench_codec_batch.py                    # the compact autoencoder, 256×256
    python benchmarks/bench_codec_batch.py --preset tiny      # the tiny one, 64×64
    python benchmarks/bench_codec_batch.py --passes 16 --precision fp32,auto   # float32 against inference_autocast
    python benchmarks/bench_codec_batch.py --passes 16 --precision auto --layout contiguous,channels_last

At 256×256 a pass over 64 images holds GBs of activations; `tinyldm.generate.DECODE_BATCH` (16) is what this
measured (docs/speedrun.md, ninth round). `--precision auto` is `tinyldm.runs.inference_autocast`: bf16 on a CPU with
bf16 hardware (the tenth round), float32 elsewhere. `--layout channels_last` is `tinyldm.loading.inference_layout`,
the frozen autoencoder's layout in train_ldm.py, sample.py and evaluate.py (the twelfth round). Random weights and
inputs: the time does not depend on them.
"""

import argparse
import copy
from functools import partial

import torch
from timing import cpu_name, median_seconds

from tinyldm.loading import autoencoder_config, build_autoencoder, inference_layout
from tinyldm.malloc import keep_freed_memory
from tinyldm.runs import cpu_bf16_hardware, inference_autocast


def in_passes(fn, x: torch.Tensor, per_pass: int) -> None:
    for part in x.split(per_pass):
        fn(part)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="compact", choices=["tiny", "compact"])
    p.add_argument("--images", type=int, default=64, help="images timed per call")
    p.add_argument("--passes", default="64,16", help="images per pass, comma-separated")
    p.add_argument("--precision", default="fp32",
                   help="comma-separated: fp32, and/or auto (bf16 where the CPU has bf16 hardware: inference_autocast)")
    p.add_argument("--layout", default="contiguous",
                   help="comma-separated: contiguous, and/or channels_last (the weights' memory layout)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    keep_freed_memory()  # as the scripts do (tinyldm.runs.run_cli)
    torch.manual_seed(0)
    cfg = autoencoder_config("kl", args.preset)
    vae = build_autoencoder("kl", cfg).eval()
    size, f = cfg["sample_size"], 2 ** (len(cfg["block_out_channels"]) - 1)
    x = torch.rand(args.images, 3, size, size) * 2 - 1
    z = torch.randn(args.images, cfg["latent_channels"], size // f, size // f)
    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; {args.preset} autoencoder, "
          f"{size}×{size}, {args.images} images a call, median of {args.repeats}")
    for layout in args.layout.split(","):
        if layout not in ("contiguous", "channels_last"):
            raise SystemExit(f"--layout {layout!r}: choose contiguous or channels_last")
        model = inference_layout(copy.deepcopy(vae)) if layout == "channels_last" else vae
        for precision in args.precision.split(","):
            if precision not in ("fp32", "auto"):
                raise SystemExit(f"--precision {precision!r}: choose fp32 or auto")
            autocast = inference_autocast("cpu") if precision == "auto" else torch.autocast("cpu", enabled=False)
            with torch.inference_mode(), autocast:
                for per_pass in (int(n) for n in args.passes.split(",")):
                    enc = median_seconds(partial(in_passes, model.latent_moments, x, per_pass), args.repeats)
                    dec = median_seconds(partial(in_passes, model.decode_latent, z, per_pass), args.repeats)
                    print(f"{layout}, {precision} ({cpu_bf16_hardware() or 'no bf16 hardware'}), {per_pass:2d} images "
                          f"a pass: encode {enc / args.images * 1e3:6.1f} ms, decode {dec / args.images * 1e3:6.1f} ms "
                          "an image")

if __name__ == "__main__":
    main()
