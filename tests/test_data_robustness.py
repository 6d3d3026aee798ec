"""Issue 33, data: radar-style values read by the documented rule (values.py) or refused, transparency, layout traps,
imbalance, constructor arguments, CSV paths and decompression bombs: each handled with a notice or one DataError."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tinyldm.data import DataError, UserImageFolder


def save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def save_npy(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


def one_line_error(excinfo, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg and excinfo.value.__cause__ is None
    for fragment in fragments:
        assert str(fragment) in msg, (fragment, msg)


def levels(ds):
    """{file name: uint8 (H, W, C) levels} of a dataset's cache."""
    return {p.name: x for (p, _, _), x in zip(ds.samples, ds._cache)}


def ramp(lo, hi, dtype, size=8):
    return np.linspace(lo, hi, size * size).reshape(size, size).astype(dtype)  # (H, W)


# 1. Values: the rule of tinyldm/data/values.py, refusals with one line.

def test_float_tiff_in_db_maps_the_data_sets_range_with_a_notice(tmp_path, capsys):
    for user in ("a", "b"):
        for i in range(2):
            save(tmp_path / user / f"{i}.tiff", ramp(-60, 0, np.float32) if i == 0 else ramp(-50, -10, np.float32))
    ds = UserImageFolder(tmp_path, 8, 1, split="all")
    assert "[-60, 0] → [−1, 1]" in capsys.readouterr().out  # the data set's range, said at start-up
    x = levels(ds)["0.tiff"][..., 0]
    assert x.min() == 0 and x.max() == 255  # -60 dB -> 0, 0 dB -> 255: no longer all black
    mid = levels(ds)["1.tiff"][..., 0]
    assert mid.min() == round(10 / 60 * 255) and mid.max() == round(50 / 60 * 255)  # one range for every file


def test_12_bit_values_in_16_bit_pngs_read_as_12_bit(tmp_path, capsys):
    for user in ("a", "b"):
        save(tmp_path / user / "0.png", ramp(0, 4095, np.uint16))
        save(tmp_path / user / "1.png", np.full((8, 8), 2048, np.uint16))
    ds = UserImageFolder(tmp_path, 8, 3, split="all")
    assert "read as 12-bit, 0 … 4095" in capsys.readouterr().out
    assert levels(ds)["0.png"].max() == 255 and (levels(ds)["1.png"] == round(2048 * 255 / 4095)).all()


def test_npy_arrays_follow_the_same_rule_and_uint8_equals_png(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    save(tmp_path / "a" / "0.png", rgb)
    save_npy(tmp_path / "b" / "0.npy", rgb)
    ds = levels(UserImageFolder(tmp_path, 8, 3, split="all"))
    assert (ds["0.png"] == rgb).all() and (ds["0.npy"] == rgb).all()  # 8-bit read bit-identically

    db = tmp_path / "db"
    gray = ramp(-40, 0, np.float32)  # (H, W) in dB
    for k, a in enumerate([gray, gray[..., None], np.repeat(gray[..., None], 3, axis=2)]):  # (H, W), (H, W, 1|3)
        save_npy(db / f"u{k}" / "0.npy", a)
    out = levels(UserImageFolder(db, 8, 1, split="all"))
    assert all(x.min() == 0 and x.max() == 255 for x in out.values())


@pytest.mark.parametrize("case", ["nan", "inf", "complex", "wild", "shape", "negative"])
def test_values_that_cannot_be_read_right_are_refused(tmp_path, case):
    for user in ("a", "b", "c"):
        save_npy(tmp_path / user / "0.npy", ramp(-60, 0, np.float32))
    bad = tmp_path / "c" / "bad.npy"
    a = ramp(-60, 0, np.float32)
    if case == "nan":
        a[0, 0] = np.nan
    elif case == "inf":
        a[0, 0] = -np.inf  # log10(0)
    elif case == "complex":
        a = a.astype(np.complex64)
    elif case == "wild":
        a = ramp(0, 1e6, np.float32)  # linear power among dB files
    elif case == "shape":
        a = np.zeros((3, 8, 8), np.float32)  # channels first
    else:
        a = ramp(-5, 5, np.int16)
    save_npy(bad, a)
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 8, split="all")
    one_line_error(e, bad, {"nan": "NaN", "inf": "infinite", "complex": "complex", "wild": "far from the other",
                            "shape": "channels last", "negative": "negative"}[case])


def test_value_range_fixes_the_range_and_is_checked(tmp_path, capsys):
    for user in ("a", "b"):
        save(tmp_path / user / "0.tiff", ramp(-80, 0, np.float32))
    x = levels(UserImageFolder(tmp_path, 8, 1, split="all", value_range=(-40, 0)))["0.tiff"]
    assert "value_range [-40, 0]" in capsys.readouterr().out
    assert (x[:4] == 0).all() and x.max() == 255  # below -40 dB clipped to the floor
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 8, value_range=(0, -40))
    one_line_error(e, "value_range must be")


# 2. Transparency.

def test_transparent_pixels_are_composited_onto_black_with_a_notice(tmp_path, capsys):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    alpha = np.full((8, 8), 255, np.uint8)
    save(tmp_path / "a" / "opaque.png", np.dstack([red, alpha]))
    alpha[:4] = 0
    alpha[4:, :4] = 128
    save(tmp_path / "b" / "holes.png", np.dstack([red, alpha]))
    x = levels(UserImageFolder(tmp_path, 8, 3, split="all"))
    out = capsys.readouterr().out
    assert "1 images" in out and "holes.png: 75 % of it" in out and "composited onto black" in out
    assert (x["opaque.png"] == red).all()  # an opaque image reads exactly as its RGB
    assert (x["holes.png"][:4] == 0).all() and (x["holes.png"][4:, 4:, 0] == 200).all()
    assert abs(int(x["holes.png"][5, 1, 0]) - 100) <= 1  # 200 · 128/255


# 3. Layout traps named at start-up.

def test_site_user_nesting_hidden_users_and_broken_links_are_named(tmp_path, capsys):
    img = np.zeros((4, 4, 3), np.uint8)
    for site, users in (("site_A", ("alice", "bob")), ("site_B", ("carol", "dave"))):
        for user in users:
            for i in range(2):
                save(tmp_path / site / user / f"{i}.png", img)
    save(tmp_path / ".dotuser" / "0.png", img)
    (tmp_path / "site_A" / "alice" / "9.png").symlink_to(tmp_path / "gone.png")
    ds = UserImageFolder(tmp_path, 4, split="all")
    out = capsys.readouterr().out
    assert ds.classes == ["site_A", "site_B"]  # the first level is the user level, as documented...
    assert "hold their images only in sub-folders" in out and "site_A (alice, bob" in out  # ...and said
    assert f"pass the site folder (e.g. {tmp_path / 'site_A'})" in out
    assert "hidden folders holding images" in out and ".dotuser" in out
    assert "1 broken links" in out and "site_A/alice/9.png → " in out


def test_one_users_sessions_in_a_single_subfolder_are_not_flagged(tmp_path, capsys):
    for user in ("alice", "bob"):
        for i in range(2):
            save(tmp_path / user / "day1" / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    UserImageFolder(tmp_path, 4, split="all")
    assert capsys.readouterr().out == ""


# 4. Imbalance.

def test_far_from_median_users_and_users_without_validation_images_are_named(tmp_path, capsys):
    img = np.zeros((4, 4, 3), np.uint8)
    for user, n in (("big", 60), ("mid1", 10), ("mid2", 10), ("solo", 1)):
        for i in range(n):
            save(tmp_path / user / f"{i:03d}.png", img)
    UserImageFolder(tmp_path, 4, split="train", val_fraction=0.1)
    out = capsys.readouterr().out
    assert "median user's 10" in out and "solo 1" in out and "big 60" in out
    assert "1 users get no validation image" in out and ": solo" in out
    UserImageFolder(tmp_path, 4, split="val", val_fraction=0.1)
    assert capsys.readouterr().out == ""  # said once, by the train split


# 5. Constructor arguments.

@pytest.mark.parametrize("kwargs, fragment", [
    ({"root": None}, "root must be a folder"), ({"image_size": True}, "image_size must be a positive integer"),
    ({"image_size": 16.0}, "image_size must be"), ({"channels": True}, "channels must be 1"),
    ({"val_fraction": None}, "val_fraction must be"), ({"seed": "0"}, "seed must be an integer"),
    ({"transform": 3}, "transform must be")])
def test_bad_constructor_arguments_are_one_line_each(tmp_path, kwargs, fragment):
    save(tmp_path / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError) as e:
        UserImageFolder(**{"root": tmp_path, "image_size": 4, **kwargs})
    one_line_error(e, fragment)


# 6. CSV paths.

def test_csv_paths_are_read_from_the_csvs_folder_and_cwd_only_paths_are_explained(tmp_path, monkeypatch):
    for user in ("a", "b"):
        save(tmp_path / "set" / "imgs" / user / "0.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "set" / "list.csv").write_text("imgs/a/0.png,0\nimgs/b/0.png,1\n")
    monkeypatch.chdir(tmp_path / "set" / "imgs")  # elsewhere: the CSV means the same
    assert len(UserImageFolder(tmp_path / "set" / "list.csv", 4, split="all")) == 2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "set" / "cwd.csv").write_text("set/imgs/a/0.png,0\n")
    with pytest.raises(DataError) as e:
        UserImageFolder("set/cwd.csv", 4, split="all")
    one_line_error(e, "read from the CSV's folder set", "write it as imgs/a/0.png")


# 7. Decompression bombs.

def png_header_only(path, w, h):
    """A PNG whose header says w x h (8-bit gray) with one empty compressed row: opening it is enough to judge."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_named_with_its_size_not_called_corrupt(tmp_path):
    save(tmp_path / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    bomb = png_header_only(tmp_path / "b" / "huge.png", 30000, 30000)
    with pytest.raises(DataError) as e:
        UserImageFolder(tmp_path, 4, split="all")
    one_line_error(e, bomb, "900 M pixels", "MAX_IMAGE_PIXELS", "resize it first")
    assert "corrupt" not in str(e.value)
