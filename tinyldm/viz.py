"""Pictures people would rather look at than read: image grids and tables (users in blocks, denoising trajectories,
real beside generated), error maps, loss curves. PIL only."""

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


# ---- image tables: rows of images with names, headers, blocks ----------------------------------------------------
#
# Every table has one geometry, which the tests derive: an image is a cell of (H·scale) × (W·scale) px; cells sit
# `pad` px apart and `pad` px from the edges; row names take a column `label_w` px wide at the left; a header of
# LINE_H px per line of text sits above the cells. So image j of row i has its top-left corner at
#     x = label_w + pad + j·(W·scale + pad),   y = header + pad + i·(H·scale + pad).

LINE_H = 12  # px per line of PIL's default font in a header
WHITE = (255, 255, 255)


def text_width(text: str) -> int:
    """Width in px of `text` (its widest line) in PIL's default font."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return math.ceil(max(draw.textlength(line) for line in text.split("\n")))


def label_width(labels: list[str] | None) -> int:
    """Width of a column of row names: the widest name plus an 8-px margin; 0 without names."""
    return 8 + max(text_width(s) for s in labels) if labels else 0


def upscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(…, H, W) → (…, H·f, W·f) by nearest neighbour: each pixel becomes an f × f square, nothing is smoothed."""
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def thumbnails(x: torch.Tensor, size: int = 64) -> torch.Tensor:
    """(B, C, H, W) → (B, C, h, w) with the longer side ≤ size, by area averaging (each thumbnail pixel the mean
    of the block it covers); unchanged when already small enough. A grid of 124 images at 256×256 would be
    ~4,000 px wide; as 64 px thumbnails it fits a screen, and the full-size files are beside it."""
    factor = max(x.shape[-2:]) / size
    if factor <= 1:
        return x
    return torch.nn.functional.interpolate(x.float(), size=(round(x.shape[-2] / factor), round(x.shape[-1] / factor)),
                                           mode="area")


def scale_for(size: int, min_size: int = 128) -> int:
    """The smallest whole factor that shows a `size`-px image at ≥ min_size px (1 if it already is that big)."""
    return max(1, math.ceil(min_size / size))


def image_rows(rows: list[torch.Tensor], row_labels: list[str] | None = None, *, scale: int = 1, pad: int = 2,
               title: str | None = None, column_labels: list[str] | None = None,
               label_w: int | None = None) -> Image.Image:
    """rows: list of (n_i, C, H, W) tensors in [−1, 1], one C, H, W → one PIL image, a row each, its name at the left.

    Rows may hold different numbers of images (the widest sets the width). `title` is one header line over the
    cells; `column_labels` (one per column, "\n" between lines) head each column below it. label_w defaults to
    label_width(row_labels); pass one value to tables that should line up.
    """
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row names for {len(rows)} rows of images; give one name per row")
    arrays = [to_uint8(upscale(r, scale)) for r in rows]  # each (n_i, h, w, 3)
    n, h, w = max(a.shape[0] for a in arrays), arrays[0].shape[1], arrays[0].shape[2]
    label_w = label_width(row_labels) if label_w is None else label_w
    column_lines = max((s.count("\n") + 1 for s in column_labels), default=0) if column_labels else 0
    top = LINE_H * ((title is not None) + column_lines)  # header height
    table = Image.new("RGB", (label_w + n * (w + pad) + pad, top + len(rows) * (h + pad) + pad), WHITE)
    draw = ImageDraw.Draw(table)
    # Header: the title over the first cell, then each column's label over its cell.
    if title is not None:
        draw.text((label_w + pad, 0), title, fill=(0, 0, 0))
    for j, text in enumerate(column_labels or []):
        for k, line in enumerate(text.split("\n")):
            draw.text((label_w + pad + j * (w + pad), top - LINE_H * (column_lines - k)), line, fill=(0, 0, 0))
    # Cells, and each row's name centred on its height.
    for i, arr in enumerate(arrays):
        y = top + pad + i * (h + pad)
        for j in range(arr.shape[0]):
            table.paste(Image.fromarray(arr[j]), (label_w + pad + j * (w + pad), y))
        if row_labels is not None:
            draw.text((4, y + h // 2 - 6), row_labels[i], fill=(0, 0, 0))
    return table


def image_grid(rows: list[torch.Tensor], pad: int = 2, row_labels: list[str] | None = None) -> Image.Image:
    """rows: list of (N, C, H, W) tensors in [−1, 1] → one PIL image, a row each (image_rows at 1×, no header)."""
    return image_rows(rows, row_labels, pad=pad)


def side_by_side(pictures: list[Image.Image], gap: int = 16) -> Image.Image:
    """PIL images left to right, top-aligned, `gap` px of white between them."""
    canvas = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1),
                               max(p.height for p in pictures)), WHITE)
    x = 0
    for p in pictures:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return canvas


def user_blocks(images_per_user: list[torch.Tensor], names: list[str], columns: int = 4, column_height: int = 8,
                scale: int = 1, pad: int = 2, gap: int = 16) -> Image.Image:
    """Many users at a glance: blocks side by side, a row per user (its n images, its name at the left).

    images_per_user: list of (n, C, H, W) in [−1, 1], one per name. A block holds up to `column_height` users
    before the next one starts, and there are at most `columns` blocks (more users make them taller): 31 users
    are 4 blocks of 8, 12 users 2 blocks of 6, ≤ 8 users one block. Users run down the first block, then the next.
    """
    if len(names) != len(images_per_user):
        raise ValueError(f"{len(names)} names for {len(images_per_user)} users' images; give one name per user")
    if not names:
        raise ValueError("no users to draw; give at least one user's images")
    blocks = min(columns, math.ceil(len(names) / column_height))
    per_block = math.ceil(len(names) / blocks)
    label_w = label_width(names)  # one name column width in every block, so the blocks line up
    return side_by_side([image_rows(images_per_user[i:i + per_block], names[i:i + per_block], scale=scale,
                                    pad=pad, label_w=label_w) for i in range(0, len(names), per_block)], gap)


def evenly_spaced(total: int, k: int) -> list[int]:
    """≤ k indices into 0 … total − 1, evenly spaced, the first and the last included (all when total ≤ k)."""
    if total <= k:
        return list(range(total))
    if k == 1:
        return [total - 1]
    return [round(i * (total - 1) / (k - 1)) for i in range(k)]  # distinct: the spacing is > 1


def trajectory_picture(trajectory: list[torch.Tensor], names: list[str], times: list[float] | None = None,
                       users: int = 4, max_steps: int = 8, min_size: int = 128, pad: int = 2) -> Image.Image:
    """How denoising builds the picture: rows = the first `users` users, columns = ≤ max_steps evenly spaced steps
    (the last included) of x̂0, each image enlarged (nearest neighbour) to ≥ min_size px.

    trajectory: generate()'s list over steps of x̂0 (U, C, H, W), names: the U users' names, times: the schedule
    time t of each step (where the network was asked), shown under the step number when given.
    """
    if len(names) != trajectory[0].shape[0]:
        raise ValueError(f"{len(names)} names for a trajectory of {trajectory[0].shape[0]} users")
    steps = evenly_spaced(len(trajectory), max_steps)
    shown = torch.stack([trajectory[s][:users] for s in steps], dim=1)  # (u, k, C, H, W)
    header = [f"step {s + 1}/{len(trajectory)}" + ("" if times is None else f"\nt = {times[s]:.4g}") for s in steps]
    return image_rows(list(shown), names[:users], scale=scale_for(shown.shape[-2], min_size), pad=pad,
                      column_labels=header)


def real_vs_generated(real: list[torch.Tensor], generated: list[torch.Tensor], names: list[str],
                      min_size: int = 128, pad: int = 2, gap: int = 24) -> Image.Image:
    """Rows = users: their real images, a gap, then generated ones, under the headers "real" and "generated".

    real, generated: lists of (n, C, H, W) in [−1, 1], one per name (n may differ); images are enlarged (nearest
    neighbour) to ≥ min_size px.
    """
    if not len(real) == len(generated) == len(names):
        raise ValueError(f"{len(real)} users' real images, {len(generated)} generated, {len(names)} names; "
                         "give the same users to all three")
    scale = scale_for(generated[0].shape[-2], min_size)
    return side_by_side([image_rows(real, names, scale=scale, pad=pad, title="real"),
                         image_rows(generated, None, scale=scale, pad=pad, title="generated")], gap)


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
