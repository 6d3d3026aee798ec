"""A run's own guidance scale: chosen after training on its training images (tinyldm/evaluation/sweep.py:
first_minimum, choose_guidance), written to RUN/guidance.json, and what sample.py and evaluate.py sample with
unless --cfg-scale says otherwise."""

import json

import pytest

import sample
import train_ldm
from tests.test_stage2 import LDM, vae_run  # noqa: F401 (a fixture)
from tinyldm.data import DataError
from tinyldm.evaluation.__main__ import main as evaluate_cli
from tinyldm.evaluation.sweep import CHOICE_SCALES, first_minimum
from tinyldm.generate import DEFAULT_SAMPLING, run_guidance
from tinyldm.runs import RunError


def test_first_minimum_stops_at_the_first_rise():
    scored = []

    def score(w):
        scored.append(w)
        return (w - 2.0) ** 2  # falls, then rises: the minimum at w = 2

    best, points = first_minimum(CHOICE_SCALES, score)
    assert best == 2.0
    assert scored == [1.25, 1.5, 2.0, 2.5]  # 2.5 scores worse than 2: the scales above it are never sampled
    assert points == [(w, (w - 2.0) ** 2) for w in scored]


def test_first_minimum_at_either_end_and_on_a_tie():
    assert first_minimum([1, 2, 3], lambda w: -w) == (3, [(1, -1), (2, -2), (3, -3)])  # falls throughout: the last
    assert first_minimum([1, 2, 3], lambda w: w) == (1, [(1, 1), (2, 2)])  # rises at once: the first
    assert first_minimum([1, 2, 3], lambda w: 5.0) == (1, [(1, 5.0), (2, 5.0)])  # a tie goes to the smaller w


def test_a_run_chooses_its_guidance_and_the_scripts_sample_with_it(vae_run, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "ldm"
    assert train_ldm.main(["--vae", str(vae_run), "--out", str(run), "--max-steps", "3", "--choose-guidance",
                           *LDM]) == 0
    assert "guidance: w = " in capsys.readouterr().out
    choice = json.loads((run / "guidance.json").read_text())
    ws, fds = [p["cfg_scale"] for p in choice["points"]], [p["fd_train"] for p in choice["points"]]
    assert ws == list(CHOICE_SCALES[:len(ws)])  # tried in ascending order from the first
    assert choice["cfg_scale"] == ws[fds.index(min(fds))]  # the lowest FD among those tried
    assert all(a > b for a, b in zip(fds[:-2], fds[1:-1]))  # falling until the last one tried …
    assert len(ws) == len(CHOICE_SCALES) or fds[-1] >= fds[-2]  # … which rose, or was the last scale
    assert choice["seed"] not in range(3) and (run / "classifier" / "model.safetensors").is_file()
    assert run_guidance(run) == (choice["cfg_scale"], f"chosen on the training images ({run / 'guidance.json'})")

    # sample.py and evaluate.py: the run's w by default, --cfg-scale over it.
    quick = ["--run", str(run), "--users", "0", "--n-per-user", "1", "--steps", "2", "--compare-real", "0"]
    assert sample.main([*quick, "--out", str(tmp_path / "own")]) == 0
    assert sample.main([*quick, "--out", str(tmp_path / "given"), "--cfg-scale", "3.5"]) == 0
    for out, w in (("own", choice["cfg_scale"]), ("given", 3.5)):
        assert json.loads((tmp_path / out / "samples.json").read_text())["sampling"]["cfg_scale"] == w, out
    assert evaluate_cli(["--run", str(run), "--out", str(tmp_path / "eval"), "--n-per-user", "2", "--seeds", "1",
                         "--no-tstr", "--steps", "2"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["settings"]["cfg_scale"] == choice["cfg_scale"] and report["guidance_choice"] == choice
    assert f"Guidance w = {choice['cfg_scale']:g} is the run's own" in (tmp_path / "eval" / "report.md").read_text()


def test_without_a_choice_the_default_and_a_damaged_file_is_one_line(tmp_path):
    assert run_guidance(tmp_path) == (DEFAULT_SAMPLING.cfg_scale, "the default")
    (tmp_path / "guidance.json").write_text('{"cfg_scale": ')
    with pytest.raises(RunError, match="guidance.json is unreadable.*--cfg-scale"):
        run_guidance(tmp_path)


def test_a_run_without_dropped_ids_has_nothing_to_choose():
    args = train_ldm.parse_args(["--vae", "x", "--cond-dropout", "0", "--choose-guidance"])[0]
    assert not train_ldm.wants_guidance_choice(args, num_classes=3)
    args = train_ldm.parse_args(["--vae", "x", "--choose-guidance"])[0]
    assert train_ldm.wants_guidance_choice(args, num_classes=3) and not train_ldm.wants_guidance_choice(args, 1)


def test_a_choice_that_cannot_measure_leaves_the_trained_run_as_it_is(vae_run, tmp_path, capsys,  # noqa: F811
                                                                     monkeypatch):
    # E.g. a diffusers autoencoder's 10 % split of a small folder: too few validation images for the classifier.
    def too_few(*args, **kwargs):
        raise DataError("the evaluation needs at least 4 real validation images, got 3")

    monkeypatch.setattr(train_ldm, "run_reference", too_few)
    run = tmp_path / "ldm"
    assert train_ldm.main(["--vae", str(vae_run), "--out", str(run), "--max-steps", "2", "--choose-guidance",
                           *LDM]) == 0
    out = capsys.readouterr().out
    assert "guidance: not chosen (the evaluation needs at least 4" in out and "w = 1.25" in out and "done:" in out
    assert not (run / "guidance.json").exists() and (run / "ema.safetensors").is_file()
