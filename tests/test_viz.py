"""The pictures sample.py writes (tinyldm.viz): users in blocks, the trajectory's chosen steps, real beside generated.

Every expected size and position is derived from the one table geometry in viz.py: a cell of (H·scale) × (W·scale)
px, `pad` between cells and at the edges, a name column label_width(names) wide, LINE_H px per header line.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from tinyldm import viz

RED = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)  # (C, 1, 1): a colour no random image below can hit exactly


def users(count: int, n: int = 4, size: int = 16) -> tuple[list[torch.Tensor], list[str]]:
    """Random images (n, 3, size, size) in [−0.9, 0.9] for `count` users, and their names."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(n, 3, size, size, generator=g) * 1.8 - 0.9 for _ in range(count)]
    return images, [f"user_{u:02d}" for u in range(count)]


def dark(img: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Is anything drawn (a pixel darker than mid-grey) inside box = (left, top, right, bottom)?"""
    return bool((np.asarray(img.crop(box)) < 128).any())


# ---- user_blocks ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1, 2])
def test_31_users_are_4_blocks_of_8_rows(scale):
    images, names = users(31)
    pad, gap, cell = 2, 16, 16 * scale
    img = viz.user_blocks(images, names, columns=4, scale=scale, pad=pad, gap=gap)
    block_w = viz.label_width(names) + 4 * (cell + pad) + pad  # names, then 4 images per row
    assert img.size == (4 * block_w + 3 * gap, 8 * (cell + pad) + pad)


@pytest.mark.parametrize("count, blocks, rows", [(1, 1, 1), (8, 1, 8), (9, 2, 5), (12, 2, 6), (40, 4, 10)])
def test_blocks_hold_up_to_8_users_each_and_at_most_4_blocks(count, blocks, rows):
    images, names = users(count, n=2, size=8)
    img = viz.user_blocks(images, names, pad=2, gap=16)
    block_w = viz.label_width(names) + 2 * (8 + 2) + 2
    assert img.size == (blocks * block_w + (blocks - 1) * 16, rows * (8 + 2) + 2)


def test_a_users_images_land_where_the_layout_puts_them():
    images, names = users(31)
    images[13] = RED.expand(4, 3, 16, 16)  # user 13: block 13 // 8 = 1, row 13 % 8 = 5
    pad, gap, scale = 2, 16, 2
    cell = 16 * scale
    img = viz.user_blocks(images, names, scale=scale, pad=pad, gap=gap)
    label_w = viz.label_width(names)
    block_w = label_w + 4 * (cell + pad) + pad
    x0, y0 = 1 * (block_w + gap) + label_w + pad, pad + 5 * (cell + pad)
    a = np.asarray(img)  # (height, width, 3)
    red = (a == (255, 0, 0)).all(axis=-1)  # (height, width)
    for j in range(4):
        x = x0 + j * (cell + pad)
        assert red[y0:y0 + cell, x:x + cell].all(), j
    assert red.sum() == 4 * cell * cell  # and nowhere else: no off-by-one, no other user's cell


def test_every_user_gets_its_name_and_names_must_match_the_users():
    images, names = users(31, n=1, size=16)
    img = viz.user_blocks(images, names, pad=2, gap=16)
    label_w, row_h = viz.label_width(names), 16 + 2
    block_w = label_w + 1 * row_h + 2
    for u in range(31):
        left, top = (u // 8) * (block_w + 16), 2 + (u % 8) * row_h
        assert dark(img, (left, top, left + label_w, top + 16)), names[u]
    left = 3 * (block_w + 16)  # the last block holds 7 users: its 8th row is empty
    assert not dark(img, (left, 2 + 7 * row_h, left + block_w, 2 + 8 * row_h))
    with pytest.raises(ValueError, match="one name per user"):
        viz.user_blocks(images, names[:-1])


def test_upscale_is_nearest_neighbour():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    y = viz.upscale(x, 2)  # (1, 1, 4, 6)
    assert y.shape == (1, 1, 4, 6)
    assert torch.equal(y[..., ::2, ::2], x) and torch.equal(y[..., 1::2, 1::2], x)
    assert viz.scale_for(64) == 2 and viz.scale_for(32) == 4 and viz.scale_for(256) == 1 and viz.scale_for(100) == 2


# ---- the trajectory -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total, k", [(20, 8), (30, 8), (9, 8), (8, 8), (5, 8), (1, 8), (20, 1), (20, 2)])
def test_evenly_spaced_steps_include_the_last(total, k):
    steps = viz.evenly_spaced(total, k)
    assert len(steps) == min(total, k)
    assert steps[-1] == total - 1
    if len(steps) > 1:
        assert steps[0] == 0
        gaps = np.diff(steps)
        assert (gaps >= 1).all() and gaps.max() - gaps.min() <= 1  # strictly increasing, as even as integers go


def test_trajectory_picture_shows_the_chosen_steps_of_the_first_users_at_readable_size():
    S, U, size = 20, 6, 16
    values = torch.linspace(-1, 1, S)  # step s is a constant grey image of value values[s]
    trajectory = [torch.full((U, 1, size, size), v.item()) for v in values]  # list over steps of (U, C, H, W)
    names = [f"user_{u}" for u in range(U)]
    times = [999.0 - 50 * s for s in range(S)]
    img = viz.trajectory_picture(trajectory, names, times, users=4, max_steps=8, min_size=128, pad=2)
    steps, cell, label_w = viz.evenly_spaced(S, 8), size * viz.scale_for(size, 128), viz.label_width(names[:4])
    assert cell >= 128
    header = 2 * viz.LINE_H  # "step s/S" and "t = …"
    assert img.size == (label_w + 8 * (cell + 2) + 2, header + 4 * (cell + 2) + 2)  # 4 users, 8 steps
    for i in range(4):
        for j, s in enumerate(steps):
            x, y = label_w + 2 + j * (cell + 2) + cell // 2, header + 2 + i * (cell + 2) + cell // 2
            grey = round((values[s].item() + 1) * 127.5)
            assert img.getpixel((x, y)) == (grey,) * 3, (i, s)
    assert dark(img, (label_w, 0, img.width, header))  # the column headers are drawn
    # Without times the header is one line; fewer users than asked for shows them all.
    img = viz.trajectory_picture([x[:2] for x in trajectory[:3]], names[:2], users=4, min_size=16)
    assert img.size == (viz.label_width(names[:2]) + 3 * (size + 2) + 2, viz.LINE_H + 2 * (size + 2) + 2)


# ---- real beside generated ------------------------------------------------------------------------------------------

def test_real_vs_generated_puts_real_then_a_gap_then_generated_in_each_users_row():
    names, size, pad, gap = ["alice", "bob", "carol"], 16, 2, 24
    real = [RED.expand(2, 3, size, size)] * 3
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)
    generated = [green.expand(3, 3, size, size)] * 3  # more generated images than real ones is fine
    img = viz.real_vs_generated(real, generated, names, min_size=32, pad=pad, gap=gap)
    cell, label_w = 32, viz.label_width(names)
    left_w, right_w = label_w + 2 * (cell + pad) + pad, 3 * (cell + pad) + pad
    assert img.size == (left_w + gap + right_w, viz.LINE_H + 3 * (cell + pad) + pad)
    for i in range(3):
        y = viz.LINE_H + pad + i * (cell + pad) + cell // 2
        assert img.getpixel((label_w + pad + cell // 2, y)) == (255, 0, 0)  # first real image
        assert img.getpixel((left_w + gap + pad + cell // 2, y)) == (0, 255, 0)  # first generated image
    gap_strip = np.asarray(img.crop((left_w, 0, left_w + gap, img.height)))
    assert (gap_strip == 255).all()  # a visible white gap between the two groups
    header = viz.LINE_H
    assert dark(img, (label_w, 0, left_w, header)) and dark(img, (left_w + gap, 0, img.width, header))  # "real" …
    with pytest.raises(ValueError, match="same users"):
        viz.real_vs_generated(real[:2], generated, names)


SPLIT = {"image_size": 16, "channels": 3, "split": {"val_fraction": 0.25, "seed": 0, "strict_size": False}}


def make_data(root, per_user: int = 4) -> None:
    """Two users of constant 16-px images: user_a black, user_b white."""
    for name, value in (("user_a", 0), ("user_b", 255)):
        (root / name).mkdir(parents=True)
        for i in range(per_user):
            Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(root / name / f"{i:03d}.png")


def test_real_images_are_the_runs_training_split_of_each_user(tmp_path):
    make_data(tmp_path / "data")
    real = sample.real_images({"data": str(tmp_path / "data"), **SPLIT}, ["user_b", "user_a"], n=8)
    # 4 images a user, round(0.25 · 4) = 1 kept for validation: 3 training images each, in the order asked.
    assert [r.shape for r in real] == [(3, 3, 16, 16)] * 2
    assert (real[0] == 1).all() and (real[1] == -1).all()
    assert sample.real_images({"data": str(tmp_path / "data"), **SPLIT}, ["user_a"], n=2)[0].shape[0] == 2


@pytest.mark.parametrize("case", ["no folder", "no data key", "unknown user"])
def test_the_comparison_is_skipped_with_one_notice_when_the_data_cannot_be_read(tmp_path, capsys, case):
    make_data(tmp_path / "data")
    cfg = {"no folder": {"data": str(tmp_path / "moved"), **SPLIT}, "no data key": SPLIT,
           "unknown user": {"data": str(tmp_path / "data"), **SPLIT}}[case]
    names = ["user_a", "user_zz"] if case == "unknown user" else ["user_a"]
    assert sample.real_images(cfg, names, n=4) is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("notice: no real_vs_generated.png")
