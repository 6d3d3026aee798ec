"""Command-line checks (tinyldm.options): every numeric option of every script has a range, a value outside it stops
parse_args with one line naming the flag and the range, sensible values still parse; sample.py's --users."""

import argparse
import importlib
import math

import pytest

import sample
import train_ldm
import train_vae
from tinyldm.generate import add_sampling_args
from tinyldm.options import above, at_least, between, check_ranges, device_name, finite

evaluate = importlib.import_module("tinyldm.evaluation.__main__")
SCRIPTS = {"train_vae": train_vae, "train_ldm": train_ldm, "sample": sample, "evaluate": evaluate}
REQUIRED = {"sample": ["--run", "runs/x"]}  # what a script needs before any option can be tried


def parse(script: str, argv: list[str]) -> argparse.Namespace:
    out = SCRIPTS[script].parse_args(REQUIRED.get(script, []) + argv)
    return out[0] if isinstance(out, tuple) else out  # the training scripts also return their defaults


# ---- the ranges themselves ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("allowed, inside, outside, text", [
    (at_least(0, "0 = off"), [0, 0.0, 5, 1e9], [-1, -1e-12], "≥ 0 (0 = off)"),
    (above(0), [1e-12, 3], [0, -2], "> 0"),
    (between(0, 1), [0, 0.5, 1], [-0.1, 1.1], "in [0, 1]"),
    (between(0, 1, high_open=True), [0, 0.99], [1, -0.5], "in [0, 1)"),
    (between(0, 1, low_open=True, high_open=True), [0.5], [0, 1], "in (0, 1)"),
    (finite(), [-1e30, 0, 7.5], [], "a finite number"),
])
def test_range_bounds_and_text(allowed, inside, outside, text):
    assert all(allowed.contains(x) for x in inside)
    assert not any(allowed.contains(x) for x in outside)
    assert not any(allowed.contains(x) for x in (math.nan, math.inf, -math.inf))  # never, whatever the bounds
    assert str(allowed) == text


def test_check_ranges_skips_none_and_reports_through_the_parser(capsys):
    p = argparse.ArgumentParser(prog="demo.py")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    ranges = {"steps": at_least(1), "lr": above(0)}
    check_ranges(p, p.parse_args([]), ranges)  # --steps not given: nothing to check
    with pytest.raises(SystemExit) as e:
        check_ranges(p, p.parse_args(["--lr", "inf"]), ranges)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "demo.py: error: --lr inf: must be a finite number > 0"


# ---- each script: every numeric option has a range --------------------------------------------------------------

def sampling_options() -> set[str]:
    """The options add_sampling_args adds: checked by SamplingConfig, not by the scripts' tables."""
    p = argparse.ArgumentParser()
    add_sampling_args(p)
    return {a.dest for a in p._actions}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_option_has_a_range(script, monkeypatch):
    seen = {}
    monkeypatch.setattr(SCRIPTS[script], "check_ranges", lambda p, args, ranges: seen.update(parser=p, ranges=ranges))
    parse(script, [])
    numeric = {a.dest for a in seen["parser"]._actions if a.type in (int, float) and a.choices is None}
    assert numeric - sampling_options() - set(seen["ranges"]) == set()
    assert set(seen["ranges"]) <= numeric  # and no entry for an option the script does not have


# ---- bad values stop parse_args with one line -------------------------------------------------------------------

BAD = [
    ("train_vae", ["--grad-clip", "-1"], "--grad-clip -1.0: must be ≥ 0 (0 = off)"),
    ("train_vae", ["--image-size", "0"], "--image-size 0: must be ≥ 1"),
    ("train_vae", ["--batch-size", "0"], "--batch-size 0: must be ≥ 1"),
    ("train_vae", ["--batch-size", "-4"], "--batch-size -4: must be ≥ 1"),
    ("train_vae", ["--epochs", "0"], "--epochs 0: must be ≥ 1"),
    ("train_vae", ["--max-steps", "0"], "--max-steps 0: must be ≥ 1"),
    ("train_vae", ["--ckpt-every", "0"], "--ckpt-every 0: must be ≥ 1"),
    ("train_vae", ["--val-fraction", "1"], "--val-fraction 1.0: must be in [0, 1) (0 = no validation split)"),
    ("train_vae", ["--lr", "inf"], "--lr inf: must be a finite number > 0"),
    ("train_vae", ["--lr", "0"], "--lr 0.0: must be > 0"),
    ("train_vae", ["--kl-weight", "nan"], "--kl-weight nan: must be a finite number ≥ 0"),
    ("train_vae", ["--warmup", "-1"], "--warmup -1: must be ≥ 0 (0 = no warmup)"),
    ("train_vae", ["--num-workers", "-1"], "--num-workers -1: must be ≥ 0 (0 = load in the main process)"),
    ("train_vae", ["--seed", "-1"], "--seed -1: must be in [0, 4294967295]"),
    ("train_ldm", ["--grad-clip", "-1"], "--grad-clip -1.0: must be ≥ 0 (0 = off)"),
    ("train_ldm", ["--ema-decay", "5"], "--ema-decay 5.0: must be in [0, 1]"),
    ("train_ldm", ["--cond-dropout", "2"], "--cond-dropout 2.0: must be in [0, 1) (0 = no classifier-free guidance)"),
    ("train_ldm", ["--cond-dropout", "1"], "--cond-dropout 1.0: must be in [0, 1) (0 = no classifier-free guidance)"),
    ("train_ldm", ["--max-minutes", "-1"], "--max-minutes -1.0: must be > 0"),
    ("train_ldm", ["--epochs", "0"], "--epochs 0: must be ≥ 1"),
    ("train_ldm", ["--max-steps", "0"], "--max-steps 0: must be ≥ 1"),
    ("train_ldm", ["--grad-accum", "0"], "--grad-accum 0: must be ≥ 1"),
    ("train_ldm", ["--sample-every", "0"], "--sample-every 0: must be ≥ 1"),
    ("train_ldm", ["--ckpt-every", "0"], "--ckpt-every 0: must be ≥ 1"),
    ("train_ldm", ["--lr", "inf"], "--lr inf: must be a finite number > 0"),
    ("train_ldm", ["--lr", "nan"], "--lr nan: must be a finite number > 0"),
    ("train_ldm", ["--flow-shift", "0"], "--flow-shift 0.0: must be > 0 (1 = none)"),
    ("train_ldm", ["--warmup", "-5"], "--warmup -5: must be ≥ 0 (0 = no warmup)"),
    ("train_ldm", ["--num-train-timesteps", "1"], "--num-train-timesteps 1: must be ≥ 2"),
    ("train_ldm", ["--min-snr-gamma", "0"], "--min-snr-gamma 0.0: must be > 0"),
    ("train_ldm", ["--grid-cfg=-inf"], "--grid-cfg -inf: must be a finite number (1 = no guidance)"),
    ("train_ldm", ["--stop-after", "0"], "--stop-after 0: must be ≥ 1"),
    ("sample", ["--n-per-user", "0"], "--n-per-user 0: must be ≥ 1"),
    ("sample", ["--batch-size", "0"], "--batch-size 0: must be ≥ 1"),
    ("evaluate", ["--n-per-user", "0"], "--n-per-user 0: must be ≥ 1"),
    ("evaluate", ["--sweep-n-per-user", "-2"], "--sweep-n-per-user -2: must be ≥ 1"),
    ("evaluate", ["--val-fraction", "0"], "--val-fraction 0.0: must be in (0, 1) "
                                    "(the classifier is early-stopped on the validation images)"),
    ("evaluate", ["--image-size", "0"], "--image-size 0: must be ≥ 1"),
]


@pytest.mark.parametrize("script, argv, message", BAD, ids=[f"{s} {' '.join(a)}" for s, a, _ in BAD])
def test_bad_value_is_one_usage_error(script, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(script, argv)
    assert e.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith(f": error: {message}")


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("device", ["tpu", "cuda:x", "CPU", "cuda:", ""])
def test_unknown_device_names_the_allowed_forms(script, device, capsys):
    with pytest.raises(SystemExit) as e:
        parse(script, ["--device", device])
    assert e.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert f"argument --device: {device!r} is not a device" in last
    assert "auto, cpu, cuda, cuda:N" in last and "mps" in last


# ---- good values still parse ------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_defaults_parse(script):
    args = parse(script, [])
    assert args.device == "auto"


def test_options_not_given_stay_none():
    args = parse("train_ldm", [])
    assert (args.max_steps, args.max_minutes, args.min_snr_gamma, args.stop_after, args.epochs) == (None,) * 5
    args = parse("train_vae", [])
    assert (args.image_size, args.max_steps, args.stop_after, args.epochs) == (None,) * 4


@pytest.mark.parametrize("script, argv", [
    ("train_vae", ["--grad-clip", "0", "--val-fraction", "0", "--warmup", "0", "--image-size", "32",
                   "--num-workers", "0", "--seed", "4294967295", "--device", "cuda:1"]),
    ("train_ldm", ["--ema-decay", "1", "--ema-decay", "0", "--cond-dropout", "0", "--max-minutes", "0.5",
                   "--num-train-timesteps", "2", "--grid-cfg", "-1", "--device", "mps", "--max-steps", "1"]),
    ("sample", ["--n-per-user", "1", "--batch-size", "1", "--device", "cuda"]),
    ("evaluate", ["--val-fraction", "0.5", "--image-size", "64", "--device", "cpu"]),
])
def test_values_at_the_edges_parse(script, argv):
    parse(script, argv)


def test_device_name_accepts_what_torch_names():
    assert [device_name(d) for d in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps")] == \
        ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"]


# ---- sample.py --users ------------------------------------------------------------------------------------------

CLASSES = ["user_00", "user_01", "alice", "7", "bob"]


@pytest.mark.parametrize("spec, users", [
    ("all", [0, 1, 2, 3, 4]),
    ("0,4,2", [0, 4, 2]),  # ids, in the order given
    ("user_01,alice", [1, 2]),  # names
    ("bob, 0 ,alice", [4, 0, 2]),  # mixed, spaces ignored
    ("7", [3]),  # a token that is a name is that name, even if it reads as an integer
    ("3", [3]),
])
def test_parse_users(spec, users, capsys):
    assert sample.parse_users(spec, CLASSES) == users
    assert capsys.readouterr().out == ""  # no notice without repeats


def test_parse_users_writes_a_repeated_user_once(capsys):
    assert sample.parse_users("1,1,alice,user_01,2", CLASSES) == [1, 2]  # first appearances, in order
    out = capsys.readouterr().out.strip()
    assert out == "notice: --users asks for user_01 3 times, alice 2 times; writing each user once"


@pytest.mark.parametrize("spec, fragment", [
    ("carol", "no user named 'carol' in this run; its 5 users are user_00, user_01, alice, …"),
    ("alice,Alice", "no user named 'Alice'"),  # names are exact
    ("5", "ids must lie in 0…4"),
    ("-1", "id -1 is no user here"),
    (",", "names no user"),
])
def test_parse_users_rejects(spec, fragment):
    with pytest.raises(ValueError, match="--users") as e:
        sample.parse_users(spec, CLASSES)
    assert fragment in str(e.value) and "\n" not in str(e.value)
