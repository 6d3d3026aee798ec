"""CLIPTextModel against transformers' own outputs (fixtures written by scripts/make_clip_text_fixtures.py with
transformers 5.25.0; transformers is imported only by the live test at the end), the causal mask, the pooling rules,
the two attention paths, round trips through transformers' folder layout, and every bad folder a user can hand us."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinyldm.interop.pretrained_weights import PretrainedError
from tinyldm.interop.transformers_clip import PREFIX, WEIGHTS
from tinyldm.layers import written_out_attention
from tinyldm.models.clip_text import PRESETS, CLIPTextConfig, CLIPTextModel

FIXTURES = Path(__file__).parent / "fixtures" / "transformers"
NAMES = ("clip_text", "clip_text_sd2")
SMALL = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=16, eos_token_id=49)


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours − theirs| / max |theirs|: the error relative to the output's scale."""
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def io(name: str) -> dict:
    return load_file(str(FIXTURES / f"{name}_io.safetensors"))


def n_params(c: CLIPTextConfig) -> int:
    """The parameter count by formula: embeddings V·D + L·D; per block 4 biased D×D projections, 2 LayerNorms and the
    MLP D→I→D; the final LayerNorm."""
    D, I = c.hidden_size, c.intermediate_size
    block = 4 * (D * D + D) + 2 * 2 * D + (D * I + I) + (I * D + D)
    return c.vocab_size * D + c.max_position_embeddings * D + c.num_hidden_layers * block + 2 * D


def small_model(seed: int = 0, **overrides) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**{**SMALL, **overrides})).eval()


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


# ---- parity with transformers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("masked", [False, True])
def test_matches_transformers_outputs(name, masked):
    model = CLIPTextModel.from_pretrained(FIXTURES / name)
    assert not model.training
    d, tail = io(name), "_masked" if masked else ""
    with torch.no_grad():
        h, pooled = model(d["input_ids"], d["attention_mask"] if masked else None)
    assert rel_err(h, d[f"last_hidden_state{tail}"]) <= 1e-5
    assert rel_err(pooled, d[f"pooler_output{tail}"]) <= 1e-5


def test_configs_are_honoured():
    sd1, sd2 = (CLIPTextModel.from_pretrained(FIXTURES / name).config for name in NAMES)
    assert (sd1.hidden_act, sd1.eos_token_id, sd1.bos_token_id, sd1.pad_token_id) == ("quick_gelu", 2, 0, 1)
    assert (sd2.hidden_act, sd2.eos_token_id, sd2.bos_token_id, sd2.pad_token_id) == ("gelu", 3, 1, 0)
    assert (sd1.hidden_size, sd1.intermediate_size, sd1.num_hidden_layers, sd1.num_attention_heads,
            sd1.vocab_size, sd1.max_position_embeddings) == (32, 37, 2, 4, 99, 16)


def test_pipeline_folder_and_subfolder(tmp_path):
    copy_fixture("clip_text", tmp_path / "pipe")
    (tmp_path / "pipe" / "clip_text").rename(tmp_path / "pipe" / "text_encoder")
    with pytest.raises(PretrainedError, match="subfolder='text_encoder'"):
        CLIPTextModel.from_pretrained(tmp_path / "pipe")
    assert CLIPTextModel.from_pretrained(tmp_path / "pipe", subfolder="text_encoder").config.hidden_size == 32


# ---- the model's own properties --------------------------------------------------------------------------------------

def test_causal_mask_later_tokens_never_reach_earlier_positions():
    model, g = small_model(), torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49, (2, 10), generator=g)
    ids[:, -1] = 49
    with torch.no_grad():
        h, _ = model(ids)
        for j in (0, 4, 8):
            changed = ids.clone()
            changed[:, j] = (changed[:, j] + 7) % 49
            h2, _ = model(changed)
            assert torch.equal(h2[:, :j], h[:, :j])  # exactly: masked keys get weight exp(−∞) = 0
            assert not torch.allclose(h2[:, j], h[:, j])


def test_padding_mask_changes_only_the_positions_after_the_last_token():
    model = small_model()
    ids = torch.tensor([[3, 7, 11, 49, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        (h, p), (hm, pm) = model(ids), model(ids, mask)
    assert torch.allclose(hm[:, :4], h[:, :4], atol=1e-6) and torch.allclose(pm, p, atol=1e-6)
    assert not torch.allclose(hm[:, 4:], h[:, 4:])


@pytest.mark.parametrize("eos_id, rows, where", [
    (2, [[5, 9, 40, 41, 41, 6], [5, 41, 7, 1, 1, 1]], [3, 1]),  # legacy config: the largest id, its first place
    (7, [[5, 9, 7, 41, 7, 6], [7, 41, 2, 1, 1, 1]], [2, 0]),  # otherwise the first eos id, though 41 is larger
])
def test_pooled_is_the_final_state_at_the_end_of_text_token(eos_id, rows, where):
    ids = torch.tensor(rows)
    with torch.no_grad():
        h, pooled = small_model(eos_token_id=eos_id)(ids)
    assert torch.equal(pooled, h[torch.arange(2), torch.tensor(where)])


def test_a_row_without_the_end_of_text_token_is_an_error():
    with pytest.raises(ValueError, match="no end-of-text token 49"):
        small_model()(torch.tensor([[1, 2, 49], [1, 2, 3]]))
    with pytest.raises(ValueError, match="at most 16"):
        small_model()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_written_out_attention_equals_sdpa(name):
    model = CLIPTextModel.from_pretrained(FIXTURES / name)
    reference = CLIPTextModel.from_pretrained(FIXTURES / name, reference_attention=True)
    assert all(layer.attn.reference for layer in reference.layers)
    assert all(layer.attn.reference for layer in written_out_attention(copy.deepcopy(model)).layers)
    d = io(name)
    with torch.no_grad():
        for mask in (None, d["attention_mask"]):
            for ours, ref in zip(model(d["input_ids"], mask), reference(d["input_ids"], mask)):
                assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5)


def test_presets_build_with_the_parameter_count_of_the_formula():
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in CLIPTextModel.from_preset(name, vocab_size=1000, eos_token_id=999)
                            .parameters()) if name == "tiny" else
                  sum(p.numel() for p in CLIPTextModel.from_preset(name).parameters()) for name in PRESETS}
    assert counts["sd1"] == n_params(CLIPTextConfig(**PRESETS["sd1"])) == 123_060_480  # ViT-L/14's text tower
    assert counts["sd2"] == n_params(CLIPTextConfig(**PRESETS["sd2"]))  # 340,387,840
    assert counts["tiny"] == n_params(CLIPTextConfig(**PRESETS["tiny"], vocab_size=1000, eos_token_id=999))


def test_config_errors_say_what_to_change():
    with pytest.raises(ValueError, match="not divisible by num_attention_heads 5; choose e.g. hidden_size 30"):
        CLIPTextConfig(**{**SMALL, "num_attention_heads": 5})
    with pytest.raises(ValueError, match="hidden_act 'relu' is not implemented"):
        CLIPTextConfig(**{**SMALL, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="eos_token_id 50 is not a token id"):
        CLIPTextConfig(**{**SMALL, "eos_token_id": 50})


# ---- round trips -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_save_then_load_round_trips_under_transformers_names(name, tmp_path):
    model = CLIPTextModel.from_pretrained(FIXTURES / name)
    model.save_pretrained(tmp_path / "out")
    theirs, ours = load_file(str(FIXTURES / name / WEIGHTS)), load_file(str(tmp_path / "out" / WEIGHTS))
    theirs = {PREFIX + k.removeprefix(PREFIX): v for k, v in theirs.items() if not k.endswith("position_ids")}
    assert sorted(ours) == sorted(theirs)  # transformers' names (text_model.-prefixed), no more, no fewer
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    config = json.loads((FIXTURES / name / "config.json").read_text())
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: v for k, v in written.items() if k in config} == {k: v for k, v in config.items() if k in written}
    assert written["architectures"] == ["CLIPTextModel"] and written["model_type"] == "clip_text_model"
    again = CLIPTextModel.from_pretrained(tmp_path / "out")
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    ids = io(name)["input_ids"]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(again(ids), model(ids)))


def test_reads_pytorch_model_bin(tmp_path):
    folder = copy_fixture("clip_text_sd2", tmp_path)
    torch.save(load_file(str(folder / WEIGHTS)), folder / "pytorch_model.bin")
    (folder / WEIGHTS).unlink()
    model, ref = CLIPTextModel.from_pretrained(folder), CLIPTextModel.from_pretrained(FIXTURES / "clip_text_sd2")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


# ---- strict loading --------------------------------------------------------------------------------------------------

def edit_weights(folder: Path, edit) -> None:
    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(folder / WEIGHTS))


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


BAD = {  # what is done to the clip_text_sd2 folder → the words the one-line error must hold
    "missing": (lambda f: edit_weights(f, lambda s: s.pop("encoder.layers.1.mlp.fc2.bias")),
                ["missing encoder.layers.1.mlp.fc2.bias"]),
    "extra": (lambda f: edit_weights(f, lambda s: s.update({"text_projection.weight": torch.zeros(8, 32)})),
              ["unexpected text_projection.weight"]),
    "shape": (lambda f: edit_weights(f, lambda s: s.update({"final_layer_norm.weight": torch.ones(31)})),
              ["shape mismatch final_layer_norm.weight: file [31], model [32]"]),
    "hidden_act": (lambda f: edit_config(f, hidden_act="gelu_new"), ["hidden_act 'gelu_new' is not implemented"]),
    "unknown key": (lambda f: edit_config(f, rope_theta=10000.0), ["rope_theta=10000.0", "does not know"]),
    "dropout": (lambda f: edit_config(f, attention_dropout=0.1), ["attention_dropout=0.1 is not implemented"]),
    "projection": (lambda f: edit_config(f, architectures=["CLIPTextModelWithProjection"]),
                   ["CLIPTextModelWithProjection", "text_projection.weight"]),
    "whole CLIP": (lambda f: edit_config(f, model_type="clip"), ["a whole CLIP model", "text_encoder/"]),
    "no weights": (lambda f: (f / WEIGHTS).unlink(), ["no model.safetensors or pytorch_model.bin"]),
    "eos list": (lambda f: edit_config(f, eos_token_id=[3, 4]), ["eos_token_id=[3, 4] is not one token id"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_strict_loading_names_the_problem(case, tmp_path):
    folder = copy_fixture("clip_text_sd2", tmp_path)
    spoil, words = BAD[case]
    spoil(folder)
    with pytest.raises(PretrainedError) as excinfo:
        CLIPTextModel.from_pretrained(folder)
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), (words, message)


# ---- live transformers -----------------------------------------------------------------------------------------------

def test_against_live_transformers(tmp_path):
    """Only where transformers is installed: its random model read by us, ours read by it, and the sd1 count."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=48,
                                         eos_token_id=49, pad_token_id=0, hidden_act="gelu")
    theirs = transformers.CLIPTextModel(config).eval()
    theirs.save_pretrained(tmp_path / "theirs")
    ours = CLIPTextModel.from_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.CLIPTextModel.from_pretrained(tmp_path / "ours").eval()
    ids = torch.tensor([[48, 5, 9, 49, 0, 0], [48, 30, 31, 32, 33, 49]])
    with torch.no_grad():
        h, pooled = ours(ids)
        for model in (theirs, back):
            out = model(input_ids=ids)
            assert rel_err(h, out.last_hidden_state) <= 1e-5 and rel_err(pooled, out.pooler_output) <= 1e-5
    with torch.device("meta"):
        sd1 = transformers.CLIPTextModel(transformers.CLIPTextConfig(**{k: v for k, v in PRESETS["sd1"].items()},
                                                                     bos_token_id=0, pad_token_id=1))
    assert sum(p.numel() for p in sd1.parameters()) == 123_060_480
