"""The evaluation's pictures, drawn with PIL: confusion matrix and per-user accuracy bars (curves: viz.plot_curves)."""

import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

from tinyldm.viz import PALETTE


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str = "") -> None:
    """(K, K) counts, row = intended user, column = predicted user → PNG; each row shaded by its own share."""
    K = len(matrix)
    cell = max(6, min(40, 640 // K))
    label_w = 8 + 6 * max(len(c) for c in classes)
    top, left = 40, label_w
    W, H = max(left + K * cell + 20, 480), top + K * cell + 40
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((left, 6), title, fill=(0, 0, 0))
    d.text((left, 22), "columns: predicted user  |  rows: user the image was made for", fill=(90, 90, 90))
    for i, row in enumerate(matrix):
        total = max(sum(row), 1)
        for j, count in enumerate(row):
            share = count / total
            # White (0 %) → dark blue (100 %); the diagonal is the accuracy of user i.
            shade = tuple(int(255 - share * (255 - c)) for c in (8, 48, 107))
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=shade, outline=(235, 235, 235))
        if K <= 40:
            d.text((4, top + i * cell + cell // 2 - 5), classes[i], fill=(0, 0, 0))
    d.rectangle([left, top, left + K * cell, top + K * cell], outline=(0, 0, 0))
    d.text((left, top + K * cell + 8), f"{K} users; darker = larger share of the row", fill=(90, 90, 90))
    img.save(path)


def plot_bars(values: list[float], labels: list[str], path: Path, title: str = "", ceiling: float | None = None,
              ceiling_label: str = "classifier ceiling") -> None:
    """Vertical bars of values in [0, 1] (NaN = no images, drawn as a grey tick), with a dashed ceiling line."""
    n = len(values)
    bar = max(6, min(28, 900 // max(n, 1)))
    left, right, top, bottom = 50, 20, 40, 70
    W, H = left + n * bar + right, 320
    img = Image.new("RGB", (max(W, 360), H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill=(0, 0, 0))
    plot_h = H - top - bottom
    py = lambda v: H - bottom - v * plot_h  # noqa: E731
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        d.line([left - 4, py(t), left + n * bar, py(t)], fill=(225, 225, 225))
        d.text((8, py(t) - 6), f"{t:.0%}", fill=(0, 0, 0))
    prefix = os.path.commonprefix(labels) if n > 1 else ""
    for i, (v, name) in enumerate(zip(values, labels)):
        x0 = left + i * bar + 1
        if math.isnan(v):
            d.line([x0, py(0) - 2, x0 + bar - 3, py(0) - 2], fill=(160, 160, 160), width=2)
        else:
            d.rectangle([x0, py(v), x0 + bar - 3, py(0)], fill=PALETTE[0])
        if n <= 40:
            # What tells the users apart (the names without their common prefix), alternating in two rows.
            d.text((x0, H - bottom + 4 + (i % 2) * 12), name[len(prefix):][:4], fill=(0, 0, 0))
    if ceiling is not None:
        y = py(ceiling)
        for x in range(left, left + n * bar, 8):
            d.line([x, y, min(x + 4, left + n * bar), y], fill=PALETTE[3], width=2)
        d.text((left + 4, y - 14), f"{ceiling_label} {ceiling:.1%}", fill=PALETTE[3])
    d.line([left, py(0), left + n * bar, py(0)], fill=(0, 0, 0))
    d.line([left, py(0), left, py(1)], fill=(0, 0, 0))
    img.save(path)
