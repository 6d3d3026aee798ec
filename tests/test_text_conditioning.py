"""Text conditioning for our users: simulator captions, the torso-speed read-back, caption encoders in the three
backbones, and train_ldm.py --cond text → sample.py --prompt end to end."""

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_vae import make_folder

import evaluate
import sample as sample_script
import train_ldm
import train_vae
from tinyldm.data import DataError
from tinyldm.data.captions import captions_of, read_captions, walking_caption
from tinyldm.data.microdoppler import Nuisance, draw_person, generate_dataset, render
from tinyldm.data.radar import RadarConfig, jet
from tinyldm.data.walking import LOWER_LEG, UPPER_LEG, cycle_duration
from tinyldm.diffusion import SamplingConfig, Schedule, sample
from tinyldm.evaluation.doppler import colour_levels, torso_speed
from tinyldm.loading import backbone_config, build_backbone
from tinyldm.models.clip_text import PRESETS as TEXT_PRESETS
from tinyldm.models.conditioning import ConditionEncoder, drop_captions
from tinyldm.text.tokenizer import CLIPTokenizer, train_bpe

NUMBERS = re.compile(r"a (\d\.\d\d) m person walking at (\d\.\d\d) m/s, (\d\.\d\d) s gait cycle, (\w+) arm swing")


def test_a_caption_states_the_recordings_height_speed_and_gait_cycle():
    person, nuisance = vars(draw_person(3)), {"speed_jitter": 0.02}
    height, speed, cycle, arms = NUMBERS.fullmatch(walking_caption(person, nuisance)).groups()
    v = person["speed"] * 1.02
    assert float(height) == pytest.approx(person["height"], abs=0.005)
    assert float(speed) == pytest.approx(v, abs=0.005)
    # Dc = cadence · 1.346 / √RV with RV = V / Ht (walking.py), the cycle the simulator walks.
    rv = v / ((UPPER_LEG + LOWER_LEG) * person["height"])
    assert float(cycle) == pytest.approx(person["cadence"] * cycle_duration(rv), abs=0.005)
    assert arms == ("small" if person["arm_gain"] < 0.87 else "normal" if person["arm_gain"] < 1.13 else "wide")


def test_the_simulator_writes_one_caption_per_image(tmp_path):
    out = generate_dataset(tmp_path / "md", users=2, per_user=2, size=32, workers=1, progress=False)
    captions = json.loads((out / "captions.json").read_text())
    meta = json.loads((out / "metadata.json").read_text())
    assert sorted(captions) == sorted(meta["images"])
    for name, text in captions.items():
        speed = float(NUMBERS.fullmatch(text).group(2))
        person = meta["people"][name.split("/")[0]]
        assert speed == pytest.approx(person["speed"] * (1 + meta["images"][name]["speed_jitter"]), abs=0.005)
    (out / "captions.json").unlink()  # an older simulator folder: written again when first read
    assert read_captions(out) == captions


def test_missing_captions_are_named(tmp_path):
    data = make_folder(tmp_path / "data", users=2, per_user=2, size=16)
    with pytest.raises(DataError, match="has no captions.json"):
        read_captions(data)
    (data / "captions.json").write_text(json.dumps({"user_00/000.png": "one"}))
    paths = sorted(data.glob("user_*/*.png"))
    with pytest.raises(DataError, match=r"no caption for 3 image\(s\)"):
        captions_of(data, paths)
    (data / "captions.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_captions(data)


def test_colour_levels_invert_the_jet_map():
    u = np.linspace(0, 1, 256).reshape(16, 16)
    img = np.round(255 * jet(u)).astype(np.uint8)
    assert np.abs(colour_levels(img) - u).max() <= 1 / 255


@pytest.mark.parametrize("speed, aspect", [(0.9, 0.0), (1.4, 25.0), (1.7, -15.0)])
def test_the_torso_line_reads_back_v_cos_aspect(speed, aspect):
    """The measured speed of a simulated image is the torso's radial speed, v cos(aspect) (Chen 2011, ch. 4)."""
    radar = RadarConfig()
    person = draw_person(0)
    person.speed = speed
    nuisance = Nuisance(phase0=0.3, aspect_deg=aspect, range_m=10.0, speed_jitter=0.0, snr_db=20.0, time_offset_s=0.0)
    rng = np.random.default_rng(0)
    from tinyldm.data.microdoppler import simulate_spectrogram
    from tinyldm.data.radar import spectrogram_image
    S_db, _ = simulate_spectrogram(person, nuisance, radar, rng)
    measured = torso_speed(spectrogram_image(S_db, 64, radar), radar)
    assert measured == pytest.approx(speed * math.cos(math.radians(aspect)), abs=0.08)


def test_real_images_of_one_set_read_back_their_speeds():
    errors = []
    for user in range(4):
        img, nuisance = render(user, 0, 64)
        v = draw_person(user).speed * (1 + nuisance.speed_jitter)
        errors.append(torso_speed(img) - v * math.cos(math.radians(nuisance.aspect_deg)))
    assert np.abs(errors).mean() < 0.06


def tiny_text(vocab_size: int, length: int, eos: int) -> dict:
    return {**TEXT_PRESETS["tiny"], "vocab_size": vocab_size, "max_position_embeddings": length, "eos_token_id": eos}


@pytest.fixture(scope="module")
def tokenizer():
    captions = [f"a {h:.2f} m person walking at {v:.2f} m/s" for h in (1.6, 1.75, 1.9) for v in (0.9, 1.3, 1.7)]
    vocab, merges = train_bpe(captions, 40)
    return CLIPTokenizer(vocab, merges, max_length=24)


@pytest.mark.parametrize("backbone", ["unet", "dit", "mmdit"])
def test_every_backbone_reads_captions_and_guides_on_the_empty_one(backbone, tokenizer):
    text = tiny_text(tokenizer.vocab_size, tokenizer.max_length, tokenizer.eos_id)
    model = build_backbone(backbone, backbone_config(backbone, "tiny", 4, 8, 3, "text", text_encoder=text)).eval()
    with torch.no_grad():  # off the zero init (adaLN-Zero, zero output layers), so the caption can show
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ids = tokenizer(["a 1.75 m person walking at 1.30 m/s", "a 1.60 m person walking at 0.90 m/s"])  # (2, L)
    x, t = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1), torch.tensor([0.5, 0.5])
    out = model(x, t, ids)
    assert out.shape == (2, 4, 8, 8)
    assert (out[0] - out[1]).abs().max() > 1e-4  # same x_t and t, another caption: another prediction
    config = SamplingConfig("ddim", 2, cfg_scale=2.0)
    z = sample(model, torch.randn(2, 4, 8, 8), Schedule.vp("cosine"), config, prediction="eps", cond=ids,
               null_cond=tokenizer(""))
    assert torch.isfinite(z).all()


def test_caption_ids_that_do_not_fit_are_refused(tokenizer):
    enc = ConditionEncoder(0, 32, "text", text_encoder=tiny_text(tokenizer.vocab_size, 24, tokenizer.eos_id),
                           dropout_prob=0.0)
    with pytest.raises(ValueError, match="caption token ids"):
        enc(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="do not fit the text model"):
        enc(torch.full((1, 30), 3))
    with pytest.raises(ValueError, match="replaces captions by the empty caption"):
        ConditionEncoder(0, 32, "text", text_encoder=tiny_text(100, 24, 99), dropout_prob=0.1)


def test_drop_captions_replaces_whole_captions_at_rate_p(tokenizer):
    ids = tokenizer(["a 1.75 m person walking at 1.30 m/s"] * 4000)
    null = tokenizer("")[0]
    out = drop_captions(ids, null, 0.1, torch.Generator().manual_seed(0))
    dropped = (out == null).all(1)
    assert ((out == ids).all(1) | dropped).all()  # each row is either kept whole or the empty caption
    assert dropped.float().mean().item() == pytest.approx(0.1, abs=0.015)


def test_train_ldm_cond_text_then_sample_with_a_prompt(tmp_path, capsys):
    data = make_folder(tmp_path / "data", users=3, per_user=8, size=32)
    captions = {p.relative_to(data).as_posix(): f"stripes of user {p.parent.name[-1]} number {p.stem}"
                for p in data.glob("user_*/*.png")}
    (data / "captions.json").write_text(json.dumps(captions))
    vae = tmp_path / "vae"
    assert train_vae.main(["--data", str(data), "--out", str(vae), "--image-size", "32", "--batch-size", "4",
                           "--val-fraction", "0.25", "--max-steps", "2"]) == 0
    run = tmp_path / "ldm"
    common = ["--vae", str(vae), "--cond", "text", "--batch-size", "4", "--sample-every", "2", "--ckpt-every", "2",
              "--text-merges", "20"]
    assert train_ldm.main([*common, "--out", str(run), "--max-steps", "2", "--backbone", "unet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["backbone_config"]["cond_type"] == "text"
    assert len(config["grid"]["prompts"]) == len(config["grid"]["users"])
    tok = CLIPTokenizer.from_folder(run / "tokenizer")
    assert tok.decode(tok.encode("stripes of user 1 number 3")) == "stripes of user 1 number 3"
    assert (run / "samples" / "grid_step_000002.png").is_file()
    assert train_ldm.main(["--resume", str(run), "--max-steps", "3"]) == 0  # reads its own tokenizer back
    out = tmp_path / "samples"
    assert sample_script.main(["--run", str(run), "--prompt", "stripes of user 2 number 1", "--n-per-user", "2",
                               "--steps", "2", "--out", str(out)]) == 0
    pngs = sorted((out / "prompt_0").glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).size == (32, 32)
    assert json.loads((out / "samples.json").read_text())["prompts"] == ["stripes of user 2 number 1"]
    # A text run asks for prompts, not users; evaluate.py (users) points to the caption benchmark.
    assert sample_script.main(["--run", str(run), "--users", "0", "--out", str(tmp_path / "s2")]) == 2
    assert "--cond text" in "".join(capsys.readouterr())
    assert evaluate.main(["--run", str(run), "--seeds", "1"]) == 2
    assert "caption_following.py" in "".join(capsys.readouterr())
