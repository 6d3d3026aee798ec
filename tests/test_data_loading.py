"""UserImageFolder: folder and CSV modes, conversions, the split, and every bad-input case (one-line DataError)."""

import numpy as np
import pytest
import torch
from PIL import Image

from tinyldm.data import DataError, UserImageFolder, to_tensor, to_uint8


def save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def make_folder(root, users=("alice", "bob", "carol"), n=10, size=16):
    rng = np.random.default_rng(0)
    for name in users:
        for i in range(n):
            save(root / name / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return root


def one_line_error(excinfo, *fragments):
    """The DataError is one line, names what it must name, and hides the library's internal traceback."""
    msg = str(excinfo.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert str(fragment) in msg, (fragment, msg)
    assert excinfo.value.__cause__ is None


def test_items_are_tensors_in_minus1_1_with_sorted_user_ids(tmp_path):
    make_folder(tmp_path, users=("zed", "amy", "Bob"))
    ds = UserImageFolder(tmp_path, image_size=16, channels=3, split="all")
    assert ds.classes == ["Bob", "amy", "zed"] and ds.class_to_idx == {"Bob": 0, "amy": 1, "zed": 2}
    x, user = ds[len(ds) - 1]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and user == 2
    raw = np.array(Image.open(tmp_path / "zed" / "009.png"))
    torch.testing.assert_close(x, torch.from_numpy(raw).permute(2, 0, 1).float() / 127.5 - 1)  # x / 127.5 - 1
    assert to_uint8(x).numpy().tolist() == raw.tolist()  # exact round trip


def test_split_is_stratified_disjoint_and_seeded(tmp_path):
    make_folder(tmp_path, n=10)
    train = UserImageFolder(tmp_path, 16, split="train", val_fraction=0.2, seed=1)
    val = UserImageFolder(tmp_path, 16, split="val", val_fraction=0.2, seed=1)
    assert val.counts() == {"alice": 2, "bob": 2, "carol": 2} and len(train) == 24
    tr, va = {p for p, _ in train.samples}, {p for p, _ in val.samples}
    assert not tr & va and len(tr | va) == 30
    assert {p for p, _ in UserImageFolder(tmp_path, 16, split="val", val_fraction=0.2, seed=1).samples} == va
    assert {p for p, _ in UserImageFolder(tmp_path, 16, split="val", val_fraction=0.2, seed=2).samples} != va
    assert train.info()["class_to_idx"] == train.class_to_idx


def test_conversions_to_the_configured_channels(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    save(tmp_path / "u" / "rgba.png", np.dstack([red, np.full((8, 8), 77, np.uint8)]))
    palette = Image.fromarray(red).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.save(tmp_path / "u" / "palette.png")
    save(tmp_path / "u" / "gray16.png", np.full((8, 8), 65535, np.uint16))  # PIL mode I;16
    save(tmp_path / "u" / "gray8.bmp", np.zeros((8, 8), np.uint8))
    save(tmp_path / "u" / "photo.jpg", red, quality=100)
    save(tmp_path / "u" / "scan.tiff", red)
    rgb = {p.name: x for (p, _), x in zip(UserImageFolder(tmp_path, 8, 3, split="all").samples,
                                          UserImageFolder(tmp_path, 8, 3, split="all")._cache)}
    for name in ("rgba.png", "palette.png", "scan.tiff"):
        assert rgb[name].tolist() == red.tolist(), name  # alpha dropped, palette expanded
    assert np.abs(rgb["photo.jpg"].astype(int) - red).max() <= 3
    assert (rgb["gray16.png"] == 255).all() and (rgb["gray8.bmp"] == 0).all()  # 16-bit scaled, gray replicated
    gray = UserImageFolder(tmp_path, 8, 1, split="all")
    assert gray[0][0].shape == (1, 8, 8)
    by_name = {p.name: x for (p, _), x in zip(gray.samples, gray._cache)}
    assert by_name["gray16.png"].max() == 255 and by_name["rgba.png"].max() == round(0.299 * 255)  # ITU-R 601 luma


def test_other_sizes_are_resized_with_a_notice_or_rejected_when_strict(tmp_path, capsys):
    make_folder(tmp_path, n=3, size=16)
    save(tmp_path / "bob" / "big.png", np.zeros((40, 32, 3), np.uint8))
    ds = UserImageFolder(tmp_path, image_size=16, split="all")
    assert ds[3][0].shape == (3, 16, 16)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"notice: resized 1 of 10 images in {tmp_path} (32x40) to 16x16"]
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, image_size=16, split="all", strict_size=True)
    one_line_error(e, "1 images", "big.png", "32x40", "strict")


def test_non_image_files_are_skipped_and_counted(tmp_path, capsys):
    make_folder(tmp_path, n=2)
    (tmp_path / "alice" / "notes.txt").write_text("x")
    (tmp_path / "bob" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "metadata.json").write_text("{}")  # files beside the user folders are not users: ignored
    ds = UserImageFolder(tmp_path, 16, split="all")
    assert len(ds) == 6
    assert capsys.readouterr().out.strip() == f"notice: skipped 2 non-image files in {tmp_path} (e.g. alice/notes.txt)"


def test_empty_root_and_missing_root(tmp_path):
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 16)
    one_line_error(e, f"no user folders in {tmp_path}", "empty")
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path / "nope", 16)
    one_line_error(e, "does not exist", "--data")


def test_images_loose_in_root_are_explained(tmp_path):
    save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 4)
    one_line_error(e, "1 images lie directly in it", "sub-folder")


def test_user_folder_without_images(tmp_path):
    make_folder(tmp_path, n=2)
    (tmp_path / "dave").mkdir()
    (tmp_path / "dave" / "readme.md").write_text("later")
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 16)
    one_line_error(e, tmp_path / "dave", "has no images", "remove the folder")


@pytest.mark.parametrize("kind", ["zero-byte", "garbage", "truncated"])
def test_broken_images_are_named(tmp_path, kind):
    make_folder(tmp_path, n=2)
    bad = tmp_path / "bob" / "bad.png"
    if kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "garbage":
        bad.write_bytes(b"this is not a png at all" * 10)
    else:
        save(bad, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 16, split="all")
    one_line_error(e, bad, {"zero-byte": "empty (0 bytes)", "garbage": "not a valid image",
                            "truncated": "corrupt or truncated"}[kind])


def test_bad_arguments(tmp_path):
    make_folder(tmp_path, n=2)
    for kwargs, fragment in [({"image_size": 0}, "image_size must be a positive integer"),
                             ({"channels": 4}, "channels must be 1"), ({"split": "test"}, "split must be"),
                             ({"val_fraction": 1.0}, "val_fraction must be in [0, 1)")]:
        with pytest.raises(DataError) as e:
            UserImageFolder(tmp_path, **{"image_size": 16, **kwargs})
        one_line_error(e, fragment)
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 16, split="val", val_fraction=0.0)
    one_line_error(e, "'val' split", "empty")


def test_csv_mode(tmp_path):
    make_folder(tmp_path / "imgs", users=("a", "b"), n=3)
    rows = ["path,user"] + [f"imgs/a/{i:03d}.png,10" for i in range(3)] + [f"imgs/b/{i:03d}.png,2" for i in range(3)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    for ds in (UserImageFolder.from_csv(tmp_path / "list.csv", image_size=16, split="all"),
               UserImageFolder(tmp_path / "list.csv", image_size=16, split="all")):
        assert ds.classes == ["02", "10"] and len(ds) == 6  # numeric order: 2 before 10
        assert ds[0][1] == 0 and ds[5][1] == 1
        assert ds.samples[0][0] == tmp_path / "imgs" / "b" / "000.png"


@pytest.mark.parametrize("row,fragments", [
    ("imgs/a/404.png,1", ["row 2", "404.png", "does not exist"]),
    ("imgs/a/000.png,alice", ["row 2", "'alice' is not an integer"]),
    ("imgs/a/000.png", ["row 2", "needs two columns"]),
])
def test_csv_bad_rows(tmp_path, row, fragments):
    make_folder(tmp_path / "imgs", users=("a",), n=1)
    (tmp_path / "list.csv").write_text(f"imgs/a/000.png,1\n{row}\n")
    with pytest.raises(DataError) as e:
        UserImageFolder.from_csv(tmp_path / "list.csv", image_size=16)
    one_line_error(e, tmp_path / "list.csv", *fragments)


def test_csv_missing_or_empty(tmp_path):
    with pytest.raises(DataError) as e:
        UserImageFolder.from_csv(tmp_path / "none.csv", image_size=16)
    one_line_error(e, "none.csv", "does not exist")
    (tmp_path / "empty.csv").write_text("path,user\n")
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path / "empty.csv", image_size=16)
    one_line_error(e, "has no rows")


def test_to_tensor_matches_the_seed_normalisation():
    x = to_tensor(np.array([[[0, 51, 255]]], np.uint8))  # (1, 1, 3) -> (3, 1, 1)
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 51 / 127.5 - 1, 1.0]))
