"""from_pretrained / save_pretrained against diffusers' own outputs (fixtures written by
scripts/make_diffusers_fixtures.py with diffusers 0.42.1; diffusers is not imported here except by the one test
that needs it live), round trips, the original DiT layout, and every bad input a user can hand us."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinyldm import DiT, UNet2DConditionModel, VQModel
from tinyldm.interop.diffusers_names import DIFFUSERS_CLASS
from tinyldm.interop.pretrained import PAPER_HEADS, WEIGHTS, PretrainedError
from tinyldm.layers import timestep_embedding
from tinyldm.models.autoencoder_kl import AutoencoderKL
from tinyldm.models.dit import PRESETS as DIT_PRESETS
from tinyldm.models.dit import DiTConfig

FIXTURES = Path(__file__).parent / "fixtures" / "diffusers"
CLASSES = {"kl": AutoencoderKL, "kl16": AutoencoderKL, "vq": VQModel, "unet": UNet2DConditionModel,
           "unet_users": UNet2DConditionModel, "dit": DiT}


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours − theirs| / max |theirs|: the error relative to the output's scale."""
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def io(name: str) -> dict:
    return load_file(str(FIXTURES / f"{name}_io.safetensors"))


@torch.no_grad()
def outputs(name: str, model) -> dict[str, torch.Tensor]:
    """The tensors diffusers recorded for fixture `name`, computed by the tinyldm model."""
    d = io(name)
    if name.startswith("kl"):
        posterior = model.encode(d["x"])
        return {"mean": posterior.mean, "std": posterior.std, "decoded": model.decode(d["z"])}
    if name == "vq":
        z, _ = model.latent_moments(d["x"])  # before quantisation, as diffusers' VQModel.encode
        return {"latents": z, "indices": model.quantize.nearest_code(z), "decoded": model.decode_latent(d["latents"])}
    if name == "unet":
        return {"out": model(d["x"], d["t"], encoder_hidden_states=d["encoder_hidden_states"])}
    return {"out": model(d["x"], d["t"], d["y"])}  # unet_users, dit: user ids


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def one_line_error(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


# ---- parity with diffusers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CLASSES))
def test_each_model_matches_diffusers_outputs(name):
    model = CLASSES[name].from_pretrained(FIXTURES / name)
    assert not model.training
    recorded = io(name)
    for key, ours in outputs(name, model).items():
        if key == "indices":
            assert torch.equal(ours, recorded[key])  # the same nearest codes
        else:
            assert rel_err(ours, recorded[key]) <= 1e-4, (name, key, rel_err(ours, recorded[key]))


def test_configs_are_honoured():
    kl16 = AutoencoderKL.from_pretrained(FIXTURES / "kl16").config
    assert (kl16.latent_channels, kl16.use_quant_conv, kl16.use_post_quant_conv, kl16.mid_block_add_attention) == \
        (16, False, False, False)
    assert (kl16.scaling_factor, kl16.shift_factor, len(kl16.latents_mean), kl16.latents_std[1]) == \
        (1.5305, 0.0609, 16, 1.02)
    dit = DiT.from_pretrained(FIXTURES / "dit").config
    assert (dit.hidden_size, dit.num_heads, dit.depth, dit.num_classes, dit.learn_sigma) == (16, 2, 2, 5, True)
    assert (dit.timestep_freq_shift, dit.norm_eps) == (1.0, 1e-5)  # diffusers' DiT; tinyldm's defaults stay DiT's
    assert (DiTConfig().timestep_freq_shift, DiTConfig().norm_eps) == (0.0, 1e-6)
    unet = UNet2DConditionModel.from_pretrained(FIXTURES / "unet_users").config
    assert (unet.num_classes, unet.cond_type, unet.use_linear_projection, unet.heads()) == \
        (3, "embedding", True, [(2, 2), (4, 2)])
    assert UNet2DConditionModel.from_pretrained(FIXTURES / "unet").config.num_classes == 0  # no user encoder


def test_timestep_frequency_shift():
    t = torch.tensor([0.0, 3.0, 640.0])
    half = torch.arange(4, dtype=torch.float32)
    for s in (0.0, 1.0):
        angles = t[:, None] * torch.exp(-torch.log(torch.tensor(10000.0)) * half / (4 - s))
        assert torch.allclose(timestep_embedding(t, 8, freq_shift=s), torch.cat([angles.cos(), angles.sin()], 1))
    assert torch.equal(timestep_embedding(t, 8), timestep_embedding(t, 8, freq_shift=0.0))


# ---- round trips -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CLASSES))
def test_save_then_load_round_trips_bit_exactly_under_diffusers_names(name, tmp_path):
    model = CLASSES[name].from_pretrained(FIXTURES / name)
    model.save_pretrained(tmp_path / "out")
    theirs, ours = load_file(str(FIXTURES / name / WEIGHTS)), load_file(str(tmp_path / "out" / WEIGHTS))
    assert sorted(ours) == sorted(theirs)  # diffusers' key names, no more, no fewer
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    config, written = json.loads((FIXTURES / name / "config.json").read_text()), \
        json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: v for k, v in written.items() if k in config} == {k: v for k, v in config.items() if k in written}
    again = CLASSES[name].from_pretrained(tmp_path / "out")
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    for key, value in outputs(name, again).items():
        assert torch.equal(value, outputs(name, model)[key])


def tinyldm_models():
    torch.manual_seed(0)
    yield AutoencoderKL(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, sample_size=16,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=16, use_quant_conv=False, shift_factor=0.1)
    yield VQModel.from_preset("tiny", use_ema=True)
    yield UNet2DConditionModel.from_preset("tiny", num_classes=5)  # the embedding user encoder
    yield UNet2DConditionModel.from_preset("tiny", num_classes=0)
    dit = DiT(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=5,
              timestep_freq_shift=1.0, norm_eps=1e-6)
    with torch.no_grad():  # off the zero init, so the round trip compares something
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    yield dit


@pytest.mark.parametrize("model", list(tinyldm_models()), ids=lambda m: type(m).__name__)
def test_tinyldm_models_round_trip_through_the_diffusers_format(model, tmp_path):
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path)
    # Training settings are not diffusers'; the UNet's heads come back resolved, as diffusers writes them.
    skip = {"use_ema", "ema_decay", "beta", "restart_dead_codes", "dead_code_threshold", "class_dropout_prob",
            "num_attention_heads", "attention_head_dim"}
    assert {k: v for k, v in vars(again.config).items() if k not in skip} == \
        {k: v for k, v in vars(model.config).items() if k not in skip}
    if isinstance(model, UNet2DConditionModel):
        assert again.config.heads() == model.config.heads()
    mine = {k: v for k, v in model.state_dict().items() if "ema_" not in k and "steps_unused" not in k}
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in mine.items())


def test_the_original_dit_layout_loads_and_equals_the_diffusers_conversion():
    diffusers_dit = DiT.from_pretrained(FIXTURES / "dit")
    original = DiT.from_pretrained(FIXTURES / "dit_original.pt", num_heads=2)
    assert (original.config.timestep_freq_shift, original.config.norm_eps) == (0.0, 1e-6)  # the original DiT's
    theirs = diffusers_dit.state_dict()
    assert original.state_dict().keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in original.state_dict().items())
    # With diffusers' two constants, the original-layout weights give diffusers' outputs.
    as_diffusers = DiT.from_pretrained(FIXTURES / "dit_original.pt", num_heads=2, timestep_freq_shift=1.0,
                                       norm_eps=1e-5)
    assert rel_err(outputs("dit", as_diffusers)["out"], io("dit")["out"]) <= 1e-4


def test_interop_names_every_model_class_and_the_papers_dit_heads():
    """interop imports no model module (the models import it), so it names the classes and holds the paper's DiT
    head counts itself: both must agree with the models."""
    assert set(DIFFUSERS_CLASS) == {cls.__name__ for cls in CLASSES.values()}
    paper = {p["hidden_size"]: p["num_heads"] for name, p in DIT_PRESETS.items() if name.startswith("DiT-")}
    assert PAPER_HEADS == paper


def test_legacy_attention_names_of_older_vae_files_load(tmp_path):
    folder = copy_fixture("kl", tmp_path)
    old = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    state = load_file(str(folder / WEIGHTS))
    renamed = {}
    for k, v in state.items():
        for new, legacy in old.items():
            k = k.replace(f"attentions.0.{new}", f"attentions.0.{legacy}")
        renamed[k] = v
    assert renamed.keys() != state.keys()
    save_file(renamed, str(folder / WEIGHTS))
    a, b = AutoencoderKL.from_pretrained(folder), AutoencoderKL.from_pretrained(FIXTURES / "kl")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- user encoders ---------------------------------------------------------------------------------------------------

def test_sd_unet_gets_a_new_user_encoder_and_still_takes_a_raw_context(capsys):
    unet = UNet2DConditionModel.from_pretrained(FIXTURES / "unet", num_classes=31)
    assert "new embedding encoder for 31 users" in capsys.readouterr().out
    assert unet.cond_encoder.embedding_table.weight.shape == (32, 8) and not unet.cond_proj.weight.any()
    d = io("unet")
    with torch.no_grad():
        assert rel_err(unet(d["x"], d["t"], encoder_hidden_states=d["encoder_hidden_states"]), d["out"]) <= 1e-4
        assert unet(d["x"], d["t"], torch.tensor([0, 31])).shape == d["x"].shape
    bare = UNet2DConditionModel.from_pretrained(FIXTURES / "unet")
    with pytest.raises(ValueError, match="num_classes=0"):
        bare(d["x"], d["t"], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        bare(d["x"], d["t"])


def test_dit_with_another_number_of_users_gets_a_new_label_table(capsys):
    dit = DiT.from_pretrained(FIXTURES / "dit", num_classes=3)
    assert "5 classes → a new embedding encoder for 3 users" in capsys.readouterr().out
    assert dit.y_embedder.embedding_table.weight.shape == (4, 16)
    assert torch.equal(dit.blocks[0].attn.to_q.weight, DiT.from_pretrained(FIXTURES / "dit").blocks[0].attn.to_q.weight)


def test_conditionings_without_a_diffusers_equivalent_are_refused_on_save(tmp_path):
    for cond_type in ("tokens", "onehot_mlp"):
        with pytest.raises(PretrainedError, match=cond_type):
            UNet2DConditionModel.from_preset("tiny", cond_type=cond_type).save_pretrained(tmp_path)
        with pytest.raises(PretrainedError, match=cond_type):
            DiT.from_preset("tiny", cond_type=cond_type).save_pretrained(tmp_path)
    dit = DiT.from_preset("tiny")  # the original DiT's frequency shift 0: diffusers' DiT cannot hold it exactly
    with pytest.raises(PretrainedError, match="approximate_timestep=True"):
        dit.save_pretrained(tmp_path)
    dit.save_pretrained(tmp_path, approximate_timestep=True)
    assert DiT.from_pretrained(tmp_path).config.timestep_freq_shift == 1.0
    with pytest.raises(PretrainedError, match="l2_normalize"):
        VQModel.from_preset("tiny", l2_normalize=True).save_pretrained(tmp_path)


# ---- bad input -------------------------------------------------------------------------------------------------------

def test_a_folder_without_config_json(tmp_path):
    with pytest.raises(PretrainedError) as e:
        AutoencoderKL.from_pretrained(tmp_path)
    one_line_error(e, str(tmp_path), "no config.json")
    shutil.copytree(FIXTURES / "kl", tmp_path / "vae")  # a pipeline folder: the error names the subfolder
    with pytest.raises(PretrainedError) as e:
        AutoencoderKL.from_pretrained(tmp_path)
    one_line_error(e, "subfolder=", "'vae'")
    assert AutoencoderKL.from_pretrained(tmp_path, subfolder="vae").config.latent_channels == 4


def test_a_folder_of_another_model_class():
    with pytest.raises(PretrainedError) as e:
        AutoencoderKL.from_pretrained(FIXTURES / "unet")
    one_line_error(e, "config.json", "diffusers UNet2DConditionModel", "load it with tinyldm's UNet2DConditionModel")


def test_a_truncated_safetensors_file(tmp_path):
    folder = copy_fixture("vq", tmp_path)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedError) as e:
        VQModel.from_pretrained(folder)
    one_line_error(e, str(folder / WEIGHTS), "cut short or damaged", "download it again")


def test_shape_mismatches_and_missing_and_unexpected_tensors_are_listed_in_one_error(tmp_path):
    folder = copy_fixture("dit", tmp_path)
    state = load_file(str(folder / WEIGHTS))
    state["proj_out_2.bias"] = torch.zeros(3)  # wrong shape
    del state["transformer_blocks.1.ff.net.2.weight"]  # missing
    state["extra.weight"] = torch.zeros(1)  # unexpected
    save_file(state, str(folder / WEIGHTS))
    with pytest.raises(PretrainedError) as e:
        DiT.from_pretrained(folder)
    one_line_error(e, str(folder / WEIGHTS), "missing transformer_blocks.1.ff.net.2.weight", "unexpected extra.weight",
                   "shape mismatch proj_out_2.bias (final_layer.linear.bias): file [3], model [32]")
    with pytest.raises(PretrainedError, match="shape mismatch"):  # a config override that does not fit the weights
        AutoencoderKL.from_pretrained(FIXTURES / "kl", latent_channels=8)


def test_per_block_embedders_that_differ_are_refused(tmp_path):
    folder = copy_fixture("dit", tmp_path)
    state = load_file(str(folder / WEIGHTS))
    state["transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"] += 1.0
    save_file(state, str(folder / WEIGHTS))
    with pytest.raises(PretrainedError) as e:
        DiT.from_pretrained(folder)
    one_line_error(e, "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias differs from block 0's")


def test_a_pickle_that_is_not_a_plain_state_dict(tmp_path):
    state = torch.load(FIXTURES / "dit_original.pt", weights_only=True)
    torch.save({"model": state, "ema": state, "args": argparse.Namespace(model="DiT-XL/2")}, tmp_path / "ckpt.pt")
    with pytest.raises(PretrainedError) as e:
        DiT.from_pretrained(tmp_path / "ckpt.pt", num_heads=2)
    one_line_error(e, str(tmp_path / "ckpt.pt"), "not a plain state dict", "argparse.Namespace", "['ema']")
    torch.save({"model": state, "ema": state}, tmp_path / "nested.pt")  # loads, but is not {name: tensor}
    with pytest.raises(PretrainedError) as e:
        DiT.from_pretrained(tmp_path / "nested.pt", num_heads=2)
    one_line_error(e, "nested.pt", "torch.save(ckpt['model']")
    (tmp_path / "cut.pt").write_bytes((FIXTURES / "dit_original.pt").read_bytes()[:1000])
    with pytest.raises(PretrainedError) as e:
        DiT.from_pretrained(tmp_path / "cut.pt", num_heads=2)
    one_line_error(e, "cut.pt", "cut short or damaged")


def edit_config(name: str, tmp_path: Path, **changes) -> Path:
    folder = copy_fixture(name, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_config_values_tinyldm_cannot_honour_are_refused_by_key(tmp_path):
    for name, key, value in (("unet", "resnet_time_scale_shift", "scale_shift"), ("unet", "num_class_embeds", 10),
                             ("unet", "transformer_layers_per_block", [1, 2]), ("dit", "activation_fn", "geglu"),
                             ("vq", "norm_type", "spatial"), ("kl", "an_unknown_key", 1)):
        folder = edit_config(name, tmp_path / key, **{key: value})
        with pytest.raises(PretrainedError) as e:
            CLASSES[name].from_pretrained(folder)
        one_line_error(e, str(folder / "config.json"), f"{key}={value!r}")
    folder = edit_config("kl", tmp_path / "ok", _name_or_path="stabilityai/sd-vae-ft-mse", force_upcast=False)
    assert AutoencoderKL.from_pretrained(folder).config.latent_channels == 4  # bookkeeping keys are ignored
    with pytest.raises(PretrainedError, match="unknown setting not_a_field"):
        AutoencoderKL.from_pretrained(FIXTURES / "kl", not_a_field=1)


def test_the_older_diffusers_name_of_the_dit_class_loads(tmp_path):
    legacy = dict(_class_name="Transformer2DModel", cross_attention_dim=None, num_vector_embeds=None,
                  only_cross_attention=False, use_linear_projection=False, double_self_attention=False)
    dit = DiT.from_pretrained(edit_config("dit", tmp_path, **legacy))
    assert rel_err(outputs("dit", dit)["out"], io("dit")["out"]) <= 1e-4


def test_vq_with_ema_starts_its_statistics_from_the_loaded_codes():
    vq = VQModel.from_pretrained(FIXTURES / "vq", use_ema=True)
    assert torch.equal(vq.quantize.ema_embed_sum, vq.quantize.embedding.weight)


# ---- diffusers itself, when installed (never in tinyldm's environment) -----------------------------------------------

@pytest.mark.parametrize("model", list(tinyldm_models()), ids=lambda m: type(m).__name__)
def test_diffusers_loads_what_tinyldm_writes_and_computes_the_same(model, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    model.eval().save_pretrained(tmp_path)
    theirs = getattr(diffusers, json.loads((tmp_path / "config.json").read_text())["_class_name"]).from_pretrained(
        tmp_path).eval()
    x = torch.randn(2, model.config.in_channels, 16, 16) if not isinstance(model, DiT) else torch.randn(2, 4, 8, 8)
    t, y = torch.tensor([5.0, 700.0]), torch.tensor([1, 5])
    with torch.no_grad():
        if isinstance(model, AutoencoderKL):
            ours = model.decode(model.encode(x).mean)
            ref = theirs.decode(theirs.encode(x).latent_dist.mean).sample
        elif isinstance(model, VQModel):
            ours, ref = model.decode_latent(model.latent_moments(x)[0]), theirs.decode(theirs.encode(x).latents).sample
        elif isinstance(model, DiT):
            ours, ref = model(x, t, y), theirs(x, t, y).sample
        elif model.config.num_classes:
            one_hot = torch.nn.functional.one_hot(y, 6).float()[:, None]
            x = torch.randn(2, 4, 32, 32)
            ours = model(x, t, y)
            user_vector = theirs.encoder_hid_proj(one_hot)[:, 0]  # (B, D): the user's row of the table
            ref = theirs(x, t, encoder_hidden_states=one_hot, class_labels=user_vector).sample
        else:
            x, ctx = torch.randn(2, 4, 32, 32), torch.randn(2, 3, model.config.cross_attention_dim)
            ours, ref = model(x, t, encoder_hidden_states=ctx), theirs(x, t, encoder_hidden_states=ctx).sample
    assert rel_err(ours, ref) <= 1e-4
