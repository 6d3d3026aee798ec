"""Stable Diffusion 1.x (and 2.x) from a diffusers pipeline folder, run by tinyldm's own parts: text → image.

    model_index.json   which class each part is; a part tinyldm does not implement is refused
    tokenizer/         CLIP's BPE vocabulary            tinyldm.text.tokenizer.CLIPTokenizer
    text_encoder/      CLIP's text tower E              tinyldm.models.clip_text.CLIPTextModel
    unet/              the network ε̂(z_t, t, c)         tinyldm.models.unet.UNet2DConditionModel (no user encoder)
    vae/               the decoder D, scaling_factor s  tinyldm.models.autoencoder_kl.AutoencoderKL
    scheduler/         the sampler's settings           interop/diffusers_grids.py: the grid diffusers takes
    safety_checker/, feature_extractor/, image_encoder/  not read: tinyldm runs no safety checker (a note says so)

`text_to_image` takes the steps of diffusers' StableDiffusionPipeline.__call__, and with the same noise gives its
images (tests/test_stable_diffusion.py):
    1. c = E(tokens(prompt)), c∅ = E(tokens(negative prompt, "" when none)): (B, 77, D), the cross-attention context
    2. z_T = init_noise_sigma · z, z ~ N(0, I) of shape (B, 4, H/f, W/f), f the VAE's downsampling
    3. each step ε̂ = ε̂(z_t, t, c∅) + w (ε̂(z_t, t, c) − ε̂(z_t, t, c∅)) (Ho & Salimans 2022, Eq. 6), then the
       scheduler's step; as diffusers, only for w > 1 (w ≤ 1 is ε̂(z_t, t, c) alone)
    4. image = (D(z_0 / s)/2 + 1/2) clamped to [0, 1]
"""

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tinyldm.interop import diffusers_grids as grids
from tinyldm.interop.pretrained_weights import PretrainedError, read_json
from tinyldm.latents import unscale_latents
from tinyldm.models.autoencoder_kl import AutoencoderKL
from tinyldm.models.clip_text import CLIPTextModel
from tinyldm.models.unet import UNet2DConditionModel
from tinyldm.text.tokenizer import CLIPTokenizer

# model_index.json: part → the classes tinyldm reads it as (the scheduler's is checked when sampling).
PARTS = {"tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "text_encoder": ("CLIPTextModel",),
         "unet": ("UNet2DConditionModel",), "vae": ("AutoencoderKL",), "scheduler": None}
NOT_RUN = ("safety_checker", "feature_extractor", "image_encoder")  # the safety checker, its input, IP-Adapter's
# Settings only other schedulers take, which diffusers' from_config leaves unused (e.g. PNDM's skip_prk_steps, SD 1.x).
OTHER_SCHEDULERS_SETTINGS = {key for defaults in grids.DEFAULTS.values() for key in defaults}


@dataclass(frozen=True, eq=False)
class StableDiffusion:
    """The parts of a pipeline folder in tinyldm's classes (`load_stable_diffusion`)."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: str  # diffusers' class name, e.g. "EulerDiscreteScheduler"
    scheduler_config: dict  # its settings under diffusers' names (scheduler/scheduler_config.json)
    folder: Path  # where it was read from, for messages


def load_stable_diffusion(folder, device: str | torch.device = "cpu") -> StableDiffusion:
    """A diffusers StableDiffusionPipeline folder → its parts in tinyldm's classes, in eval mode on `device`."""
    folder, where = Path(folder), Path(folder) / "model_index.json"
    if not where.is_file():
        raise PretrainedError(f"{folder} has no model_index.json; pass a diffusers StableDiffusionPipeline folder "
                              f"({', '.join(PARTS)} and model_index.json)")
    index = read_json(where)
    if index.get("_class_name") != "StableDiffusionPipeline":
        raise PretrainedError(f"{where}: _class_name {index.get('_class_name')!r} is not implemented; tinyldm runs "
                              "StableDiffusionPipeline folders (SD 1.x, 2.x)")
    for key, value in index.items():
        if not key.startswith("_") and key != "requires_safety_checker" and key not in (*PARTS, *NOT_RUN):
            raise PretrainedError(f"{where}: part {key}={value} is not one tinyldm implements; it reads "
                                  f"{', '.join(PARTS)}")
    for key, classes in PARTS.items():
        entry = index.get(key)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise PretrainedError(f"{where} lists no {key}; a StableDiffusionPipeline folder has {', '.join(PARTS)}")
        if classes is not None and entry[1] not in classes:
            raise PretrainedError(f"{where}: {key} is a {entry[1]}; tinyldm reads {' or '.join(classes)} there")
        if not (folder / key).is_dir():
            raise PretrainedError(f"{folder / key}/ is missing, but {where} lists {key}: download the whole folder")
    present = [key for key in NOT_RUN if isinstance(index.get(key), list) and index[key][1] is not None]
    if present:
        print(f"note: {where}: {', '.join(present)} not run; tinyldm has no safety checker (requires_safety_checker "
              "is ignored)", flush=True)
    scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
    sd = StableDiffusion(CLIPTokenizer.from_folder(folder / "tokenizer"),
                         CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").to(device),
                         UNet2DConditionModel.from_pretrained(folder, subfolder="unet").to(device),
                         AutoencoderKL.from_pretrained(folder, subfolder="vae").to(device),
                         scheduler.get("_class_name", index["scheduler"][1]), scheduler, folder)
    unet = sd.unet.config
    for names, a, b in (("unet cross_attention_dim, text_encoder hidden_size", unet.cross_attention_dim,
                         sd.text_encoder.config.hidden_size),
                        ("unet in_channels, vae latent_channels", unet.in_channels, sd.vae.config.latent_channels)):
        if a != b:
            raise PretrainedError(f"{folder}: {names} are {a} ≠ {b} (config.json): the parts are of different models")
    return sd


def scheduler_settings(scheduler: str, config: dict) -> dict:
    """The settings diffusers' `scheduler` takes from `config` (perhaps another scheduler's), as its from_config
    reads them: not bookkeeping, values that were the other class's defaults (`_use_default_values`) or settings
    only other schedulers take (e.g. PNDM's skip_prk_steps); `scheduler`'s own defaults fill in for those."""
    own = {**grids.COMMON, **grids.ONLY_DEFAULT, **grids.DEFAULTS.get(scheduler, {})}.keys()
    defaults = set(config.get("_use_default_values", ()))
    return {key: value for key, value in config.items() if not key.startswith("_") and key not in defaults
            and (key in own or key not in OTHER_SCHEDULERS_SETTINGS)}


def with_scheduler(sd: StableDiffusion, scheduler: str) -> StableDiffusion:
    """sd sampling with diffusers' `scheduler` on the same settings: `Scheduler.from_config(pipe.scheduler.config)`."""
    if scheduler not in grids.DEFAULTS:
        raise ValueError(f"scheduler {scheduler!r} is not one tinyldm reproduces; choose one of "
                         f"{', '.join(grids.DEFAULTS)}")
    return replace(sd, scheduler=scheduler, scheduler_config=scheduler_settings(scheduler, sd.scheduler_config))


def scheduler_grid(sd: StableDiffusion, steps: int, eta: float = 0.0) -> grids.DiffusersGrid:
    """The steps sd's scheduler takes at `steps` inference steps (eta: DDIM's η), or an error naming its file."""
    where = sd.folder / "scheduler" / "scheduler_config.json"
    if sd.scheduler not in grids.DEFAULTS:
        raise ValueError(f"{where}: _class_name {sd.scheduler!r} is not a scheduler tinyldm reproduces; sample with "
                         f"one of {', '.join(grids.DEFAULTS)} on its settings, as diffusers' from_config switches: "
                         "with_scheduler(sd, 'EulerDiscreteScheduler') (sample.py --scheduler EulerDiscreteScheduler)")
    if eta and sd.scheduler != "DDIMScheduler":
        raise ValueError(f"eta = {eta:g} is DDIM's η; {sd.scheduler} has none (diffusers ignores it): leave it at 0")
    config = scheduler_settings(sd.scheduler, sd.scheduler_config) | ({"eta": eta} if eta else {})
    try:
        return grids.diffusers_grid(sd.scheduler, steps, grids.diffusers_schedule(sd.scheduler, **config), **config)
    except ValueError as e:
        raise ValueError(f"{where} (as {sd.scheduler}): {e}") from None


def latent_shape(sd: StableDiffusion, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(c, h, w) of the latents of height × width images (default: the UNet's sample_size · f, as diffusers)."""
    f, halvings = sd.vae.config.downsample_factor, len(sd.unet.config.block_out_channels) - 1
    height, width = (size or sd.unet.config.sample_size * f for size in (height, width))
    if height % (f * 2 ** halvings) or width % (f * 2 ** halvings):
        raise ValueError(f"height × width {height} × {width}: each must be a multiple of {f * 2 ** halvings} (the "
                         f"VAE's f = {f} × the UNet's {halvings} halvings)")
    return sd.unet.config.in_channels, height // f, width // f


@torch.no_grad()
def text_to_image(sd: StableDiffusion, prompts: str | list[str], negative_prompts: str | list[str] | None = None, *,
                  steps: int = 50, cfg_scale: float = 7.5, cfg_rescale: float = 0.0, eta: float = 0.0,
                  height: int | None = None, width: int | None = None, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """prompts (B of them; one negative prompt for all, or one each) → images (B, 3, H, W) in [0, 1].

    Defaults are diffusers' (50 steps, w = cfg_scale = 7.5, H = W = the UNet's sample_size · f). noise: z (B, 4,
    H/f, W/f), the latents before × init_noise_sigma; without it z is drawn on the CPU from `generator`, which then
    also draws a stochastic scheduler's step noise, as diffusers does with a CPU generator. cfg_rescale: φ,
    diffusers' guidance_rescale; eta: DDIM's η.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    negative = [""] * len(prompts) if negative_prompts is None else negative_prompts
    negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
    if len(negative) != len(prompts):
        raise ValueError(f"{len(negative)} negative prompts for {len(prompts)} prompts; give one, or one per prompt")
    shape = (len(prompts), *latent_shape(sd, height, width))
    grid = scheduler_grid(sd, steps, eta)

    # 1. The text: prompts and negative prompts through the tokenizer and the text encoder, (B, 77, D) each.
    device = next(sd.unet.parameters()).device
    context = sd.text_encoder(sd.tokenizer(prompts).to(device))[0]  # c
    null_context = sd.text_encoder(sd.tokenizer(negative).to(device))[0]  # c∅

    # 2. The unit noise z: drawn on the CPU, as diffusers' randn_tensor with a CPU generator.
    noise = torch.randn(shape, generator=generator) if noise is None else noise
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; {len(prompts)} prompts at these sizes need {shape}")

    # 3. Sample: the UNet cross-attends to the text; guided only for w > 1, as diffusers.
    def unet(z, t, text):
        return sd.unet(z, t, encoder_hidden_states=text)  # ε̂ (B, 4, h, w)

    guided = cfg_scale > 1
    z0 = grids.sample_like_diffusers(unet, noise.to(device), grid, cfg_scale=cfg_scale if guided else 1.0,
                                     cfg_rescale=cfg_rescale if guided else 0.0, cond=context,
                                     null_cond=null_context, generator=generator, progress=progress)

    # 4. Decode: z = z0/s (+ shift), x = D(z) in [−1, 1] → [0, 1].
    vae = sd.vae.config
    x = sd.vae.decode_latent(unscale_latents(z0, vae.scaling_factor, vae.shift_factor or 0.0))
    return (x / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W)
