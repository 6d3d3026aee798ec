"""A run's own guidance scales: chosen after training on its training images (tinyldm/evaluation/sweep.py:
first_minimum, choose_guidance; classifier-free w, then autoguidance w_a with the run's guide), written to
RUN/guidance.json, and what sample.py and evaluate.py sample with unless --cfg-scale / --ag-scale say otherwise."""

import json

import pytest

import sample
import train_ldm
from tests.test_stage2 import LDM, vae_run  # noqa: F401 (a fixture)
from tinyldm.data import DataError
from tinyldm.evaluation.__main__ import main as evaluate_cli
from tinyldm.evaluation.sweep import AG_CHOICE_SCALES, CHOICE_SCALES, first_minimum
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
    assert (run / "guide.safetensors").is_file()  # saved at a quarter of the steps: the choice tries autoguidance
    choice = json.loads((run / "guidance.json").read_text())
    cfg_points = [p for p in choice["points"] if p["ag_scale"] == 1.0]
    ws, fds = [p["cfg_scale"] for p in cfg_points], [p["fd_train"] for p in cfg_points]
    assert ws == list(CHOICE_SCALES[:len(ws)])  # tried in ascending order from the first
    assert choice["cfg_scale"] == ws[fds.index(min(fds))]  # the lowest FD among those tried
    assert all(a > b for a, b in zip(fds[:-2], fds[1:-1]))  # falling until the last one tried …
    assert len(ws) == len(CHOICE_SCALES) or fds[-1] >= fds[-2]  # … which rose, or was the last scale
    # Then autoguidance on top of the chosen w: w_a = 1 is that w's own point, then AG_CHOICE_SCALES in order.
    ag_points = [p for p in choice["points"] if p["cfg_scale"] == choice["cfg_scale"]]
    was, ag_fds = [p["ag_scale"] for p in ag_points], [p["fd_train"] for p in ag_points]
    assert was == [1.0, *AG_CHOICE_SCALES[:len(was) - 1]] and len(was) >= 2
    assert choice["ag_scale"] == was[ag_fds.index(min(ag_fds))]
    assert len(choice["points"]) == len(cfg_points) + len(ag_points) - 1  # nothing sampled twice
    assert choice["seed"] not in range(3) and (run / "classifier" / "model.safetensors").is_file()
    assert run_guidance(run) == (choice["cfg_scale"], choice["ag_scale"],
                                 f"chosen on the training images ({run / 'guidance.json'})")

    # sample.py and evaluate.py: the run's w and w_a by default, --cfg-scale and --ag-scale over them.
    quick = ["--run", str(run), "--users", "0", "--n-per-user", "1", "--steps", "2", "--compare-real", "0"]
    assert sample.main([*quick, "--out", str(tmp_path / "own")]) == 0
    assert sample.main([*quick, "--out", str(tmp_path / "given"), "--cfg-scale", "3.5", "--ag-scale", "2.5"]) == 0
    for out, w, w_a in (("own", choice["cfg_scale"], choice["ag_scale"]), ("given", 3.5, 2.5)):
        sampling = json.loads((tmp_path / out / "samples.json").read_text())["sampling"]
        assert (sampling["cfg_scale"], sampling["ag_scale"]) == (w, w_a), out
    assert evaluate_cli(["--run", str(run), "--out", str(tmp_path / "eval"), "--n-per-user", "2", "--seeds", "1",
                         "--no-tstr", "--steps", "2"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["settings"]["cfg_scale"] == choice["cfg_scale"] and report["guidance_choice"] == choice
    assert report["settings"]["ag_scale"] == choice["ag_scale"]
    said = (f"Guidance w = {choice['cfg_scale']:g} and autoguidance w_a = {choice['ag_scale']:g} are the run's own"
            if choice["ag_scale"] != 1.0 else f"Guidance w = {choice['cfg_scale']:g} is the run's own")
    assert said in (tmp_path / "eval" / "report.md").read_text()


def test_autoguidance_needs_the_guide_and_old_choices_mean_none(vae_run, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "ldm"
    assert train_ldm.main(["--vae", str(vae_run), "--out", str(run), "--max-steps", "2", "--no-choose-guidance",
                           *LDM]) == 0
    (run / "guide.safetensors").unlink()  # as a run trained before train_ldm.py saved its guide
    quick = ["--run", str(run), "--users", "0", "--n-per-user", "1", "--steps", "2", "--compare-real", "0"]
    capsys.readouterr()
    assert sample.main([*quick, "--out", str(tmp_path / "s"), "--ag-scale", "1.5"]) != 0
    assert evaluate_cli(["--run", str(run), "--out", str(tmp_path / "e"), "--n-per-user", "1", "--seeds", "1",
                         "--no-tstr", "--steps", "2", "--ag-scale", "1.5"]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 2 and all("has no guide.safetensors" in e and "--ag-scale 1" in e for e in errors)
    (run / "guidance.json").write_text('{"cfg_scale": 1.5}')  # a choice written before autoguidance
    assert run_guidance(run)[:2] == (1.5, 1.0)
    assert sample.main([*quick, "--out", str(tmp_path / "old")]) == 0  # w_a = 1: no guide asked for
    assert evaluate_cli(["--run", str(run), "--choose-guidance", "--ag-scale", "2"]) != 0
    assert "chooses w and w_a itself; drop --ag-scale 2" in capsys.readouterr().err


def test_without_a_choice_the_default_and_a_damaged_file_is_one_line(tmp_path):
    assert run_guidance(tmp_path) == (DEFAULT_SAMPLING.cfg_scale, DEFAULT_SAMPLING.ag_scale, "the default")
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
