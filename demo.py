"""`make demo`: the main job end to end on the built-in simulated micro-Doppler set, sized for 2 CPU cores.

Stages that exist today:
  1. data   generate the tiny simulated set (31 users × 40 images, 64×64) once under data/
  2. vae    train the tiny AutoencoderKL (f=4: 64×64×3 → 16×16×4) and write its reconstruction grid
Later stages (latent diffusion, sampling, evaluation) are added here as they land.

    python demo.py [--vae-epochs 6] [--out runs/demo]
"""

import argparse
import sys
import time
from pathlib import Path

import train_vae
from tinyldm.data import default_data_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where every output of the demo goes")
    p.add_argument("--vae-epochs", type=int, default=6, help="epochs of stage-1 training")
    args = p.parse_args(argv)
    times = {}

    t = time.time()
    data = default_data_dir("tiny")
    times["data"] = time.time() - t

    t = time.time()
    vae_dir = args.out / "vae"
    rc = train_vae.main(["--preset", "tiny", "--data", str(data), "--out", str(vae_dir),
                         "--epochs", str(args.vae_epochs), "--lr", "4e-4", "--ckpt-every", "200"])
    times["vae"] = time.time() - t
    if rc:
        return rc

    print("\n== demo finished ==")
    print("  " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {sum(times.values()):.0f} s")
    print(f"  data set               {data}")
    print(f"  autoencoder run        {vae_dir}  (config.json, model.safetensors)")
    print(f"  reconstruction grid    {vae_dir / 'recon_latest.png'}  (rows: input | reconstruction | error)")
    print(f"  loss curves            {vae_dir / 'loss_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
