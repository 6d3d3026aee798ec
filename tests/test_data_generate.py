"""Generating the simulated set: CLI, determinism, resume, metadata, default_data_dir, and a user classifier."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tinyldm.data import DataError, UserImageFolder, datasets, default_data_dir
from tinyldm.data.grid import GAP, HEADER, LABEL_WIDTH
from tinyldm.data.grid import main as grid_main
from tinyldm.data.microdoppler import VERSION, draw_person, generate_dataset, main, render


def read(path):
    return np.asarray(Image.open(path))


def test_cli_writes_user_folders_and_metadata(tmp_path, capsys):
    out = tmp_path / "md"
    main(["--out", str(out), "--users", "3", "--per-user", "2", "--size", "32", "--workers", "1"])
    assert sorted(p.name for p in out.iterdir()) == ["captions.json", "metadata.json", "user_00", "user_01", "user_02"]
    assert sorted(p.name for p in (out / "user_01").iterdir()) == ["000.png", "001.png"]
    img = read(out / "user_02" / "001.png")
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["settings"]["version"] == VERSION and meta["settings"]["radar"]["carrier_hz"] == 24e9
    assert meta["people"]["user_01"] == pytest.approx(vars(draw_person(1, seed=0)))
    assert set(meta["images"]) == {f"user_{k:02d}/{i:03d}.png" for k in range(3) for i in range(2)}
    assert abs(meta["images"]["user_00/001.png"]["aspect_deg"]) <= 30
    assert "wrote 3 users x 2 images" in capsys.readouterr().out


def test_gray_images_are_single_channel(tmp_path):
    generate_dataset(tmp_path, users=1, per_user=1, size=24, gray=True, workers=1, progress=False)
    assert read(tmp_path / "user_00" / "000.png").shape == (24, 24)


def test_people_are_drawn_in_the_requested_ranges_and_do_not_depend_on_the_user_count():
    people = [draw_person(k, seed=0) for k in range(31)]
    heights, speeds = np.array([p.height for p in people]), np.array([p.speed for p in people])
    assert heights.min() >= 1.5 and heights.max() <= 1.95 and heights.std() > 0.08
    assert speeds.min() >= 0.8 and speeds.max() <= 1.8 and speeds.std() > 0.15
    assert draw_person(7, seed=0) == draw_person(7, seed=0) != draw_person(7, seed=1)


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_dataset(a, users=2, per_user=5, size=32, seed=3, workers=1, progress=False)
    generate_dataset(b, users=2, per_user=5, size=32, seed=3, workers=2, progress=False)
    for k in range(2):
        for i in range(5):
            name = f"user_{k:02d}/{i:03d}.png"
            np.testing.assert_array_equal(read(a / name), read(b / name), err_msg=name)
    other = render(0, 0, 32, seed=4)[0]
    assert not np.array_equal(other, read(a / "user_00/000.png"))  # another seed, another recording


def test_rerun_completes_a_partial_set_and_removes_temporaries(tmp_path):
    generate_dataset(tmp_path, users=2, per_user=2, size=16, workers=1, progress=False)
    kept = read(tmp_path / "user_00/000.png")
    (tmp_path / "user_01/001.png").unlink()
    (tmp_path / "user_01/.001.png.99999999.tmp").write_bytes(b"half a png")  # left by a killed process
    generate_dataset(tmp_path, users=2, per_user=2, size=16, workers=1, progress=False)
    assert (tmp_path / "user_01/001.png").is_file()
    assert not list(tmp_path.rglob("*.tmp"))
    np.testing.assert_array_equal(read(tmp_path / "user_00/000.png"), kept)
    np.testing.assert_array_equal(read(tmp_path / "user_01/001.png"), render(1, 1, 16)[0])


@pytest.mark.parametrize("args,message", [
    (["--size", "0"], "--size must be a positive integer"),
    (["--size", "-64"], "--size must be a positive integer"),
    (["--users", "0"], "--users must be a positive integer"),
])
def test_cli_rejects_bad_numbers_in_one_line(tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "md"), *args])
    assert message in str(e.value.code) and "\n" not in str(e.value.code)
    assert not (tmp_path / "md").exists()


def test_output_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out), "--users", "1", "--per-user", "1", "--size", "16"])
    assert f"output {out} is a file" in str(e.value.code)
    assert out.read_text() == "not a folder"


def test_output_inside_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot create the output folder .*file/md"):
        generate_dataset(tmp_path / "file" / "md", users=1, per_user=1, size=16, workers=1, progress=False)


def test_rerun_with_other_settings_is_refused(tmp_path):
    generate_dataset(tmp_path, users=1, per_user=1, size=16, workers=1, progress=False)
    with pytest.raises(DataError, match="other size"):
        generate_dataset(tmp_path, users=1, per_user=1, size=32, workers=1, progress=False)


def test_default_data_dir_generates_once_and_reuses(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(datasets.PRESETS, "tiny", (2, 3, 16))
    path = default_data_dir("tiny", root=tmp_path)
    assert path.parent == tmp_path and len(list(path.glob("user_*/*.png"))) == 6
    stamp = (path / "metadata.json").stat().st_mtime_ns
    assert "generating" in capsys.readouterr().out
    assert default_data_dir("tiny", root=tmp_path) == path
    assert (path / "metadata.json").stat().st_mtime_ns == stamp and capsys.readouterr().out == ""
    with pytest.raises(DataError, match="unknown data preset 'huge'"):
        default_data_dir("huge", root=tmp_path)


def logistic_regression_accuracy(train, val, pool=4, steps=300, l2=1e-2):
    """Multinomial logistic regression (full-batch Adam) on average-pooled, standardised pixels; val accuracy."""
    def features(ds):
        x = torch.stack([ds[i][0] for i in range(len(ds))])  # (N, C, H, W)
        y = torch.tensor([ds[i][1] for i in range(len(ds))])
        return F.avg_pool2d(x, pool).flatten(1), y  # (N, C H W / pool^2)

    (x_tr, y_tr), (x_va, y_va) = features(train), features(val)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-3
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    W = torch.zeros(x_tr.shape[1], len(train.classes), requires_grad=True)
    b = torch.zeros(len(train.classes), requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these matrices are tiny: two threads only wait on each other on a busy machine
    try:
        for _ in range(steps):
            loss = F.cross_entropy(x_tr @ W + b, y_tr) + l2 * W.square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return ((x_va @ W + b).argmax(1) == y_va).float().mean().item()


@pytest.mark.parametrize("per_user", [12, pytest.param(40, marks=pytest.mark.slow)])
def test_a_simple_classifier_tells_31_users_apart_but_not_perfectly(tmp_path, per_user):
    generate_dataset(tmp_path, users=31, per_user=per_user, size=64, seed=0, progress=False)
    train = UserImageFolder(tmp_path, image_size=64, split="train", val_fraction=0.25)
    val = UserImageFolder(tmp_path, image_size=64, split="val", val_fraction=0.25)
    acc = logistic_regression_accuracy(train, val)
    print(f"logistic regression on 16x16 pooled pixels, 31 users, {len(train)} train / {len(val)} held-out "
          f"images: accuracy {acc:.1%} (chance {1 / 31:.1%})")
    assert 5 / 31 < acc < 0.97  # five times chance, yet people are close enough to be confused


def test_example_grid_command(tmp_path):
    out = tmp_path / "grid.png"
    grid_main(["--out", str(out), "--users", "2", "--per-user", "2", "--size", "32"])
    img = read(out)
    assert img.shape[2] == 3 and img.shape[0] > 2 * 32 and img.shape[1] > 2 * 32
    top, left = HEADER + 1 * (32 + GAP), LABEL_WIDTH + 1 * (32 + GAP)  # row = user 1, column = recording 1
    np.testing.assert_array_equal(img[top:top + 32, left:left + 32], render(1, 1, 32)[0])
