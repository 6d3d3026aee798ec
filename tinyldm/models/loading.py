"""Build and load models from a run folder's config.json, with explicit `if`s, no registry.

An autoencoder run's config.json holds {"kind": "autoencoder", "model_type": "kl" | "vq", "model": {...}};
a latent-diffusion run's {"kind": "ldm", "backbone": "unet" | "dit", "backbone_config": {...}, "vae": ...}.
"""

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from tinyldm.models.autoencoder_kl import PRESETS as KL_PRESETS
from tinyldm.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from tinyldm.models.dit import PRESETS as DIT_PRESETS
from tinyldm.models.dit import DiT, DiTConfig
from tinyldm.models.mmdit import PRESETS as MMDIT_PRESETS
from tinyldm.models.mmdit import MMDiT, MMDiTConfig
from tinyldm.models.unet import PRESETS as UNET_PRESETS
from tinyldm.models.unet import UNet2DConditionModel, UNetConfig
from tinyldm.models.vq import PRESETS as VQ_PRESETS
from tinyldm.models.vq import VQModel, VQModelConfig
from tinyldm.runs import RunError, load_weights, read_config

MODEL_TYPES = ("kl", "vq")
BACKBONES = ("unet", "dit", "mmdit")

# Backbone size for each run preset (tiny: CPU; small: one GPU; seed: the seed's configurations).
BACKBONE_PRESETS = {
    "unet": {
        "tiny": UNET_PRESETS["tiny"],
        "small": dict(block_out_channels=[128, 256, 256], layers_per_block=2,
                      down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                      up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                      cross_attention_dim=256, num_attention_heads=8),
        "seed": dict(layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
                     down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                     up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=768,
                     attention_head_dim=8, num_attention_heads=[5, 10, 20, 20], use_linear_projection=True),
    },
    "dit": {"tiny": DIT_PRESETS["tiny"], "small": DIT_PRESETS["DiT-S/2"], "seed": DIT_PRESETS["DiT-XL/2"]},
    "mmdit": {"tiny": MMDIT_PRESETS["tiny"], "small": MMDIT_PRESETS["small"]},  # the seed names no MMDiT size
}


def autoencoder_config(model_type: str, preset: str, **overrides) -> dict:
    """Preset + overrides → the validated config as a plain dict (what config.json stores)."""
    if model_type == "kl":
        presets, config_cls = KL_PRESETS, AutoencoderKLConfig
    elif model_type == "vq":
        presets, config_cls = VQ_PRESETS, VQModelConfig
    else:
        raise ValueError(f"model type {model_type!r}: choose one of {MODEL_TYPES}")
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for model {model_type!r}; choose one of {sorted(presets)}")
    return asdict(config_cls(**{**presets[preset], **overrides}))


def build_autoencoder(model_type: str, config: dict) -> nn.Module:
    if model_type == "kl":
        return AutoencoderKL(AutoencoderKLConfig(**config))
    if model_type == "vq":
        return VQModel(VQModelConfig(**config))
    raise ValueError(f"model type {model_type!r}: choose one of {MODEL_TYPES}")


def load_autoencoder(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A finished (or checkpointed) train_vae.py run → (model in eval mode with its weights, the run's config)."""
    run = read_config(run_dir)
    if run.get("kind") != "autoencoder":
        raise RunError(f"{run_dir} is a {run.get('kind', 'unknown')!r} run, not an autoencoder run from train_vae.py")
    model = build_autoencoder(run["model_type"], run["model"])
    state = load_weights(Path(run_dir) / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{run_dir}/model.safetensors does not match its config.json "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), run


def backbone_config(backbone: str, preset: str, latent_channels: int, latent_size: int, num_classes: int,
                    cond_type: str = "embedding") -> dict:
    """Backbone config for latents (c, h, h) and `num_classes` users, validated, as a plain dict.

    Condition dropout is done by train_ldm.py itself (so every rank of a DDP run drops the same ids), hence
    class_dropout_prob = 0 inside the model; DiT's learned variance is off (we train the simple ε/v/x0 loss).
    """
    if backbone not in BACKBONE_PRESETS:
        raise ValueError(f"backbone {backbone!r}: choose one of {BACKBONES}")
    if preset not in BACKBONE_PRESETS[backbone]:
        choices = sorted(BACKBONE_PRESETS[backbone])
        raise ValueError(f"unknown preset {preset!r} for {backbone}; choose one of {choices}")
    base = {**BACKBONE_PRESETS[backbone][preset], "num_classes": num_classes, "cond_type": cond_type,
            "class_dropout_prob": 0.0}
    if backbone == "unet":
        cfg = UNetConfig(**{**base, "sample_size": latent_size, "in_channels": latent_channels,
                            "out_channels": latent_channels})
    elif backbone == "dit":
        cfg = DiTConfig(**{**base, "input_size": latent_size, "in_channels": latent_channels, "learn_sigma": False})
    else:
        cfg = MMDiTConfig(**{**base, "input_size": latent_size, "in_channels": latent_channels})
    return asdict(cfg)


def build_backbone(backbone: str, config: dict) -> nn.Module:
    if backbone == "unet":
        return UNet2DConditionModel(UNetConfig(**config))
    if backbone == "dit":
        return DiT(DiTConfig(**config))
    if backbone == "mmdit":
        return MMDiT(MMDiTConfig(**config))
    raise ValueError(f"backbone {backbone!r}: choose one of {BACKBONES}")


def load_ldm(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "ema"
             ) -> tuple[nn.Module, dict]:
    """A train_ldm.py run → (backbone in eval mode with its EMA (or raw) weights, the run's config)."""
    run = read_config(run_dir)
    if run.get("kind") != "ldm":
        raise RunError(f"{run_dir} is a {run.get('kind', 'unknown')!r} run, not a train_ldm.py run")
    model = build_backbone(run["backbone"], run["backbone_config"])
    state = load_weights(Path(run_dir) / f"{weights}.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{run_dir}/{weights}.safetensors does not fit a {run['backbone']} with its config.json "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was the folder mixed with another run?")
    return model.to(device).eval(), run
