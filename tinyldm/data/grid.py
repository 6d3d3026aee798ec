"""Example grid of simulated users: one row per person, one column per recording (PIL only).

    python -m tinyldm.data.grid --out docs/images/microdoppler_users.png --users 8 --per-user 3 --size 160
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tinyldm.data.microdoppler import draw_person, render
from tinyldm.data.radar import RadarConfig

LABEL_WIDTH, GAP, HEADER = 150, 4, 28


def _font(size):
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def user_grid(users=8, per_user=3, size=160, seed=0):
    """PIL image: rows = users 0..users-1 (labelled with height, speed, cadence), columns = recordings."""
    radar = RadarConfig()
    width = LABEL_WIDTH + per_user * (size + GAP)
    grid = Image.new("RGB", (width, HEADER + users * (size + GAP)), "white")
    draw, font = ImageDraw.Draw(grid), _font(13)
    draw.text((LABEL_WIDTH, 6), f"time -> ({radar.duration:.1f} s per image);  Doppler up: {radar.v_min:+.0f} to "
              f"{radar.v_max:+.0f} m/s;  {radar.carrier_hz / 1e9:.0f} GHz CW, 40 dB jet", fill="black", font=font)
    for k in range(users):
        p, top = draw_person(k, seed), HEADER + k * (size + GAP)
        label = (f"user_{k:02d}\nH {p.height:.2f} m\nV {p.speed:.2f} m/s\nDc {p.cadence * 1.346 / np.sqrt(p.RV):.2f} s"
                 f"\narm swing x{p.arm_gain:.2f}")
        draw.multiline_text((6, top + 6), label, fill="black", font=font, spacing=3)
        for i in range(per_user):
            img, _ = render(k, i, size, seed=seed, radar=radar)
            grid.paste(Image.fromarray(img), (LABEL_WIDTH + i * (size + GAP), top))
    return grid


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinyldm.data.grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/images/microdoppler_users.png", help="PNG to write")
    p.add_argument("--users", type=int, default=8, help="rows: users 0..N-1")
    p.add_argument("--per-user", type=int, default=3, help="columns: recordings per user")
    p.add_argument("--size", type=int, default=160, help="pixels per spectrogram")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated set (0 = the default data)")
    args = p.parse_args(argv)
    if min(args.users, args.per_user, args.size) <= 0:
        p.error("--users, --per-user and --size must be positive")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    user_grid(args.users, args.per_user, args.size, args.seed).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
