"""Build and load models from a run folder's config.json, with explicit `if`s, no registry.

An autoencoder run's config.json holds {"kind": "autoencoder", "model_type": "kl" | "vq", "model": {...}};
a latent-diffusion run's {"kind": "ldm", "backbone": "unet" | "dit" | "mmdit", "backbone_config": {...}, "vae": ...}.
Sizes come from each model file's `PRESETS` (the run presets tiny / small / seed are entries there).

Stage 2's autoencoder ("vae") is a train_vae.py run folder or a diffusers autoencoder folder (a pipeline folder's
vae/ too): `load_vae` reads either and says, in a `VAESource`, where it came from and what it expects.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tinyldm.interop.pretrained_weights import WEIGHTS
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
from tinyldm.runs import RunError, check_finite, file_sha256, load_weights, read_config, resolve_device
from tinyldm.text.tokenizer import CLIPTokenizer

GUIDE_FILE = "guide.safetensors"  # a train_ldm.py run's EMA weights early in training: autoguidance's guide

MODEL_TYPES = ("kl", "vq")
BACKBONES = ("unet", "dit", "mmdit")


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


# What the code that reads a run needs from its config.json, by kind of run.
REQUIRED_KEYS = {"autoencoder": ("model_type", "model", "data", "args"),
                 "ldm": ("backbone", "backbone_config", "vae", "latent_shape", "num_classes", "classes",
                         "scaling_factor", "schedule", "prediction", "channels")}


def read_run(run_dir: str | Path, kind: str, script: str) -> dict:
    """config.json of a `kind` run, checked for the keys the loaders and samplers read."""
    run = read_config(run_dir)
    if run.get("kind") != kind:
        raise RunError(f"{run_dir} is a {run.get('kind', 'unknown')!r} run, not a {script} run")
    missing = [k for k in REQUIRED_KEYS[kind] if k not in run]
    if missing:
        raise RunError(f"{run_dir}/config.json lacks {missing}; was it edited by hand? Restore it or retrain")
    return run


def load_into(model: nn.Module, path: Path, what: str) -> nn.Module:
    """Weights file → model, all-or-nothing: a missing, damaged, mismatched or non-finite file is a RunError."""
    state = load_weights(path)
    check_finite(state, path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:120])
        raise RunError(f"{path} does not fit {what} ({detail}); was the folder mixed with another run?") from None
    if missing or unexpected:
        raise RunError(f"{path} does not fit {what} (missing {missing[:3]}, unexpected {unexpected[:3]}); was the "
                       "folder mixed with another run?")
    return model


def build_from(run_dir, build, *args) -> nn.Module:
    """build(*args), with a config.json value of the wrong kind or name turned into one line naming the file."""
    try:
        return build(*args)
    except (TypeError, KeyError) as e:
        raise RunError(f"{run_dir}/config.json has a model setting tinyldm cannot use ({e}); restore it or retrain"
                       ) from None


def load_autoencoder(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A finished (or checkpointed) train_vae.py run → (model in eval mode with its weights, the run's config)."""
    device = resolve_device(device)  # before any work: a device this machine lacks is one line
    run = read_run(run_dir, "autoencoder", "train_vae.py")
    model = build_from(run_dir, build_autoencoder, run["model_type"], run["model"])
    load_into(model, Path(run_dir) / "model.safetensors", "its config.json")
    return model.to(device).eval(), run


# ---- stage 2's autoencoder: a train_vae.py run or a diffusers folder ------------------------------------------------

@dataclass(frozen=True)
class VAESource:
    """Where stage 2's frozen autoencoder comes from and what it takes. train_ldm.py stores it in config.json as
    "vae_source" (the scaling_factor and shift_factor it trained with beside it), so sampling decodes with the same."""

    format: str  # "tinyldm" (a train_vae.py run folder) or "diffusers" (a model folder, or a pipeline's vae/)
    folder: str  # the folder that holds its config.json and weights
    weights: str  # its weights file
    sha256: str  # of the weights file: part of the latent cache key, checked again when sampling
    model_type: str  # "kl" (AutoencoderKL) or "vq" (VQModel)
    image_size: int  # H = W it was trained at: its run's image size, or diffusers' sample_size
    channels: int  # image channels it reads (in_channels)
    downsample_factor: int  # f: an H×W image becomes (H/f)×(W/f) latents
    scaling_factor: float | None  # stage 2 trains on (z − shift_factor)·scaling_factor; None: none stated (measure it)
    shift_factor: float  # 0 for all but the SD3/FLUX VAEs (diffusers' None is 0)


def vae_folder(path: str | Path) -> tuple[str, Path]:
    """--vae PATH → ("tinyldm", the run folder) or ("diffusers", the model folder: PATH, PATH/vae or PATH/vqvae)."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} does not exist; pass a train_vae.py run folder, a diffusers autoencoder folder "
                       "(config.json + diffusion_pytorch_model.safetensors) or a pipeline folder with vae/")
    for folder in (path, path / "vae", path / "vqvae"):
        if (folder / "config.json").is_file():
            if "_class_name" in read_config(folder):
                return "diffusers", folder
            if folder == path:
                return "tinyldm", folder
    raise RunError(f"{path} is neither a train_vae.py run folder nor a diffusers autoencoder folder (no "
                   "config.json, and no vae/config.json); pass one of those")


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, VAESource]:
    """A train_vae.py run folder or a diffusers AutoencoderKL / VQModel folder (or pipeline folder with vae/) →
    (the autoencoder in eval mode, where it came from and what it expects)."""
    device = resolve_device(device)
    fmt, folder = vae_folder(path)
    if fmt == "tinyldm":
        model, run = load_autoencoder(folder, device)
        weights, model_type = folder / "model.safetensors", run["model_type"]
        image_size = run["data"]["image_size"]
        # train_vae.py writes the measured scale and results.latent_std together at its end; before, the model's
        # scaling_factor is only its config class's default, not this autoencoder's.
        scale = run["model"].get("scaling_factor") if "latent_std" in run.get("results", {}) else None
    else:
        model_type = "vq" if read_config(folder).get("_class_name") == "VQModel" else "kl"
        cls = VQModel if model_type == "vq" else AutoencoderKL  # another class is refused by from_pretrained, by name
        model = cls.from_pretrained(folder).to(device).eval()
        weights = folder / WEIGHTS if (folder / WEIGHTS).is_file() else folder / "diffusion_pytorch_model.bin"
        image_size, scale = model.config.sample_size, read_config(folder).get("scaling_factor")  # not the default
    c = model.config
    source = VAESource(fmt, str(folder), str(weights), file_sha256(weights), model_type, image_size, c.in_channels,
                       2 ** (len(c.block_out_channels) - 1), float(scale) if usable_scale(scale) else None,
                       float(getattr(c, "shift_factor", None) or 0.0))
    return model, source


def usable_scale(scale) -> bool:
    """A latent scaling_factor stage 2 can train with: a finite number > 0 (0, NaN or a string are not)."""
    return isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0


def inference_layout(vae: nn.Module) -> nn.Module:
    """The frozen autoencoder's weights in channels-last memory layout, which its convolutions then also use for
    their inputs and outputs: the same values, other kernels (float sums may round differently). On an AMD EPYC Zen 4
    a 256×256 image decodes in 34 ms instead of 46 and encodes in 12 instead of 16.5 (bf16; float32 73 → 60 and
    24 → 21; 64×64 1.1–1.3× too: benchmarks/bench_codec_batch.py --layout). For inference only: in training
    (backward included) channels-last was slower (docs/speedrun.md, first and fourth rounds)."""
    return vae.to(memory_format=torch.channels_last)


def load_run_vae(run: dict, device: str | torch.device = "cpu") -> nn.Module:
    """The autoencoder a train_ldm.py run (its config) trained with, in eval mode and `inference_layout`; a notice if
    its weights changed since (runs written before "vae_source" was stored are not checked)."""
    vae, source = load_vae(run["vae"], device)
    trained_with = run.get("vae_source", {}).get("sha256")
    if trained_with is not None and trained_with != source.sha256:
        print(f"notice: the autoencoder weights {source.weights} changed since this run was trained (sha256 "
              f"{trained_with[:12]}… then, {source.sha256[:12]}… now); the images are decoded with the new ones",
              flush=True)
    return inference_layout(vae)


def autoencoder_split(vae_run: dict) -> dict:
    """The data settings of a train_vae.py run as UserImageFolder takes them (size, channels, split, strictness,
    aspect)."""
    d, a = vae_run["data"], vae_run["args"]
    return {"image_size": d["image_size"], "channels": d["channels"], "val_fraction": a["val_fraction"],
            "seed": a["seed"], "strict_size": a.get("strict_size", False),
            "aspect": a.get("aspect", "squash")}  # runs from before --aspect stretched every image


def data_split(run: dict) -> dict:
    """The data settings a train_ldm.py run read its images with (UserImageFolder's image_size, channels,
    val_fraction, seed, strict_size). Runs store them as "split" (a diffusers autoencoder has no run to take them
    from); runs written before took them from their autoencoder run, which is read for them."""
    if "split" in run:  # runs from before --aspect stretched every image
        return {"image_size": run["image_size"], "channels": run["channels"], "aspect": "squash", **run["split"]}
    return autoencoder_split(read_run(run["vae"], "autoencoder", "train_vae.py"))


def backbone_config(backbone: str, preset: str, latent_channels: int, latent_size: int, num_classes: int,
                    cond_type: str = "embedding", patch_size: int | None = None, text_encoder: dict | None = None
                    ) -> dict:
    """`preset` of the backbone's PRESETS for latents (c, h, h) and `num_classes` users, validated, as a plain dict.
    patch_size (DiT, MMDiT) replaces the preset's: (h / p)² tokens.

    Condition dropout is done by train_ldm.py itself (so every rank of a DDP run drops the same ids), hence
    class_dropout_prob = 0 inside the model; DiT's learned variance is off (we train the simple ε/v/x0 loss).
    """
    c, h = latent_channels, latent_size
    if backbone == "unet":
        presets, config_cls, shape = UNET_PRESETS, UNetConfig, dict(sample_size=h, in_channels=c, out_channels=c)
    elif backbone == "dit":
        presets, config_cls, shape = DIT_PRESETS, DiTConfig, dict(input_size=h, in_channels=c, learn_sigma=False)
    elif backbone == "mmdit":
        presets, config_cls, shape = MMDIT_PRESETS, MMDiTConfig, dict(input_size=h, in_channels=c)
    else:
        raise ValueError(f"backbone {backbone!r}: choose one of {BACKBONES}")
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {backbone}; choose one of {sorted(presets)}")
    if patch_size is not None:
        if backbone == "unet":
            raise ValueError("--patch-size is for the transformers (dit, mmdit); the UNet has no patches")
        if latent_size % patch_size:
            raise ValueError(f"--patch-size {patch_size} does not divide the {latent_size}×{latent_size} latents")
        shape["patch_size"] = patch_size
    base = {**presets[preset], "num_classes": num_classes, "cond_type": cond_type, "class_dropout_prob": 0.0,
            "text_encoder": text_encoder}
    return asdict(config_cls(**{**base, **shape}))


def build_backbone(backbone: str, config: dict) -> nn.Module:
    if backbone == "unet":
        return UNet2DConditionModel(UNetConfig(**config))
    if backbone == "dit":
        return DiT(DiTConfig(**config))
    if backbone == "mmdit":
        return MMDiT(MMDiTConfig(**config))
    raise ValueError(f"backbone {backbone!r}: choose one of {BACKBONES}")


def load_tokenizer(run_dir: str | Path, run: dict):
    """A text-conditioned run's tokenizer (run_dir/tokenizer/, learned from its captions); None for a user-id run."""
    if run["backbone_config"].get("cond_type") != "text":
        return None
    return CLIPTokenizer.from_folder(Path(run_dir) / "tokenizer")


def load_ldm(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "ema"
             ) -> tuple[nn.Module, dict]:
    """A train_ldm.py run → (backbone in eval mode with its EMA (or raw, or guide) weights, the run's config)."""
    device = resolve_device(device)  # before any work: a device this machine lacks is one line
    run = read_run(run_dir, "ldm", "train_ldm.py")
    model = build_from(run_dir, build_backbone, run["backbone"], run["backbone_config"])
    load_into(model, Path(run_dir) / f"{weights}.safetensors", f"a {run['backbone']} with its config.json")
    return model.to(device).eval(), run


def has_guide(run_dir: str | Path) -> bool:
    """Did train_ldm.py save this run's guide for autoguidance (GUIDE_FILE)?"""
    return (Path(run_dir) / GUIDE_FILE).is_file()


def load_guide(run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A train_ldm.py run → its guide for autoguidance: the same backbone with the EMA weights train_ldm.py saved
    early in the training (GUIDE_FILE), in eval mode."""
    if not has_guide(run_dir):
        raise RunError(f"{run_dir} has no {GUIDE_FILE}: autoguidance (--ag-scale ≠ 1) asks the run's own weights from "
                       "early in its training, which train_ldm.py saves at a quarter of its steps; runs trained "
                       "before it did so, or stopped before then, have none. Sample with --ag-scale 1")
    return load_ldm(run_dir, device, "guide")[0]
