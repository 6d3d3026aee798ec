"""Build and load autoencoders from a run folder's config.json, with an explicit `if`, no registry.

config.json of an autoencoder run holds {"model_type": "kl" | "vq", "model": {<the model's config fields>}, ...}.
"""

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from tinyldm.models.autoencoder_kl import PRESETS as KL_PRESETS
from tinyldm.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from tinyldm.models.vq import PRESETS as VQ_PRESETS
from tinyldm.models.vq import VQModel, VQModelConfig
from tinyldm.train import RunError, load_weights, read_config

MODEL_TYPES = ("kl", "vq")


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
