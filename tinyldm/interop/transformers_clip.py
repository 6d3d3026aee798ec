"""from_pretrained / save_pretrained: transformers CLIPTextModel folders (an SD pipeline's text_encoder/) ↔ tinyldm's
CLIPTextModel.

Such a folder holds config.json ("architectures": ["CLIPTextModel"], "model_type": "clip_text_model") and
model.safetensors (older uploads: pytorch_model.bin, read by torch.load(weights_only=True), which runs no code).
Tensor names: transformers 4.x, and so every SD upload, prefix each with `text_model.`; transformers 5 writes them
without it and reads both. We read both and write the prefixed layout, which every transformers version reads.
Old files also carry `embeddings.position_ids` (0 … L − 1, a buffer later made non-persistent); transformers ignores
it on load, and so do we (some community files hold it damaged, e.g. rounded through float16).

Loading is strict, as for diffusers folders (pretrained.py): a config key tinyldm does not implement is refused,
naming it; a tensor missing, left over or of another shape is one error listing them (pretrained_weights.fill_weights
through WEIGHT_NAMES below). transformers itself is never imported; this file imports no model (the model calls in).

CLIPTextModelWithProjection (SDXL's second text encoder, SD3's CLIP-L/G) would add one tensor, text_projection.weight
(projection_dim, D) without bias, mapping the pooled vector into CLIP's joint space; it is not built, so its folders are
refused with that said. Leaves first: tables → config → folder → from_pretrained → save_pretrained.
"""

from pathlib import Path

from torch import nn

from tinyldm.interop.pretrained import build
from tinyldm.interop.pretrained_weights import PretrainedError, export_weights, fill_weights, folder_weights, read_json
from tinyldm.runs import atomic_save_weights, atomic_write_json

WEIGHTS, LEGACY_WEIGHTS = "model.safetensors", "pytorch_model.bin"
PREFIX = "text_model."  # CLIPTextModel's tensors in transformers 4.x files (CLIPTextTransformer inside)
# Checked against transformers 5.25.0 (tests/fixtures/transformers/manifest.json).

# ---- tables ----------------------------------------------------------------------------------------------------------

# Weights, rows as in diffusers_names.py: (tinyldm, transformers without the text_model. prefix, how); a key that no
# row matches (final_layer_norm.*) has the same name in both.
WEIGHT_NAMES = [
    # tinyldm                    transformers                                how
    ("token_embedding.",         "embeddings.token_embedding.",              ""),
    ("position_embedding.",      "embeddings.position_embedding.",           ""),
    ("layers.{i}.norm1.",        "encoder.layers.{i}.layer_norm1.",          ""),
    ("layers.{i}.norm2.",        "encoder.layers.{i}.layer_norm2.",          ""),
    ("layers.{i}.attn.to_q.",    "encoder.layers.{i}.self_attn.q_proj.",     ""),
    ("layers.{i}.attn.to_k.",    "encoder.layers.{i}.self_attn.k_proj.",     ""),
    ("layers.{i}.attn.to_v.",    "encoder.layers.{i}.self_attn.v_proj.",     ""),
    ("layers.{i}.attn.to_out.",  "encoder.layers.{i}.self_attn.out_proj.",   ""),
    ("layers.{i}.fc1.",          "encoder.layers.{i}.mlp.fc1.",              ""),
    ("layers.{i}.fc2.",          "encoder.layers.{i}.mlp.fc2.",              ""),
]

# config.json key (= tinyldm's CLIPTextConfig field of the same name) → transformers' default when the key is absent.
CONFIG_KEYS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-5,
    "hidden_act": "quick_gelu",  # an activation tinyldm lacks is refused by CLIPTextConfig, naming hidden_act
    "eos_token_id": 49407,
    "bos_token_id": 49406,
    "pad_token_id": 1,
}
# Keys tinyldm implements at these values only (the first is what save_pretrained writes).
FIXED = {"attention_dropout": (0.0, 0)}  # tinyldm's CLIP has no dropout
# Read and ignored: bookkeeping, and keys without effect on this model (each with the reason).
IGNORED = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash",
           "initializer_range", "initializer_factor",  # the random init only
           "projection_dim",  # only CLIPTextModelWithProjection's head reads it
           "dropout")  # written by transformers 4.x, read by no CLIP module
WRITTEN = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "initializer_factor": 1.0,
           "initializer_range": 0.02}

# ---- config ----------------------------------------------------------------------------------------------------------


def read_transformers_config(config: dict, cls: type, where: Path) -> dict:
    """A transformers CLIPTextModel config.json → keyword arguments for tinyldm's CLIPTextConfig."""
    model_type, architectures = config.get("model_type", "clip_text_model"), config.get("architectures")
    if model_type != "clip_text_model":
        what = ("a whole CLIP model (text and vision towers); pass a CLIPTextModel folder such as an SD pipeline's "
                "text_encoder/" if model_type == "clip" else f"a transformers {model_type!r} model, not a CLIP text "
                "encoder")
        raise PretrainedError(f"{where} describes {what}")
    if architectures not in (None, ["CLIPTextModel"]):
        extra = (": it adds text_projection.weight (projection_dim × hidden_size, no bias) on the pooled vector, "
                 "which tinyldm's CLIPTextModel does not build" if architectures == ["CLIPTextModelWithProjection"]
                 else "")
        raise PretrainedError(f"{where}: architectures={architectures} is not [\"CLIPTextModel\"]{extra}")
    for key, value in config.items():
        if key not in CONFIG_KEYS and key not in FIXED and key not in IGNORED and key not in WRITTEN:
            raise PretrainedError(f"{where}: {key}={value!r} is a setting tinyldm's {cls.__name__} does not know, so "
                                  "it cannot honour it; remove the key if you know it has no effect")
    for key, accepted in FIXED.items():
        if config.get(key, accepted[0]) not in accepted:
            raise PretrainedError(f"{where}: {key}={config[key]!r} is not implemented by tinyldm's {cls.__name__} (it "
                                  f"implements {key}={accepted[0]!r}); this model cannot be loaded")
    kwargs = {key: config.get(key, default) for key, default in CONFIG_KEYS.items()}
    if not isinstance(kwargs["eos_token_id"], int):
        raise PretrainedError(f"{where}: eos_token_id={kwargs['eos_token_id']!r} is not one token id; tinyldm's "
                              f"{cls.__name__} pools at one end-of-text id")
    return kwargs


def transformers_config(model: nn.Module) -> dict:
    """tinyldm CLIPTextModel → the config.json transformers' CLIPTextModel reads."""
    fixed = {key: accepted[0] for key, accepted in FIXED.items()}
    return {**WRITTEN, **{key: getattr(model.config, key) for key in CONFIG_KEYS}, **fixed}


# ---- folder ----------------------------------------------------------------------------------------------------------

def text_encoder_folder(path: Path) -> Path:
    """A CLIPTextModel folder (config.json + weights), or a clear error saying what to pass instead."""
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        raise PretrainedError(f"{path} {state}; pass a transformers CLIPTextModel folder (config.json + {WEIGHTS})")
    if not (path / "config.json").is_file():
        fix = ("it is a pipeline folder: pass subfolder='text_encoder'" if (path / "text_encoder").is_dir()
               else f"pass the folder that holds config.json and {WEIGHTS}")
        raise PretrainedError(f"{path} has no config.json; {fix}")
    return path


# ---- from_pretrained / save_pretrained -------------------------------------------------------------------------------

def from_pretrained(cls: type, config_cls: type, path, subfolder: str | None = None, **overrides) -> nn.Module:
    """A transformers CLIPTextModel folder → tinyldm's `cls` built from a `config_cls`, in eval mode. Keyword
    arguments override config values (e.g. reference_attention=True)."""
    path = Path(path) / subfolder if subfolder else Path(path)
    where = text_encoder_folder(path) / "config.json"
    kwargs = read_transformers_config(read_json(where), cls, where)
    state, weights = folder_weights(path, WEIGHTS, LEGACY_WEIGHTS)
    state = {key.removeprefix(PREFIX): tensor for key, tensor in state.items()}
    state.pop("embeddings.position_ids", None)  # positions are 0 … L − 1 by definition (see the docstring)
    model = build(cls, config_cls, kwargs, overrides, where)
    fill_weights(model, state, WEIGHT_NAMES, weights)
    return model.eval()


def save_pretrained(model: nn.Module, out_dir) -> None:
    """model → out_dir/config.json + model.safetensors (text_model.-prefixed names), each written under a temporary
    name and renamed; transformers' CLIPTextModel.from_pretrained reads the folder."""
    tensors = {PREFIX + key: tensor for key, tensor in export_weights(model, WEIGHT_NAMES).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_weights(out / WEIGHTS, tensors, metadata={"format": "pt"})
    atomic_write_json(out / "config.json", transformers_config(model))
