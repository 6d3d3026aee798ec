"""The evaluation end to end: the classifier, folders against real data, bad input, a run with a sweep."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import train_ldm
import train_vae
from tests.test_train_vae import make_folder
from tinyldm.data import UserImageFolder, default_data_dir
from tinyldm.diffusion import SamplingConfig, nfe
from tinyldm.evaluation import ClassifierConfig, classifier_for, evaluate_folders, evaluate_run, train_classifier
from tinyldm.evaluation.__main__ import main as cli
from tinyldm.evaluation.classifier import stack_split
from tinyldm.evaluation.pipeline import headline, images_per_user, quantize, seed_spread

SPLIT = {"image_size": 32, "channels": 3, "val_fraction": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """4 users × 12 stripe images at 32×32 (9 train / 3 validation per user) and a deliberately weak classifier
    (two short epochs), so its validation accuracy is not a trivial 100 %."""
    tmp = tmp_path_factory.mktemp("evaluation")
    root = make_folder(tmp / "real", users=4, per_user=12, size=32)
    train_ds, val_ds = UserImageFolder(root, split="train", **SPLIT), UserImageFolder(root, split="val", **SPLIT)
    _, record = classifier_for(tmp / "classifier", train_ds, val_ds, seed=0, max_epochs=2, patience=2)
    return {"root": root, "classifier": tmp / "classifier", "val_ds": val_ds, "record": record, "tmp": tmp}


def copy_split(ds, out: Path) -> Path:
    """The files of a split as a generated folder <user>/<image> (byte-identical PNGs)."""
    for path, k, _ in ds.samples:
        (out / ds.classes[k]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / ds.classes[k] / path.name)
    return out


def test_condition_accuracy_on_real_validation_images_equals_the_classifier_accuracy(real, tmp_path, capsys):
    gen = copy_split(real["val_ds"], tmp_path / "gen")
    report = evaluate_folders(real["root"], gen, tmp_path / "out", val_fraction=0.25, classifier_dir=real["classifier"],
                              with_tstr=False)
    assert "classifier: reused" in capsys.readouterr().out
    ceiling = real["record"]["results"]["val_acc"]
    assert 0.25 < ceiling < 1.0  # neither chance nor trivial, so the equality below says something
    assert report["generated"]["condition_accuracy"]["top1"] == ceiling
    assert report["classifier"]["val_acc"] == ceiling
    # The same images as the reference: every distance is 0, precision and recall 1.
    g = report["generated"]
    assert g["fd"] == pytest.approx(0, abs=1e-6) and g["precision"] == 1 and g["recall"] == 1
    # The validation images are the fresh real images of the near-copy baseline: in pixels the same share exactly;
    # in features up to one image (their features come from other batches, so may differ in the last bits).
    m = g["memorisation"]
    assert m["pixels"]["near_copies"] == m["pixels"]["near_copies_real"] and m["pixels"]["median_ratio"] == 1
    assert m["near_copies"] == pytest.approx(m["near_copies_real"], abs=1.01 / g["n"])
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["generated"]["condition_accuracy"]["top1"] == ceiling
    assert saved["generated"]["memorisation"]["near_copies"] == m["near_copies"]
    for name in ("report.md", "confusion.png", "per_user_accuracy.png", "near_copies.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert "![closest generated/training pairs](near_copies.png)" in (tmp_path / "out" / "report.md").read_text()


def test_training_is_deterministic_for_a_seed():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 3, 16, 16, generator=g) * 2 - 1, torch.arange(3).repeat(8)
    config = ClassifierConfig(num_classes=3, image_size=16)
    before = torch.random.get_rng_state()
    a, _ = train_classifier(x, y, config, fixed_steps=6, batch_size=8, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone
    b, _ = train_classifier(x, y, config, fixed_steps=6, batch_size=8, seed=1)
    c, _ = train_classifier(x, y, config, fixed_steps=6, batch_size=8, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def bad_folder(real, tmp_path, size=32, grey=False, names=("user_00", "user_01"), per_user=4):
    from PIL import Image

    for name in names:
        (tmp_path / "bad" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_user):
            Image.new("L" if grey else "RGB", (size, size)).save(tmp_path / "bad" / name / f"{i:03d}.png")
    return tmp_path / "bad"


@pytest.mark.parametrize("case, expected", [
    ({"size": 16}, "is 16×16 with 3 channel(s) but the real images are 32×32 with 3"),
    ({"grey": True}, "with 1 channel(s) but the real images are 32×32 with 3"),
    ({"names": ("user_00", "alice")}, "user folders ['alice'] that are not users of the real data"),
    ({"names": ("user_00",), "per_user": 3}, "needs at least 4 generated images, got 3"),
])
def test_bad_generated_folders_get_one_line(real, tmp_path, capsys, case, expected):
    gen = bad_folder(real, tmp_path, **case)
    rc = cli(["--real", str(real["root"]), "--generated", str(gen), "--out", str(tmp_path / "out"),
              "--val-fraction", "0.25", "--classifier", str(real["classifier"]), "--no-tstr"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("evaluate.py: error: ")
    assert expected in err


def test_cli_asks_for_a_complete_request(capsys):
    assert cli(["--real", "x"]) == 2
    assert "give --run RUN_DIR, or both --real DIR and --generated DIR" in capsys.readouterr().err


def classifier_accuracy_on_simulated_users(tmp_path, users: int) -> tuple[float, dict]:
    """The classifier of the first `users` users of the tiny simulated set (generated once, ~20 s, if missing)."""
    data = default_data_dir("tiny")
    root = tmp_path / "sim"
    root.mkdir()
    for d in sorted(p for p in data.iterdir() if p.is_dir())[:users]:
        (root / d.name).symlink_to(d.resolve())
    split = {"image_size": 64, "channels": 3, "val_fraction": 0.1, "seed": 0}
    train_ds, val_ds = UserImageFolder(root, split="train", **split), UserImageFolder(root, split="val", **split)
    model, record = classifier_for(tmp_path / "classifier", train_ds, val_ds)
    return record["results"]["val_acc"], record


def test_classifier_reaches_90_percent_on_the_tiny_simulated_set(tmp_path):
    # All 31 simulated users, 1116 training images: ~11 s on 2 free cores (98 % after 15 epochs).
    acc, record = classifier_accuracy_on_simulated_users(tmp_path, 31)
    assert acc >= 0.9, record["history"]


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory):
    """A tiny autoencoder and DiT trained for a few steps on 3 users (as in test_stage2.py)."""
    tmp = tmp_path_factory.mktemp("evaluation_run")
    data = make_folder(tmp / "data", users=3, per_user=8, size=32)
    assert train_vae.main(["--data", str(data), "--out", str(tmp / "vae"), "--image-size", "32", "--batch-size", "4",
                           "--val-fraction", "0.25", "--max-steps", "4"]) == 0
    assert train_ldm.main(["--vae", str(tmp / "vae"), "--out", str(tmp / "ldm"), "--max-steps", "3", "--batch-size",
                           "4", "--grad-accum", "1", "--sample-every", "1000", "--ckpt-every", "1000"]) == 0
    return tmp


def test_run_with_sweep_writes_every_report_and_plot(ldm_run, capsys):
    out = ldm_run / "eval"
    report = evaluate_run(ldm_run / "ldm", out, sampling=SamplingConfig(steps=3, cfg_scale=2.0), n_per_user=2,
                          seeds=2, sweep=True, guidance_scales=[1.0, 4.0], samplers=["ddim", "heun"], steps_list=[2, 3],
                          sweep_n_per_user=2)
    printed = capsys.readouterr().out
    for line in ("classifier ceiling", "condition accuracy", "Fréchet distance", "TSTR / TRTR",
                 "near-copies of training images", "over 2 seeds", "report"):
        assert line in printed, line
    # The second seed is a second measurement: its own noise, so its own numbers; the first is the report's.
    first, second = report["seeds"]["per_seed"]
    without_tstr = {**report["generated"], "tstr": None}
    assert report["seeds"]["seeds"] == [0, 1] and first == headline(without_tstr)
    # TSTR is one classifier on both seeds' images: 3 users × 2 images × 2 seeds.
    assert report["generated"]["tstr_images"] == 12 and first["tstr"] is None and second["tstr"] is None
    assert "(12 images: 2 seeds' together)" in printed
    assert second["fd"] != first["fd"] and report["seeds"]["spread"]["fd"]["values"] == [first["fd"], second["fd"]]
    assert report["seeds"]["spread"]["near_copies"]["values"] == [first["near_copies"], second["near_copies"]]
    assert "at 2 seeds" in (out / "report.md").read_text()
    assert report["settings"]["nfe"] == nfe("dpmpp_2m", 3)
    assert [p["cfg_scale"] for p in report["sweep"]["guidance"]] == [1.0, 4.0]
    assert [(p["sampler"], p["steps"], p["nfe"]) for p in report["sweep"]["samplers"]] == \
        [(s, n, nfe(s, n)) for s in ("ddim", "heun") for n in (2, 3)]
    assert report["generated"]["tstr"] is not None and report["autoencoder"]["psnr"] > 0
    for name in ("report.json", "report.md", "confusion.png", "per_user_accuracy.png", "guidance_accuracy.png",
                 "guidance_fd.png", "nfe_accuracy.png", "nfe_fd.png", "near_copies.png", "generated/user_02/001.png"):
        assert (out / name).is_file(), name
    assert (ldm_run / "ldm" / "classifier" / "model.safetensors").is_file()
    json.loads((out / "report.json").read_text())  # strict JSON (no NaN)

    # The PNGs it wrote, evaluated as a folder with the same classifier, give the same numbers.
    again = evaluate_folders(json.loads((ldm_run / "ldm" / "config.json").read_text())["data"], out / "generated",
                             ldm_run / "eval_folder", val_fraction=0.25, classifier_dir=ldm_run / "ldm" / "classifier",
                             with_tstr=False, quiet=True)
    for key in ("fd", "kid", "precision", "recall"):
        assert again["generated"][key] == pytest.approx(report["generated"][key], rel=1e-6), key
    for key in ("near_copies", "threshold", "median_ratio"):
        assert again["generated"]["memorisation"]["pixels"][key] == \
            pytest.approx(report["generated"]["memorisation"]["pixels"][key], rel=1e-6), key
    assert again["generated"]["condition_accuracy"] == report["generated"]["condition_accuracy"]


def test_autoencoder_run_reports_reconstructions(ldm_run):
    report = evaluate_run(ldm_run / "vae", ldm_run / "eval_vae", quiet=True)
    a = report["autoencoder"]
    assert "generated" not in report and a["n"] == 6 and 0 < a["ssim"] <= 1 and a["fd"] >= 0
    assert (ldm_run / "eval_vae" / "report.md").read_text().count("PSNR") >= 1


def test_enough_images_per_user_for_a_stable_measurement():
    assert [images_per_user(k) for k in (31, 30, 6, 5, 1)] == [8, 8, 40, 48, 240]  # ≥ 8 each and ≥ 240 in all
    assert images_per_user(5, 3) == 3  # as asked


def test_seed_spread_is_the_mean_and_range_of_each_headline_number():
    per_seed = [{"top1": 0.9, "fd": 10.0, "fd_ratio": 2.0, "tstr": None}, {"top1": 0.8, "fd": 14.0, "fd_ratio": 3.0,
                                                                            "tstr": None}]
    sp = seed_spread(per_seed)
    assert sp["top1"]["mean"] == pytest.approx(0.85) and (sp["top1"]["min"], sp["top1"]["max"]) == (0.8, 0.9)
    assert sp["fd"]["std"] == pytest.approx(8**0.5) and sp["fd_ratio"]["values"] == [2.0, 3.0]
    assert "tstr" not in sp  # not measured (--no-tstr): no spread to report


def test_quantize_is_what_a_png_holds():
    x = torch.linspace(-1.2, 1.2, 1001)
    q = quantize(x)
    assert torch.allclose((q + 1) * 127.5, ((q + 1) * 127.5).round(), atol=1e-4)
    assert (q - x.clamp(-1, 1)).abs().max() <= 1 / 127.5 / 2 + 1e-6


def test_stack_split_keeps_labels(real):
    x, y = stack_split(real["val_ds"])
    assert x.shape == (12, 3, 32, 32) and y.tolist() == [k for _, k, _ in real["val_ds"].samples]


def test_a_classifier_trained_with_another_augmentation_is_not_reused(real, tmp_path, monkeypatch, capsys):
    import tinyldm.evaluation.classifier as classifier_module
    from tinyldm.data import SpectrogramAugment

    folder = tmp_path / "classifier"
    shutil.copytree(real["classifier"], folder)
    train_ds = UserImageFolder(real["root"], split="train", **SPLIT)
    classifier_for(folder, train_ds, real["val_ds"], seed=0, max_epochs=1, patience=1)
    assert "classifier: reused" in capsys.readouterr().out
    monkeypatch.setattr(classifier_module, "AUGMENT", SpectrogramAugment(blur=0.0))  # the old, blur-free recipe
    _, record = classifier_for(folder, train_ds, real["val_ds"], seed=0, max_epochs=1, patience=1)
    assert "trained on other data, augmentation or seed" in capsys.readouterr().out
    assert record["data"]["augment"]["blur"] == 0.0


def test_real_floor_is_the_mean_over_draws_and_steadier_than_one():
    """The floor is the expected FD of a real training subset of the generated set's size: the mean over
    FLOOR_DRAWS subsets, whose spread over seeds is smaller than that of a single subset (1/√draws in std)."""
    from types import SimpleNamespace

    from tinyldm.evaluation.metrics import frechet_distance
    from tinyldm.evaluation.pipeline import real_floor

    g = torch.Generator().manual_seed(0)
    train_y = torch.arange(3).repeat_interleave(60)  # 3 users × 60 training images
    ref = SimpleNamespace(classes=["a", "b", "c"], train_y=train_y, train_feats=torch.randn(180, 6, generator=g),
                          val_feats=torch.randn(45, 6, generator=g))
    y = torch.arange(3).repeat_interleave(10)  # 10 generated images per user
    # draws = 1 is one subset: 10 images of each user, drawn as the code documents.
    g1 = torch.Generator().manual_seed(5)
    idx = torch.cat([(train_y == k).nonzero().flatten()[torch.randperm(60, generator=g1)[:10]] for k in range(3)])
    assert real_floor(ref, y, seed=5, draws=1) == pytest.approx(frechet_distance(ref.val_feats, ref.train_feats[idx]))
    one = torch.tensor([real_floor(ref, y, seed=s, draws=1) for s in range(12)])
    many = torch.tensor([real_floor(ref, y, seed=s, draws=16) for s in range(12)])
    assert many.std() < one.std() / 2
    assert abs(many.mean() - one.mean()) < 2 * one.std()
