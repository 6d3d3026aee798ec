"""Name tables: tinyldm's state-dict keys and config fields ↔ diffusers' and the original DiT's.

Only `pretrained.py` reads these tables; the model files never meet them (tinyldm's module names stay as they are,
so run folders written before keep loading). No model is imported here: classes are named by their `__name__`.

Weights. Each row is (tinyldm, other, how). A row matches a tinyldm key where its left side appears at a dot
boundary ("attn1.to_out." matches "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.weight"); the first
matching row replaces that part by its right side; a key that no row matches has the same name in both. {i} is a
block number, the same on both sides. `how`:
    ""           the same tensor under another name
    "each"       one tinyldm tensor ↔ an equal copy in every block, {each} = 0 … depth − 1 (diffusers' DiT keeps a
                 timestep and label embedder per block); loading checks that the copies are equal
    "chunk k/n"  the tinyldm tensor is part k of n of the other's, split along dim 0 (the original DiT's fused qkv)
    "onehot"     tinyldm's user table E (N + 1, D) ↔ a Linear applied to one-hot ids: weight Eᵀ (D, N + 1), bias 0
    "tinyldm"    tinyldm-only training state that the other format does not store: kept as built, never written
    "fixed"      a tensor only the other format stores and tinyldm computes (the original DiT's sin-cos positions):
                 checked equal to the model's own on load, then dropped
"""

# ---- weights -------------------------------------------------------------------------------------------------------

# AutoencoderKL and VQModel: tinyldm nests the mid blocks' attention projections one level deeper (AttnBlock.attn).
AUTOENCODER = [
    # tinyldm                        diffusers                      how
    ("attentions.0.attn.to_q.",      "attentions.0.to_q.",          ""),
    ("attentions.0.attn.to_k.",      "attentions.0.to_k.",          ""),
    ("attentions.0.attn.to_v.",      "attentions.0.to_v.",          ""),
    ("attentions.0.attn.to_out.",    "attentions.0.to_out.0.",      ""),
    ("quantize.steps_unused",        None,                          "tinyldm"),  # dead-code restart counters
    ("quantize.ema_cluster_size",    None,                          "tinyldm"),  # EMA codebook statistics
    ("quantize.ema_embed_sum",       None,                          "tinyldm"),
]

# Older diffusers files name the same four projections query / key / value / proj_attn; diffusers' loader still
# renames them, and so do we: (old diffusers name, current diffusers name).
AUTOENCODER_LEGACY = [
    ("attentions.0.query.",          "attentions.0.to_q."),
    ("attentions.0.key.",            "attentions.0.to_k."),
    ("attentions.0.value.",          "attentions.0.to_v."),
    ("attentions.0.proj_attn.",      "attentions.0.to_out.0."),
]

# UNet2DConditionModel: Linear layers that diffusers wraps in a list (to_out.0) or in an activation module (net.0.proj).
# tinyldm's user encoder is written as two modules diffusers has: the user vector's projection onto the time embedding
# is class_embed_type="simple_projection", and the user table is encoder_hid_proj applied to one-hot ids, so that in
# diffusers  unet(x, t, encoder_hidden_states=one_hot(y)[:, None], class_labels=unet.encoder_hid_proj(one_hot(y)))
# computes what tinyldm's unet(x, t, y) does.
UNET = [
    # tinyldm                                   diffusers                    how
    ("attn1.to_out.",                           "attn1.to_out.0.",           ""),
    ("attn2.to_out.",                           "attn2.to_out.0.",           ""),
    ("ff.proj_in.",                             "ff.net.0.proj.",            ""),
    ("ff.proj_out.",                            "ff.net.2.",                 ""),
    ("cond_proj.",                              "class_embedding.",          ""),
    ("cond_encoder.embedding_table.weight",     "encoder_hid_proj.weight",   "onehot"),
]

# DiT ↔ diffusers' DiTTransformer2DModel (one timestep + label embedder per block, all equal when converted from DiT).
DIT = [
    # tinyldm                            diffusers                                                        how
    ("x_embedder.",                      "pos_embed.proj.",                                               ""),
    ("t_embedder.",                      "transformer_blocks.{each}.norm1.emb.timestep_embedder.",        "each"),
    ("y_embedder.embedding_table.",      "transformer_blocks.{each}.norm1.emb.class_embedder.embedding_table.",
                                                                                                          "each"),
    ("blocks.{i}.adaLN_modulation.1.",   "transformer_blocks.{i}.norm1.linear.",                          ""),
    ("blocks.{i}.attn.to_out.",          "transformer_blocks.{i}.attn1.to_out.0.",                        ""),
    ("blocks.{i}.attn.",                 "transformer_blocks.{i}.attn1.",                                 ""),
    ("blocks.{i}.mlp.proj_in.",          "transformer_blocks.{i}.ff.net.0.proj.",                         ""),
    ("blocks.{i}.mlp.proj_out.",         "transformer_blocks.{i}.ff.net.2.",                              ""),
    ("final_layer.adaLN_modulation.1.",  "proj_out_1.",                                                   ""),
    ("final_layer.linear.",              "proj_out_2.",                                                   ""),
]

# DiT ↔ the original DiT code's state dict (facebookresearch/DiT models.py; timm's Attention and Mlp inside).
DIT_ORIGINAL = [
    # tinyldm                            original DiT                how
    ("x_embedder.",                      "x_embedder.proj.",         ""),
    ("t_embedder.linear_1.",             "t_embedder.mlp.0.",        ""),
    ("t_embedder.linear_2.",             "t_embedder.mlp.2.",        ""),
    ("blocks.{i}.attn.to_q.",            "blocks.{i}.attn.qkv.",     "chunk 0/3"),
    ("blocks.{i}.attn.to_k.",            "blocks.{i}.attn.qkv.",     "chunk 1/3"),
    ("blocks.{i}.attn.to_v.",            "blocks.{i}.attn.qkv.",     "chunk 2/3"),
    ("blocks.{i}.attn.to_out.",          "blocks.{i}.attn.proj.",    ""),
    ("blocks.{i}.mlp.proj_in.",          "blocks.{i}.mlp.fc1.",      ""),
    ("blocks.{i}.mlp.proj_out.",         "blocks.{i}.mlp.fc2.",      ""),
    (None,                               "pos_embed",                "fixed"),
]

# tinyldm class (by name: this package imports no model) → the diffusers class it reads and writes, and that class's
# weight-name table.
DIFFUSERS_CLASS = {"AutoencoderKL": "AutoencoderKL", "VQModel": "VQModel",
                   "UNet2DConditionModel": "UNet2DConditionModel", "DiT": "DiTTransformer2DModel"}
WEIGHT_NAMES = {"AutoencoderKL": AUTOENCODER, "VQModel": AUTOENCODER, "UNet2DConditionModel": UNET,
                "DiTTransformer2DModel": DIT}

# Where each model's user encoder lives (it is new, and initialised, when from_pretrained changes num_classes).
USER_ENCODER = {"UNet2DConditionModel": ("cond_encoder.", "cond_proj."), "DiT": ("y_embedder.",)}

# ---- config.json -----------------------------------------------------------------------------------------------------

DIFFUSERS_VERSION = "0.42.1"  # the version these tables were checked against (tests/fixtures/diffusers)

# diffusers key → (tinyldm config field, diffusers' default when config.json lacks the key). A field "" is translated
# by code in pretrained.py: the DiT's head width and output channels, the UNet's user encoder and time width.
CONFIG_KEYS = {
    "AutoencoderKL": {
        "in_channels": ("in_channels", 3),
        "out_channels": ("out_channels", 3),
        "down_block_types": ("down_block_types", ["DownEncoderBlock2D"]),
        "up_block_types": ("up_block_types", ["UpDecoderBlock2D"]),
        "block_out_channels": ("block_out_channels", [64]),
        "layers_per_block": ("layers_per_block", 1),
        "act_fn": ("act_fn", "silu"),
        "latent_channels": ("latent_channels", 4),
        "norm_num_groups": ("norm_num_groups", 32),
        "sample_size": ("sample_size", 32),
        "scaling_factor": ("scaling_factor", 0.18215),
        "shift_factor": ("shift_factor", None),
        "latents_mean": ("latents_mean", None),
        "latents_std": ("latents_std", None),
        "use_quant_conv": ("use_quant_conv", True),
        "use_post_quant_conv": ("use_post_quant_conv", True),
        "mid_block_add_attention": ("mid_block_add_attention", True),
    },
    "VQModel": {
        "in_channels": ("in_channels", 3),
        "out_channels": ("out_channels", 3),
        "down_block_types": ("down_block_types", ["DownEncoderBlock2D"]),
        "up_block_types": ("up_block_types", ["UpDecoderBlock2D"]),
        "block_out_channels": ("block_out_channels", [64]),
        "layers_per_block": ("layers_per_block", 1),
        "act_fn": ("act_fn", "silu"),
        "latent_channels": ("latent_channels", 3),
        "sample_size": ("sample_size", 32),
        "num_vq_embeddings": ("num_vq_embeddings", 256),
        "norm_num_groups": ("norm_num_groups", 32),
        "vq_embed_dim": ("vq_embed_dim", None),
        "scaling_factor": ("scaling_factor", 0.18215),
        "mid_block_add_attention": ("mid_block_add_attention", True),
    },
    "UNet2DConditionModel": {
        "sample_size": ("sample_size", None),
        "in_channels": ("in_channels", 4),
        "out_channels": ("out_channels", 4),
        "down_block_types": ("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]),
        "up_block_types": ("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
        "block_out_channels": ("block_out_channels", [320, 640, 1280, 1280]),
        "layers_per_block": ("layers_per_block", 2),
        "cross_attention_dim": ("cross_attention_dim", 1280),
        "attention_head_dim": ("attention_head_dim", 8),  # the number of heads, as diffusers reads it (docs/interop.md)
        "use_linear_projection": ("use_linear_projection", False),
        "norm_num_groups": ("norm_num_groups", 32),
        "transformer_layers_per_block": ("transformer_layers_per_block", 1),
        "class_embed_type": ("", None),
        "num_class_embeds": ("", None),
        "projection_class_embeddings_input_dim": ("", None),
        "encoder_hid_dim": ("", None),
        "encoder_hid_dim_type": ("", None),
        "time_embedding_dim": ("", None),
    },
    "DiTTransformer2DModel": {
        "num_attention_heads": ("num_heads", 16),
        "attention_head_dim": ("", 72),  # hidden_size = num_attention_heads · attention_head_dim
        "in_channels": ("in_channels", 4),
        "out_channels": ("", None),  # 2 · in_channels ↔ learn_sigma
        "num_layers": ("depth", 28),
        "sample_size": ("input_size", 32),
        "patch_size": ("patch_size", 2),
        "num_embeds_ada_norm": ("num_classes", 1000),
        "norm_eps": ("norm_eps", 1e-5),
    },
}

# Keys tinyldm implements at these values only; any other value is refused, naming the key. The first value is
# diffusers' default and what save_pretrained writes.
FIXED = {
    "AutoencoderKL": {},
    "VQModel": {"norm_type": ("group",)},
    "UNet2DConditionModel": {
        "num_attention_heads": (None,),  # diffusers itself refuses it (its naming issue #2011)
        "center_input_sample": (False,),
        "flip_sin_to_cos": (True,),
        "freq_shift": (0,),
        "mid_block_type": ("UNetMidBlock2DCrossAttn",),
        "only_cross_attention": (False,),
        "downsample_padding": (1,),
        "mid_block_scale_factor": (1,),
        "dropout": (0.0,),
        "act_fn": ("silu", "swish"),
        "norm_eps": (1e-5,),
        "dual_cross_attention": (False,),
        "addition_embed_type": (None,),
        "addition_time_embed_dim": (None,),
        "resnet_time_scale_shift": ("default",),
        "resnet_skip_time_act": (False,),
        "resnet_out_scale_factor": (1.0,),
        "time_embedding_type": ("positional",),
        "time_embedding_act_fn": (None,),
        "timestep_post_act": (None,),
        "time_cond_proj_dim": (None,),
        "conv_in_kernel": (3,),
        "conv_out_kernel": (3,),
        "attention_type": ("default",),
        "class_embeddings_concat": (False,),
        "mid_block_only_cross_attention": (None, False),
        "cross_attention_norm": (None,),
        "reverse_transformer_layers_per_block": (None,),
    },
    "DiTTransformer2DModel": {
        "dropout": (0.0,),
        "attention_bias": (True,),
        "activation_fn": ("gelu-approximate",),
        "norm_type": ("ada_norm_zero",),
        "norm_elementwise_affine": (False,),
    },
}

# The DiT's older diffusers class name, and the neutral values of the keys only that class has.
LEGACY_CLASS = {"Transformer2DModel": "DiTTransformer2DModel"}
LEGACY_FIXED = {
    "cross_attention_dim": (None,),
    "num_vector_embeds": (None,),
    "use_linear_projection": (False,),
    "only_cross_attention": (False,),
    "double_self_attention": (False,),
    "attention_type": ("default",),
    "caption_channels": (None,),
    "interpolation_scale": (None,),
    "use_additional_conditions": (None,),
}

# Read and ignored: bookkeeping, pipeline hints, and keys without effect on the model (each with the reason).
BOOKKEEPING = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
IGNORED = {
    "AutoencoderKL": ("force_upcast",),  # a pipeline hint: run the VAE in float32 (tinyldm: the dtype you choose)
    "VQModel": ("force_upcast",
                "lookup_from_codebook"),  # which tensor VQModel.decode takes; tinyldm has decode and decode_indices
    "UNet2DConditionModel": ("upcast_attention",  # softmax in float32 under half precision: same numbers in float32
                             "addition_embed_type_num_heads"),  # used only with an addition_embed_type (refused)
    "DiTTransformer2DModel": ("upcast_attention",
                              "norm_num_groups"),  # unused by diffusers' DiT
}

# What save_pretrained writes for keys tinyldm has no field for (diffusers' defaults).
WRITTEN_DEFAULTS = {
    "AutoencoderKL": {"force_upcast": True},
    "VQModel": {"lookup_from_codebook": False, "force_upcast": False},
    "UNet2DConditionModel": {"upcast_attention": False},
    "DiTTransformer2DModel": {"upcast_attention": False, "norm_num_groups": 32},
}
