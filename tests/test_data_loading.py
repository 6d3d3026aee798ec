"""UserImageFolder: folder and CSV modes, conversions, the split, and every bad-input case (one-line DataError)."""

import numpy as np
import pytest
import torch
from PIL import Image

from tinyldm.data import DataError, UserImageFolder, to_tensor, to_uint8
from tinyldm.data.datasets import stratified_split


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
    tr, va = {p for p, _, _ in train.samples}, {p for p, _, _ in val.samples}
    assert not tr & va and len(tr | va) == 30
    assert {p for p, _, _ in UserImageFolder(tmp_path, 16, split="val", val_fraction=0.2, seed=1).samples} == va
    assert {p for p, _, _ in UserImageFolder(tmp_path, 16, split="val", val_fraction=0.2, seed=2).samples} != va
    assert train.info()["class_to_idx"] == train.class_to_idx


def test_conversions_to_the_configured_channels(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    save(tmp_path / "u" / "rgba.png", np.dstack([red, np.full((8, 8), 255, np.uint8)]))  # opaque
    palette = Image.fromarray(red).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.save(tmp_path / "u" / "palette.png")
    save(tmp_path / "u" / "gray16.png", np.full((8, 8), 65535, np.uint16))  # PIL mode I;16
    save(tmp_path / "u" / "gray8.bmp", np.zeros((8, 8), np.uint8))
    save(tmp_path / "u" / "photo.jpg", red, quality=100)
    save(tmp_path / "u" / "scan.tiff", red)
    rgb = {p.name: x for (p, _, _), x in zip(UserImageFolder(tmp_path, 8, 3, split="all").samples,
                                             UserImageFolder(tmp_path, 8, 3, split="all")._cache)}
    for name in ("rgba.png", "palette.png", "scan.tiff"):
        assert rgb[name].tolist() == red.tolist(), name  # opaque alpha dropped, palette expanded
    assert np.abs(rgb["photo.jpg"].astype(int) - red).max() <= 3
    assert (rgb["gray16.png"] == 255).all() and (rgb["gray8.bmp"] == 0).all()  # 16-bit scaled, gray replicated
    gray = UserImageFolder(tmp_path, 8, 1, split="all")
    assert gray[0][0].shape == (1, 8, 8)
    by_name = {p.name: x for (p, _, _), x in zip(gray.samples, gray._cache)}
    assert by_name["gray16.png"].max() == 255 and by_name["rgba.png"].max() == round(0.299 * 255)  # ITU-R 601 luma


def test_other_sizes_are_windowed_or_squashed_with_a_notice_or_rejected_when_strict(tmp_path, capsys):
    # Replaces the test of the old behaviour (every image squashed to 16x16 with "notice: resized ..."): a tall
    # 32x40 image now keeps its aspect (16x20) and gives two 16x16 windows; aspect="squash" is the old behaviour.
    make_folder(tmp_path, n=3, size=16)
    save(tmp_path / "bob" / "big.png", np.zeros((40, 32, 3), np.uint8))
    ds = UserImageFolder(tmp_path, image_size=16, split="all")
    assert len(ds) == 11 and ds.n_files == 10 and ds[3][0].shape == ds[4][0].shape == (3, 16, 16)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"notice: 1 of 10 images in {tmp_path} are 32×40 (aspect 0.80): resized to 16×20 keeping the "
                   f"aspect and cut into 2 square 16×16 windows along the height (offsets 0, 4); aspect='squash' "
                   f"stretches them to 16×16 instead"]
    squashed = UserImageFolder(tmp_path, image_size=16, split="all", aspect="squash")
    assert len(squashed) == 10 and squashed[3][0].shape == (3, 16, 16)
    assert capsys.readouterr().out.strip().splitlines() == [
        f"notice: 1 of 10 images in {tmp_path} are 32×40 (aspect 0.80): squashed to 16×16 (the height shrinks "
        f"1.25× more than the width)"]
    for aspect in ("windows", "squash"):
        with pytest.raises(DataError) as e:
            UserImageFolder(tmp_path, image_size=16, split="all", strict_size=True, aspect=aspect)
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
                             ({"val_fraction": 1.0}, "val_fraction must be in [0, 1)"),
                             ({"aspect": "crop"}, "aspect must be 'windows'")]:
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


# Data set traps: each one is a one-line DataError or notice, and no image is ever in both splits.


def write_csv(path, rows, **kwargs):
    path.write_text("\n".join(rows) + "\n", **kwargs)
    return path


def resolved(ds):
    return {p.resolve() for p, _, _ in ds.samples}


def test_csv_duplicate_rows_are_dropped_with_a_notice_and_the_split_does_not_leak(tmp_path, capsys):
    make_folder(tmp_path / "imgs", users=("a", "b"), n=4)
    rows = [f"imgs/{u}/{i:03d}.png,{k}" for k, u in enumerate("ab") for i in range(4)]
    csv_path = write_csv(tmp_path / "list.csv", ["path,user", *rows, rows[0], f"./{rows[5]}", rows[0]])
    train = UserImageFolder(csv_path, 16, split="train", val_fraction=0.5)
    val = UserImageFolder(csv_path, 16, split="val", val_fraction=0.5)
    notice_line = (f"notice: dropped 3 duplicate images in {csv_path} (e.g. row 10 repeats row 2); "
                   "each image is used once")
    assert capsys.readouterr().out.strip().splitlines() == [notice_line, notice_line]
    assert not resolved(train) & resolved(val) and len(resolved(train) | resolved(val)) == 8
    assert val.counts() == {"0": 2, "1": 2}


def test_csv_image_under_two_users(tmp_path):
    make_folder(tmp_path / "imgs", users=("a",), n=2)
    write_csv(tmp_path / "list.csv", ["imgs/a/000.png,1", "imgs/a/001.png,1", "./imgs/a/000.png,2"])
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path / "list.csv", 16)
    one_line_error(e, tmp_path / "list.csv", "000.png", "user 1 (row 1)", "user 2 (row 3)", "one user")


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_a_utf8_bom_is_read(tmp_path, header):
    make_folder(tmp_path / "imgs", users=("a",), n=2)
    rows = ["imgs/a/000.png,1", "imgs/a/001.png,1"]
    write_csv(tmp_path / "list.csv", ["path,user"] * header + rows, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    assert (tmp_path / "list.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    ds = UserImageFolder(tmp_path / "list.csv", 16, split="all")
    assert ds.classes == ["1"] and [p.name for p, _, _ in ds.samples] == ["000.png", "001.png"]


def test_csv_not_utf8_or_with_negative_users(tmp_path):
    make_folder(tmp_path / "imgs", users=("a",), n=1)
    (tmp_path / "latin1.csv").write_bytes("imgs/a/caf\xe9.png,1\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path / "latin1.csv", 16)
    one_line_error(e, "latin1.csv", "not UTF-8", "save it as UTF-8")
    write_csv(tmp_path / "neg.csv", ["imgs/a/000.png,-1"])  # "-1" sorts before "-10" as text, after it by value
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path / "neg.csv", 16)
    one_line_error(e, "neg.csv row 1", "user -1 is negative")


def test_numeric_user_ids_csv_by_value_folders_as_text_with_a_notice(tmp_path, capsys):
    make_folder(tmp_path / "csv", users=("a", "b", "c"), n=1)
    write_csv(tmp_path / "list.csv", ["csv/a/000.png,10", "csv/b/000.png,2", "csv/c/000.png,100"])
    assert UserImageFolder(tmp_path / "list.csv", 16, split="all").classes == ["002", "010", "100"]
    make_folder(tmp_path / "dirs", users=("2", "10"), n=1)
    assert UserImageFolder(tmp_path / "dirs", 16, split="all").classes == ["10", "2"]  # text order, documented
    assert capsys.readouterr().out.strip() == (
        f"notice: user folders in {tmp_path / 'dirs'} are numbers of different widths (e.g. 2 and 10); they are "
        f"sorted as text, not by value: zero-pad the names (e.g. 02) for numeric order")
    make_folder(tmp_path / "padded", users=("02", "10"), n=1)
    assert UserImageFolder(tmp_path / "padded", 16, split="all").classes == ["02", "10"]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("target", ["root", "ancestor", "other user"])
def test_user_folder_linked_to_the_root_or_another_user(tmp_path, target):
    root = make_folder(tmp_path / "data", n=2)
    link = root / "zoe"
    link.symlink_to({"root": root, "ancestor": tmp_path, "other user": root / "bob"}[target])
    with pytest.raises(DataError) as e:
        UserImageFolder(root, 16)
    if target == "other user":
        one_line_error(e, root / "bob", link, "same folder", "remove the link")
    else:
        one_line_error(e, link, "contains the data folder", "replace the link")


def test_linked_image_files_under_two_users_or_twice_under_one(tmp_path, capsys):
    make_folder(tmp_path, n=2)
    (tmp_path / "alice" / "again.png").symlink_to(tmp_path / "alice" / "000.png")
    assert len(UserImageFolder(tmp_path, 16, split="all")) == 6
    assert capsys.readouterr().out.strip() == (f"notice: dropped 1 duplicate images in {tmp_path} "
                                               f"(e.g. alice/again.png repeats alice/000.png); each image is used once")
    (tmp_path / "bob" / "stolen.png").symlink_to(tmp_path / "alice" / "001.png")
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 16)
    one_line_error(e, "stolen.png", "user alice (alice/001.png)", "user bob (bob/stolen.png)", "one user")


def test_images_beside_user_folders_are_ignored_with_a_notice(tmp_path, capsys):
    make_folder(tmp_path, n=2)
    save(tmp_path / "stray_b.png", np.zeros((16, 16, 3), np.uint8))
    save(tmp_path / "stray_a.jpg", np.zeros((16, 16, 3), np.uint8))
    assert len(UserImageFolder(tmp_path, 16, split="all")) == 6
    assert capsys.readouterr().out.strip() == (
        f"notice: ignored 2 images lying directly in {tmp_path} (e.g. stray_a.jpg); only images in user folders "
        f"are used: move them into their user's folder")


def test_the_split_refuses_an_image_in_both_train_and_val(tmp_path):
    make_folder(tmp_path, users=("alice",), n=1)
    same = tmp_path / "alice" / "000.png"
    with pytest.raises(DataError) as e:
        stratified_split({"alice": [same, tmp_path / "alice" / ".." / "alice" / "000.png"]}, "train", 0.5, seed=0)
    one_line_error(e, "000.png", "both the train and the val split")
