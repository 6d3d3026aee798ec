"""Pictures people would rather look at than read: image grids, error maps, loss curves. PIL only."""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [−1, 1] → (B, H, W, 3) uint8; one channel is repeated to grey RGB."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).numpy()


def heat(values: torch.Tensor) -> torch.Tensor:
    """(B, H, W) in [0, 1] → (B, 3, H, W) in [−1, 1]: black → red → yellow → white, for error maps."""
    v = values.clamp(0, 1)
    rgb = torch.stack([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)], dim=1)
    return rgb * 2 - 1


def error_map(x: torch.Tensor, x_hat: torch.Tensor, full_scale: float = 0.5) -> torch.Tensor:
    """|x − x̂| averaged over channels, `full_scale` (in [−1, 1] units) maps to white → (B, 3, H, W)."""
    return heat((x - x_hat).abs().mean(dim=1) / full_scale)


def image_grid(rows: list[torch.Tensor], pad: int = 2, row_labels: list[str] | None = None) -> Image.Image:
    """rows: list of (N, C, H, W) tensors in [−1, 1], all the same N, H, W → one PIL image, a row each."""
    arrays = [to_uint8(r) for r in rows]
    n, h, w = arrays[0].shape[0], arrays[0].shape[1], arrays[0].shape[2]
    label_w = 0 if row_labels is None else 8 + 7 * max(len(s) for s in row_labels)
    grid = Image.new("RGB", (label_w + n * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, arr in enumerate(arrays):
        y = pad + i * (h + pad)
        for j in range(arr.shape[0]):
            grid.paste(Image.fromarray(arr[j]), (label_w + pad + j * (w + pad), y))
        if row_labels is not None:
            draw.text((4, y + h // 2 - 5), row_labels[i], fill=(0, 0, 0))
    return grid


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-12) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (m * step) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def plot_curves(series: dict[str, tuple[list, list]], path: Path, title: str = "", xlabel: str = "step",
                log_y: bool = True, size: tuple[int, int] = (720, 420), log_x: bool = False) -> None:
    """Line plot of named (x, y) series, drawn with PIL, saved as PNG. Non-positive values are dropped on a log
    axis. PIL's default font has no Greek: write "eps", not "ε", in names and titles."""
    W, H = size
    left, right, top, bottom = 70, 160, 30, 45
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    clean = {}
    for name, (xs, ys) in series.items():
        pts = [(float(x), float(y)) for x, y in zip(xs, ys)
               if math.isfinite(y) and (y > 0 or not log_y) and (x > 0 or not log_x)]
        if pts:
            clean[name] = pts
    d.text((left, 8), title, fill=(0, 0, 0))
    if not clean:
        d.text((left, H // 2), "no data yet", fill=(0, 0, 0))
        img.save(path)
        return
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    fx = (lambda x: math.log10(x)) if log_x else (lambda x: x)
    all_x = [fx(x) for pts in clean.values() for x, _ in pts]
    all_y = [fy(y) for pts in clean.values() for _, y in pts]
    x0, x1 = min(all_x), max(all_x) if max(all_x) > min(all_x) else min(all_x) + 1
    y0, y1 = min(all_y), max(all_y) if max(all_y) > min(all_y) else min(all_y) + 1
    px = lambda x: left + (x - x0) / (x1 - x0) * (W - left - right)  # noqa: E731
    py = lambda y: H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom)  # noqa: E731
    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for t in _nice_ticks(x0, x1):
        d.line([px(t), H - bottom, px(t), H - bottom + 4], fill=(0, 0, 0))
        d.text((px(t) - 10, H - bottom + 6), f"{10**t:.3g}" if log_x else f"{t:g}", fill=(0, 0, 0))
    for t in _nice_ticks(y0, y1):
        d.line([left - 4, py(t), left, py(t)], fill=(0, 0, 0))
        label = f"{10**t:.3g}" if log_y else f"{t:.3g}"
        d.text((4, py(t) - 6), label, fill=(0, 0, 0))
    d.text(((W - right + left) // 2 - 10, H - 16), xlabel, fill=(0, 0, 0))
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        xy = [(px(fx(x)), py(fy(y))) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        else:
            d.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=color)
        d.line([W - right + 10, top + 10 + 16 * i, W - right + 30, top + 10 + 16 * i], fill=color, width=3)
        d.text((W - right + 35, top + 4 + 16 * i), name, fill=(0, 0, 0))
    img.save(path)


def smooth(ys: list[float], window: int) -> list[float]:
    """Running mean over the last `window` values (a readable loss curve from noisy per-step losses)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out
