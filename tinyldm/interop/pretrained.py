"""from_pretrained / save_pretrained: diffusers model folders and original DiT checkpoints ↔ tinyldm models.

A diffusers model folder holds config.json (the constructor's keyword arguments, and `_class_name`) and
diffusion_pytorch_model.safetensors. Loading reads the config, translates it into tinyldm's config (what tinyldm does
not implement is refused, naming the key), builds the model and fills every tensor through the name tables of
diffusers_names.py, strictly: a tensor missing, left over or of another shape is an error, never skipped. Saving runs
the same tables the other way. An original DiT checkpoint (a plain state dict in a .pt file) is read with
torch.load(weights_only=True), which runs no code. diffusers itself is never imported.

The model classes call in here (`DiT.from_pretrained` → `from_pretrained(DiT, DiTConfig, ...)`), never the reverse:
this file imports no model module and knows each class by its name (diffusers_names.DIFFUSERS_CLASS), so the
import graph has no circle. Reading weight files and moving tensors through the name tables is pretrained_weights.py;
this file holds the configs and the two entry points. Leaves first: configs → from_pretrained → save_pretrained.
"""

import math
import re
from dataclasses import fields
from pathlib import Path

from torch import nn

from tinyldm.interop import diffusers_names as names
from tinyldm.interop.pretrained_weights import (
    WEIGHTS,
    PretrainedError,
    export_weights,
    fill_weights,
    folder_weights,
    listed,
    model_folder,
    read_json,
    read_safetensors,
    read_state_dict,
    row_regex,
)
from tinyldm.runs import atomic_save_weights, atomic_write_json

TINYLDM_CLASS = {diffusers: ours for ours, diffusers in names.DIFFUSERS_CLASS.items()}
# An original DiT checkpoint does not store its head count: the paper's sizes (Table 1) give it by width.
PAPER_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}  # DiT-S, -B, -L, -XL (tests check them against dit.PRESETS)


def diffusers_class(cls: type) -> str:
    """The diffusers class whose folders tinyldm's `cls` reads and writes."""
    if cls.__name__ not in names.DIFFUSERS_CLASS:
        raise TypeError(f"from_pretrained / save_pretrained read and write {sorted(names.DIFFUSERS_CLASS)}, not "
                        f"{cls.__name__}")
    return names.DIFFUSERS_CLASS[cls.__name__]


# ---- configs ---------------------------------------------------------------------------------------------------------

def accepts(value, accepted: tuple) -> bool:
    """value is one of `accepted`, or a per-level list of such values."""
    return all(v in accepted for v in value) if isinstance(value, (list, tuple)) else value in accepted


def one_value(value, key: str, where: Path):
    """A per-level list whose entries are equal → that entry (tinyldm's UNet takes one value for all levels)."""
    if isinstance(value, (list, tuple)):
        if any(v != value[0] for v in value):
            raise PretrainedError(f"{where}: {key}={value} differs per level; tinyldm's UNet takes one {key} for all "
                                  "levels, so this model cannot be loaded")
        return value[0]
    return value


def square(value, key: str, where: Path):
    """sample_size as diffusers may write it, [h, w] → h when square."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise PretrainedError(f"{where}: {key}={value} is not square; tinyldm's models take one size")
        return value[0]
    return value


def read_diffusers_config(config: dict, cls: type, where: Path) -> dict:
    """A diffusers config.json → keyword arguments for tinyldm's config class (before the caller's overrides)."""
    class_name = diffusers_class(cls)
    found = config.get("_class_name", class_name)
    legacy = found in names.LEGACY_CLASS and config.get("norm_type") == "ada_norm_zero"
    found = names.LEGACY_CLASS[found] if legacy else found
    if found != class_name:
        instead = f"load it with tinyldm's {TINYLDM_CLASS[found]}" if found in TINYLDM_CLASS else "tinyldm has none"
        raise PretrainedError(f"{where} describes a diffusers {found}; {cls.__name__}.from_pretrained reads "
                              f"{class_name} folders: {instead}")
    keys, fixed = names.CONFIG_KEYS[class_name], {**names.FIXED[class_name], **(names.LEGACY_FIXED if legacy else {})}
    ignored = set(names.BOOKKEEPING) | set(names.IGNORED[class_name])
    for key, value in config.items():
        if key not in keys and key not in fixed and key not in ignored:
            raise PretrainedError(f"{where}: {key}={value!r} is a setting tinyldm's {cls.__name__} does not know, so "
                                  "it cannot honour it; remove the key if you know it has no effect")
    for key, accepted in fixed.items():
        value = config.get(key, accepted[0])
        if not accepts(value, accepted):
            raise PretrainedError(f"{where}: {key}={value!r} is not implemented by tinyldm's {cls.__name__} (it "
                                  f"implements {key}={accepted[0]!r}); this model cannot be loaded")
    values = {key: config.get(key, default) for key, (_, default) in keys.items()}
    kwargs = {field: values[key] for key, (field, _) in keys.items() if field}
    if "sample_size" in kwargs:
        kwargs["sample_size"] = square(kwargs["sample_size"], "sample_size", where)
    if "input_size" in kwargs:
        kwargs["input_size"] = square(kwargs["input_size"], "sample_size", where)
    if class_name == "UNet2DConditionModel":
        unet_kwargs(values, kwargs, where)
    if class_name == "DiTTransformer2DModel":
        heads, in_channels, out = values["num_attention_heads"], values["in_channels"], values["out_channels"]
        if out not in (None, in_channels, 2 * in_channels):
            raise PretrainedError(f"{where}: out_channels={out} is neither in_channels={in_channels} nor twice it "
                                  "(ε with a learned variance); tinyldm's DiT cannot output it")
        kwargs.update(hidden_size=heads * values["attention_head_dim"], learn_sigma=out == 2 * in_channels,
                      mlp_ratio=4.0, timestep_freq_shift=1.0)  # diffusers' DiT: FeedForward mult 4, freq shift 1
    return kwargs


def unet_kwargs(values: dict, kwargs: dict, where: Path) -> None:
    """The UNet's per-level lists, time width and user encoder (the one tinyldm writes, or none)."""
    for key in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block"):
        kwargs[key] = one_value(kwargs[key], key, where)
    if kwargs["sample_size"] is None:  # diffusers allows none; tinyldm's UNet only checks that it halves cleanly
        kwargs["sample_size"] = 2 ** (len(kwargs["block_out_channels"]) - 1)
    if values["time_embedding_dim"] not in (None, 4 * kwargs["block_out_channels"][0]):
        raise PretrainedError(f"{where}: time_embedding_dim={values['time_embedding_dim']} is not implemented by "
                              "tinyldm's UNet (it uses 4 × block_out_channels[0])")
    if values["num_class_embeds"] is not None:
        raise PretrainedError(f"{where}: num_class_embeds={values['num_class_embeds']} (a class table added to the "
                              "time embedding) is not implemented by tinyldm's UNet, whose user encoder is written as "
                              "class_embed_type='simple_projection' + encoder_hid_dim_type='text_proj'")
    hid_type = values["encoder_hid_dim_type"] or ("text_proj" if values["encoder_hid_dim"] else None)
    user = (values["class_embed_type"], hid_type)
    if user == (None, None):
        kwargs.update(num_classes=0)
    elif (user == ("simple_projection", "text_proj") and values["encoder_hid_dim"] and values["encoder_hid_dim"] > 1
          and values["projection_class_embeddings_input_dim"] == kwargs["cross_attention_dim"]):
        kwargs.update(num_classes=values["encoder_hid_dim"] - 1, cond_type="embedding")
    else:
        raise PretrainedError(
            f"{where}: class_embed_type={user[0]!r} with encoder_hid_dim_type={user[1]!r} (encoder_hid_dim="
            f"{values['encoder_hid_dim']}, projection_class_embeddings_input_dim="
            f"{values['projection_class_embeddings_input_dim']}) is not implemented by tinyldm's UNet; it reads no "
            "conditioning module, or the user table its save_pretrained writes")


def diffusers_config(model: nn.Module, approximate_timestep: bool = False) -> dict:
    """tinyldm model → the config.json diffusers' class reads; what diffusers cannot represent is refused."""
    class_name, c = diffusers_class(type(model)), model.config
    out = {key: getattr(c, field) for key, (field, _) in names.CONFIG_KEYS[class_name].items() if field}
    if class_name == "VQModel" and c.l2_normalize:
        raise PretrainedError("l2_normalize=True (cosine-similarity code lookup) has no diffusers VQModel "
                              "equivalent; only a VQModel trained without it can be written")
    if class_name == "UNet2DConditionModel":
        if c.num_classes and c.cond_type != "embedding":
            raise PretrainedError(f"cond_type {c.cond_type!r} has no diffusers UNet2DConditionModel equivalent; only "
                                  "the 'embedding' user encoder (or none, num_classes=0) can be written")
        heads = [h for h, _ in c.heads()]
        users = c.num_classes + 1 if c.num_classes else None
        out.update(attention_head_dim=c.attention_head_dim if c.num_attention_heads is None else heads,
                   class_embed_type="simple_projection" if users else None, num_class_embeds=None,
                   projection_class_embeddings_input_dim=c.cross_attention_dim if users else None,
                   encoder_hid_dim_type="text_proj" if users else None, encoder_hid_dim=users, time_embedding_dim=None)
    if class_name == "DiTTransformer2DModel":
        if c.cond_type != "embedding" or c.mlp_ratio != 4.0:
            what = f"cond_type {c.cond_type!r}" if c.cond_type != "embedding" else f"mlp_ratio {c.mlp_ratio}"
            raise PretrainedError(f"{what} has no diffusers DiTTransformer2DModel equivalent (it has a label table and "
                                  "an MLP of 4 × width)")
        if c.timestep_freq_shift != 1 and not approximate_timestep:
            raise PretrainedError(
                f"timestep_freq_shift {c.timestep_freq_shift} cannot be written exactly: diffusers' DiT always uses 1 "
                "(time frequencies 10000^(−i/127), not 10000^(−i/128)); pass approximate_timestep=True to write it "
                "anyway (diffusers then runs it as it runs every DiT converted from the original), or train with "
                "timestep_freq_shift=1")
        out.update(attention_head_dim=c.hidden_size // c.num_heads, out_channels=c.out_channels)
    fixed = {key: accepted[0] for key, accepted in names.FIXED[class_name].items()}
    return {"_class_name": class_name, "_diffusers_version": names.DIFFUSERS_VERSION, **out, **fixed,
            **names.WRITTEN_DEFAULTS[class_name]}


def original_dit_config(state: dict, path: Path, overrides: dict) -> dict:
    """An original DiT state dict → DiTConfig keyword arguments, read off its tensor shapes (heads: the paper's)."""
    try:
        hidden, in_channels, p, _ = state["x_embedder.proj.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        grid = math.isqrt(state["pos_embed"].shape[1])
        out_channels = state["final_layer.linear.weight"].shape[0] // (p * p)
        kwargs = dict(input_size=grid * p, patch_size=p, in_channels=in_channels, hidden_size=hidden, depth=depth,
                      num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,  # the null id is the last
                      mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
                      learn_sigma=out_channels == 2 * in_channels)
    except (KeyError, ValueError) as e:  # a tensor missing, or no blocks.N at all
        lacks = e.args[0] if isinstance(e, KeyError) else "blocks.N.*"
        hint = "; it is a diffusers DiT: pass its folder" if "pos_embed.proj.weight" in state else ""
        raise PretrainedError(f"{path} is not an original DiT state dict (it has no {lacks}){hint}") from None
    if "num_heads" not in overrides:
        if hidden not in PAPER_HEADS:
            raise PretrainedError(f"{path}: a DiT of width {hidden} is none of the paper's sizes, so its head count is "
                                  "unknown; pass num_heads=")
        kwargs["num_heads"] = PAPER_HEADS[hidden]
    return kwargs


# ---- from_pretrained -------------------------------------------------------------------------------------------------

def build(cls: type, config_cls: type, kwargs: dict, overrides: dict, where: Path) -> nn.Module:
    allowed = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise PretrainedError(f"{cls.__name__}.from_pretrained: unknown setting {listed(unknown)}; choose from "
                              f"{sorted(allowed)}")
    try:
        return cls(config_cls(**{**kwargs, **overrides}))
    except ValueError as e:
        raise PretrainedError(f"{where}: {e}") from None


def from_pretrained(cls: type, config_cls: type, path, subfolder: str | None = None, **overrides) -> nn.Module:
    """A diffusers model folder (or, for DiT, an original DiT .pt state dict) → a tinyldm model of class `cls`, built
    from a `config_cls`, in eval mode. Each model's own from_pretrained calls this with its two classes.

    Keyword arguments override config values (e.g. num_classes=31, reference_attention=True). Where they give the
    model another user encoder than the checkpoint's (a new number of users, or one where it has none), that
    encoder is new and initialised, and a line says so.
    """
    class_name = diffusers_class(cls)
    path = Path(path) / subfolder if subfolder else Path(path)
    if class_name == "DiTTransformer2DModel" and path.is_file():  # the original DiT layout
        state = read_safetensors(path) if path.suffix == ".safetensors" else read_state_dict(path)
        kwargs, table, weights, where = original_dit_config(state, path, overrides), names.DIT_ORIGINAL, path, path
    else:
        where = model_folder(path) / "config.json"
        kwargs = read_diffusers_config(read_json(where), cls, where)
        state, weights = folder_weights(path)
        table = names.WEIGHT_NAMES[class_name]
        if class_name in ("AutoencoderKL", "VQModel"):  # older attention names, renamed as diffusers renames them
            for old, new in names.AUTOENCODER_LEGACY:
                state = {re.sub(row_regex(old).pattern, new, k): v for k, v in state.items()}
    model = build(cls, config_cls, kwargs, overrides, where)

    # A user encoder other than the checkpoint's is new: initialised here, its old tensors dropped.
    new, c = (), model.config
    had = (kwargs.get("num_classes"), kwargs.get("cond_type", "embedding"))
    if cls.__name__ in names.USER_ENCODER and (c.num_classes, c.cond_type) != had:
        new = names.USER_ENCODER[cls.__name__]
        init = "as DiT initialises it"
        if class_name == "UNet2DConditionModel" and model.cond_proj is not None:
            nn.init.zeros_(model.cond_proj.weight)  # the pretrained time embedding is unchanged at first
            nn.init.zeros_(model.cond_proj.bias)
            init = "its projection onto the time embedding zero: that starts as the pretrained one"
        before = f"{had[0]} classes" if had[0] else "none"
        now = f"a new {c.cond_type} encoder for {c.num_classes} users + the null id ({init})" if c.num_classes \
            else "none"
        print(f"{cls.__name__}.from_pretrained: user encoder of {path}: {before} → {now}", flush=True)
    fill_weights(model, state, table, weights, depth=getattr(model.config, "depth", 0), new=new)
    if class_name == "VQModel" and model.quantize.use_ema:  # EMA statistics start from the loaded codes
        model.quantize.ema_embed_sum.copy_(model.quantize.embedding.weight.detach())  # N_k = 1, m_k = e_k
    return model.eval()


# ---- save_pretrained -------------------------------------------------------------------------------------------------

def save_pretrained(model: nn.Module, out_dir, approximate_timestep: bool = False) -> None:
    """model → a diffusers model folder out_dir/ (config.json + diffusion_pytorch_model.safetensors) that diffusers'
    from_pretrained of the same class loads; each file is written under a temporary name and renamed."""
    config = diffusers_config(model, approximate_timestep)
    table = names.WEIGHT_NAMES[config["_class_name"]]
    tensors = export_weights(model, table, depth=getattr(model.config, "depth", 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_weights(out / WEIGHTS, tensors, metadata={"format": "pt"})
    atomic_write_json(out / "config.json", config)
