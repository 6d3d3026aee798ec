"""The shared classifier cache: a second run folder on the same data loads the classifier instead of training it,
bit-identical to training it afresh; other data or settings miss; a damaged entry is retrained with a notice."""

import json
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

import tinyldm.evaluation.classifier as classifier_module
from tinyldm.data import UserImageFolder
from tinyldm.evaluation import classifier_for, evaluate_folders
from tinyldm.evaluation.__main__ import main as cli
from tinyldm.evaluation.classifier import cache_root, load_classifier

SPLIT = {"image_size": 16, "channels": 3, "val_fraction": 0.25, "seed": 0}
FAST = {"max_epochs": 2, "patience": 1}  # a weak classifier is enough to compare weights


def make_data(root, users=3, per_user=8, size=16, seed=0):
    """Noisy stripes, a different frequency per user; 16×16 RGB PNGs in root/<user>/."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:size, 0:size][1] / size
    for u in range(users):
        (root / f"user_{u}").mkdir(parents=True)
        for i in range(per_user):
            base = np.sin(2 * np.pi * (u + 1) * xx + rng.uniform(0, 2 * np.pi)) + 0.3 * rng.normal(size=(size, size))
            img = np.stack([base, np.roll(base, 3, axis=1), -base], axis=-1).clip(-1, 1)
            Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(root / f"user_{u}" / f"{i:03d}.png")
    return root


def splits(root, **changes):
    split = {**SPLIT, **changes}
    return UserImageFolder(root, split="train", **split), UserImageFolder(root, split="val", **split)


@contextmanager
def quick_training():
    """2 optimizer steps per epoch instead of 10, for every classifier in this file alike (these tests compare
    weights, they need no good ones), on one thread (faster for 16×16 batches, and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(classifier_module, "MIN_EPOCH_STEPS", 2)
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def quick():
    with quick_training():
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Real data (3 users × 8 images, 6 train / 2 validation each) and a cache holding its classifier (FAST)."""
    tmp = tmp_path_factory.mktemp("classifier_cache")
    data = make_data(tmp / "real")
    with quick_training():
        classifier_for(tmp / "first", *splits(data), cache=tmp / "cache", **FAST)
    return {"data": data, "cache": tmp / "cache"}


@pytest.fixture
def data(base):
    return base["data"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache: $TINYLDM_CACHE in tmp_path."""
    monkeypatch.setenv("TINYLDM_CACHE", str(tmp_path / "cache"))
    return cache_root()


@pytest.fixture
def filled(cache, base):
    """The cache with the classifier of base["data"] (FAST) in it."""
    shutil.copytree(base["cache"], cache)
    return cache


def entries(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the classifier was trained although the cache holds it")
    monkeypatch.setattr(classifier_module, "train_classifier", fail)


def test_second_run_folder_loads_the_cache_bit_identical_to_fresh_training(data, filled, tmp_path, monkeypatch,
                                                                           capsys):
    assert filled == tmp_path / "cache" / "classifier" and len(entries(filled)) == 1
    fresh, fresh_record = classifier_for(tmp_path / "fresh", *splits(data), **FAST)  # no cache: today's behaviour
    assert "classifier: trained" in capsys.readouterr().out and len(entries(filled)) == 1

    no_training(monkeypatch)
    model, record = classifier_for(tmp_path / "run2" / "classifier", *splits(data), cache=filled, **FAST)
    out = capsys.readouterr().out.strip()
    assert out == (f"classifier: from the cache {filled / entries(filled)[0]} (real-validation accuracy "
                   f"{record['results']['val_acc']:.1%}); copied to {tmp_path / 'run2' / 'classifier'}")
    a, b = fresh.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop_time = lambda r: {k: v for k, v in r["results"].items() if k != "train_seconds"}  # noqa: E731
    assert drop_time(record) == drop_time(fresh_record) and record["history"] == fresh_record["history"]

    # The run folder holds its own copy: reused from there alone, identical weights.
    copy, _ = load_classifier(tmp_path / "run2" / "classifier")
    assert all(torch.equal(a[k], copy.state_dict()[k]) for k in a)
    classifier_for(tmp_path / "run2" / "classifier", *splits(data), **FAST)
    assert "classifier: reused" in capsys.readouterr().out


def test_evaluation_numbers_are_unchanged_by_the_cache(data, cache, tmp_path, monkeypatch, capsys):
    val_ds = splits(data)[1]
    gen = tmp_path / "gen"
    for path, k, _ in val_ds.samples:  # the real validation images as a "generated" folder
        (gen / val_ds.classes[k]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, gen / val_ds.classes[k] / path.name)
    # Trained afresh without the cache (through the command line), trained into the cache, loaded from it.
    assert cli(["--real", str(data), "--generated", str(gen), "--out", str(tmp_path / "fresh"), "--val-fraction",
                "0.25", "--no-tstr", "--no-cache", "--device", "cpu"]) == 0
    fresh = json.loads((tmp_path / "fresh" / "report.json").read_text())
    assert not cache.exists()
    kw = {"val_fraction": 0.25, "with_tstr": False, "quiet": True}
    evaluate_folders(data, gen, tmp_path / "first", **kw)
    assert len(entries(cache)) == 1
    no_training(monkeypatch)
    capsys.readouterr()
    again = evaluate_folders(data, gen, tmp_path / "second", **kw)
    assert "classifier: from the cache" in capsys.readouterr().out
    assert again["classifier"]["val_acc"] == fresh["classifier"]["val_acc"]
    assert again["generated"] == fresh["generated"]  # every number, bit for bit
    assert (tmp_path / "second" / "classifier" / "model.safetensors").is_file()


def test_an_explicit_classifier_folder_leaves_the_cache_alone(data, cache, tmp_path):
    evaluate_folders(data, data, tmp_path / "out", val_fraction=0.25, classifier_dir=tmp_path / "mine",
                     with_tstr=False, quiet=True)
    assert (tmp_path / "mine" / "model.safetensors").is_file() and not cache.exists()


def test_the_same_images_elsewhere_hit_and_changed_or_added_images_miss(data, filled, tmp_path, monkeypatch, capsys):
    # A copy of the data in another folder: same pixels, same classifier.
    copy = shutil.copytree(data, tmp_path / "copy")
    with monkeypatch.context() as m:
        no_training(m)
        classifier_for(tmp_path / "b", *splits(copy), cache=filled, **FAST)
    assert "from the cache" in capsys.readouterr().out
    # One image changed: its pixels, not its name, size on disk or time stamp, are what counts.
    img = np.asarray(Image.open(copy / "user_0" / "000.png")).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(copy / "user_0" / "000.png")
    classifier_for(tmp_path / "c", *splits(copy), cache=filled, **FAST)
    assert "classifier: trained" in capsys.readouterr().out and len(entries(filled)) == 2
    # One image added.
    shutil.copy(copy / "user_1" / "001.png", copy / "user_1" / "100.png")
    classifier_for(tmp_path / "d", *splits(copy), cache=filled, **FAST)
    assert "classifier: trained" in capsys.readouterr().out and len(entries(filled)) == 3


@pytest.mark.parametrize("split, train", [({}, {"seed": 1}), ({}, {"max_epochs": 3}), ({"seed": 1}, {}),
                                          ({"val_fraction": 0.4}, {})])
def test_changed_settings_miss(data, filled, tmp_path, capsys, split, train):
    classifier_for(tmp_path / "b", *splits(data, **split), cache=filled, **{**FAST, **train})
    assert "classifier: trained" in capsys.readouterr().out and len(entries(filled)) == 2


def test_another_training_precision_misses(data, filled, tmp_path, monkeypatch, capsys):
    """bf16 autocast where the CPU has bf16 hardware, float32 elsewhere: a classifier trained in the other precision
    is other weights, so it must not be taken from the cache."""
    from tinyldm.runs import autocast_dtype

    other = "fp32" if autocast_dtype(torch.device("cpu"), "auto") is not None else "bf16"
    monkeypatch.setattr(classifier_module, "TRAIN_PRECISION", other)
    _, record = classifier_for(tmp_path / "b", *splits(data), cache=filled, **FAST)
    assert "classifier: trained" in capsys.readouterr().out and len(entries(filled)) == 2
    assert record["cache_key"]["precision"] == ("torch.float32" if other == "fp32" else "torch.bfloat16")


@pytest.mark.parametrize("damage", ["weights", "config", "other key"])
def test_a_damaged_entry_is_retrained_with_one_notice(data, filled, tmp_path, capsys, damage):
    entry = filled / entries(filled)[0]
    _, record = load_classifier(entry)
    if damage == "weights":
        (entry / "model.safetensors").write_bytes(b"cut short")
    elif damage == "config":
        (entry / "config.json").write_text('{"kind": "classif')
    else:  # a valid classifier filed under the wrong key
        saved = json.loads((entry / "config.json").read_text())
        saved["cache_key"]["seed"] = 7
        (entry / "config.json").write_text(json.dumps(saved))
    _, again = classifier_for(tmp_path / "b", *splits(data), cache=filled, **FAST)
    out = capsys.readouterr().out
    assert out.count("notice:") == 1 and f"the cached classifier {entry} is damaged" in out
    assert "classifier: trained" in out and again["results"]["val_acc"] == record["results"]["val_acc"]
    classifier_for(tmp_path / "c", *splits(data), cache=filled, **FAST)  # repaired
    assert "from the cache" in capsys.readouterr().out


def test_retrain_refreshes_the_entry_and_a_failed_write_leaves_none(data, filled, tmp_path, monkeypatch, capsys):
    entry = filled / entries(filled)[0]
    (entry / "model.safetensors").write_bytes(b"stale")  # whatever is there, retrain replaces it unread
    classifier_for(tmp_path / "a", *splits(data), cache=filled, retrain=True, **FAST)
    out = capsys.readouterr().out
    assert "classifier: trained" in out and "notice" not in out
    load_classifier(entry)
    assert entries(filled) == [entry.name]  # no temporary or moved-aside folders left

    # A write that fails halfway (disk full) leaves no entry, only a note; the evaluation goes on.
    real_write = classifier_module.atomic_write_json

    def full_disk(path, obj):
        if path.parent.name.startswith("."):  # the entry's temporary folder
            raise OSError(28, "No space left on device")
        real_write(path, obj)
    monkeypatch.setattr(classifier_module, "atomic_write_json", full_disk)
    shutil.rmtree(entry)
    classifier_for(tmp_path / "b", *splits(data), cache=filled, **FAST)
    assert "not cached in" in capsys.readouterr().out and entries(filled) == []
    assert (tmp_path / "b" / "model.safetensors").is_file()
