"""AutoencoderKL: the first stage of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G).

image x (B, 3, H, W) ─Encoder─► moments (B, 2·c, H/f, W/f) ─► q(z|x) = N(μ, σ²) ─sample─► z ─Decoder─► x̂
f = 2^(len(block_out_channels) − 1). A tiny KL weight (1e-6) keeps the latent space near N(0, I) without blurring.

Leaves first: AttnBlock → Encoder → Decoder → DiagonalGaussian → AutoencoderKLConfig → AutoencoderKL.
Attribute names follow the diffusers layout, so at the Stable Diffusion configuration the module has exactly
the SD VAE's parameters (83,653,863) under the same names.
"""

import json
from dataclasses import asdict, dataclass, field

import torch
from einops import rearrange
from torch import nn

from tinyldm.interop import pretrained
from tinyldm.layers import Attention, Downsample, ResnetBlock, Upsample, activation


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.attn = Attention(channels, heads=1, dim_head=channels, qkv_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = rearrange(self.group_norm(x), "b c h w -> b (h w) c")  # (B, H·W, C)
        h = rearrange(self.attn(h), "b (h w) c -> b c h w", h=H, w=W)  # (B, C, H, W)
        return x + h


class MidBlock(nn.Module):
    """ResnetBlock → self-attention (unless `attention=False`) → ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, groups: int, act_fn: str, attention: bool = True):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, groups=groups, act_fn=act_fn) for _ in range(2))
        self.attentions = nn.ModuleList([AttnBlock(channels, groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:  # one, or none
            x = attention(x)
        return self.resnets[1](x)


class DownEncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, act_fn: str, down: bool):
        super().__init__()
        chans = [in_channels] + [out_channels] * num_layers
        self.resnets = nn.ModuleList(
            ResnetBlock(chans[i], chans[i + 1], groups=groups, act_fn=act_fn) for i in range(num_layers)
        )
        # a list of one: diffusers' weight names
        self.downsamplers = nn.ModuleList([Downsample(out_channels, padding=0)]) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, act_fn: str, up: bool):
        super().__init__()
        chans = [in_channels] + [out_channels] * num_layers
        self.resnets = nn.ModuleList(
            ResnetBlock(chans[i], chans[i + 1], groups=groups, act_fn=act_fn) for i in range(num_layers)
        )
        # a list of one: diffusers' weight names
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if up else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Module):
    """conv_in → [ResnetBlock × layers_per_block (+ Downsample)] per level → mid block → GroupNorm → SiLU → conv_out."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        double_z: bool = True,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        chans = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock(
                chans[max(i - 1, 0)], chans[i], layers_per_block, norm_num_groups, act_fn, down=i < len(chans) - 1
            )
            for i in range(len(chans))
        )
        self.mid_block = MidBlock(chans[-1], norm_num_groups, act_fn, mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, chans[-1], eps=1e-6)
        self.act = activation(act_fn)
        self.conv_out = nn.Conv2d(chans[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, C0, H, W)
        for block in self.down_blocks:
            h = block(h)  # (B, C_i, H/2^i, W/2^i)
        h = self.mid_block(h)  # (B, C_last, H/f, W/f)
        return self.conv_out(self.act(self.conv_norm_out(h)))  # (B, 2c or c, H/f, W/f)


class Decoder(nn.Module):
    """conv_in → mid block → [ResnetBlock × (layers_per_block + 1) (+ Upsample)] per level → norm → SiLU → conv_out."""

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        rev = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], norm_num_groups, act_fn, mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock(
                rev[max(i - 1, 0)], rev[i], layers_per_block + 1, norm_num_groups, act_fn, up=i < len(rev) - 1
            )
            for i in range(len(rev))
        )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, rev[-1], eps=1e-6)
        self.act = activation(act_fn)
        self.conv_out = nn.Conv2d(rev[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))  # (B, C_last, h, w)
        for block in self.up_blocks:
            h = block(h)  # (B, C_i, ·2, ·2)
        return self.conv_out(self.act(self.conv_norm_out(h)))  # (B, out, h·f, w·f)


class DiagonalGaussian:
    """q(z|x) = N(μ, diag σ²) from the encoder's moments (B, 2c, h, w): first half μ, second half log σ²."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, c, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite in both directions
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw z = μ + σ·ε (Kingma & Welling 2014), differentiable in μ and σ."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), summed over (c, h, w) → (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


def check_layout(c) -> None:
    """Validate (and normalise to lists) the encoder/decoder layout fields that AutoencoderKLConfig and
    VQModelConfig share; every error says what to change."""
    c.block_out_channels = list(c.block_out_channels)
    c.down_block_types, c.up_block_types = list(c.down_block_types), list(c.up_block_types)
    n = len(c.block_out_channels)
    for name in ("down_block_types", "up_block_types"):
        types = getattr(c, name)
        if len(types) != n:
            raise ValueError(f"{name} has {len(types)} entries but block_out_channels has {n}; give one per level")
    if any(t != "DownEncoderBlock2D" for t in c.down_block_types):
        raise ValueError(f"down_block_types {c.down_block_types}: only 'DownEncoderBlock2D' is supported")
    if any(t != "UpDecoderBlock2D" for t in c.up_block_types):
        raise ValueError(f"up_block_types {c.up_block_types}: only 'UpDecoderBlock2D' is supported")
    for width in c.block_out_channels:
        if width % c.norm_num_groups:
            fits = max(g for g in range(1, c.norm_num_groups + 1) if all(w % g == 0 for w in c.block_out_channels))
            raise ValueError(f"block_out_channels {c.block_out_channels}: {width} is not divisible by norm_num_groups "
                             f"{c.norm_num_groups}; use multiples of {c.norm_num_groups} or norm_num_groups={fits}")
    activation(c.act_fn)  # validates the name
    f = 2 ** (n - 1)
    if c.sample_size % f:
        raise ValueError(f"sample_size {c.sample_size} is not divisible by the downsampling factor {f}; "
                         f"use a multiple of {f} or fewer levels")


@dataclass
class AutoencoderKLConfig:
    in_channels: int = 3  # image channels in
    out_channels: int = 3  # image channels out
    latent_channels: int = 4  # c: channels of the latent z
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])  # width per level
    layers_per_block: int = 2  # ResnetBlocks per encoder level (decoder uses one more)
    act_fn: str = "silu"  # activation everywhere
    norm_num_groups: int = 32  # GroupNorm groups; must divide every width
    sample_size: int = 256  # training image size (pixels); the model itself is fully convolutional
    scaling_factor: float = 0.18215  # multiply latents by this for stage 2; train_vae.py measures 1/std(z)
    down_block_types: list[str] = field(default_factory=lambda: ["DownEncoderBlock2D"] * 4)  # accepted for parity
    up_block_types: list[str] = field(default_factory=lambda: ["UpDecoderBlock2D"] * 4)  # accepted for parity
    shift_factor: float | None = None  # stage 2 uses (z − shift_factor)·scaling_factor (the SD3/FLUX VAEs); None: 0
    latents_mean: list[float] | None = None  # per-channel latent means some published VAEs state; kept, not used here
    latents_std: list[float] | None = None  # per-channel latent stds, as latents_mean
    use_quant_conv: bool = True  # 1×1 conv on the encoder's moments (the SD3/FLUX VAEs have none)
    use_post_quant_conv: bool = True  # 1×1 conv on z before the decoder (the SD3/FLUX VAEs have none)
    mid_block_add_attention: bool = True  # self-attention in the encoder's and decoder's mid blocks

    def __post_init__(self):
        check_layout(self)
        for name in ("latents_mean", "latents_std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.latent_channels:
                raise ValueError(f"{name} has {len(values)} entries but latent_channels is {self.latent_channels}; "
                                 "give one per latent channel")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


PRESETS = {
    # 64×64 → 32×32×4 (f=2): what `make demo` and the tests train on CPU. f=2 reaches the identity target in a
    # third of the steps f=4 ([32, 64, 128] → 16×16×4) needs, at the same step cost; no mid-block attention (over
    # 32×32 = 1,024 positions it was 35 % of a float32 training step and bought no accuracy; docs/speedrun.md).
    "tiny": dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=16, sample_size=64,
                 down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                 mid_block_add_attention=False),
    # 256×256 → 32×32×4 (f=8) on CPU, the users' setting: the SD VAE's layout (4 levels, no mid attention) at a
    # fraction of its widths, one ResnetBlock per level (docs/speedrun.md, the compact rounds).
    "compact": dict(block_out_channels=[16, 32, 64, 128], layers_per_block=1, norm_num_groups=8, sample_size=256,
                    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                    mid_block_add_attention=False),
    # 256×256 → 32×32×4 (f=8): the Stable Diffusion VAE, exactly.
    "seed": dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, sample_size=256),
}


class AutoencoderKL(nn.Module):
    """Encoder → quant_conv → DiagonalGaussian → (sample) → post_quant_conv → Decoder.

    Build with a config, a preset name, or the diffusers keyword names verbatim:
    `AutoencoderKL(AutoencoderKLConfig(...))`, `AutoencoderKL.from_preset("tiny")`,
    `AutoencoderKL(latent_channels=4, ...)`.
    """

    def __init__(self, config: AutoencoderKLConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("pass either a config or keyword arguments, not both")
        self.config = config or AutoencoderKLConfig(**kwargs)
        c = self.config
        self.encoder = Encoder(c.in_channels, c.latent_channels, c.block_out_channels, c.layers_per_block,
                               c.norm_num_groups, double_z=True, act_fn=c.act_fn,
                               mid_block_add_attention=c.mid_block_add_attention)
        self.decoder = Decoder(c.latent_channels, c.out_channels, c.block_out_channels, c.layers_per_block,
                               c.norm_num_groups, act_fn=c.act_fn, mid_block_add_attention=c.mid_block_add_attention)
        n = 2 * c.latent_channels
        self.quant_conv = nn.Conv2d(n, n, 1) if c.use_quant_conv else nn.Identity()
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv \
            else nn.Identity()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AutoencoderKL":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(AutoencoderKLConfig(**{**PRESETS[name], **overrides}))

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **overrides) -> "AutoencoderKL":
        """A diffusers AutoencoderKL folder (a pipeline folder with subfolder="vae") → AutoencoderKL with its
        weights, in eval mode; keyword arguments override config values (tinyldm/interop/pretrained.py)."""
        return pretrained.from_pretrained(cls, AutoencoderKLConfig, path, subfolder, **overrides)

    def save_pretrained(self, out_dir) -> None:
        """Write a diffusers model folder (config.json + diffusion_pytorch_model.safetensors)."""
        pretrained.save_pretrained(self, out_dir)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))  # moments (B, 2c, H/f, W/f)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))  # (B, out, H, W)

    # The latent-diffusion side, the same two methods as VQModel's: stage 2 and sampling call only these.
    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, in, H, W) → (μ, σ) of q(z|x), each (B, c, H/f, W/f); stage 2 trains on z = μ + σ·ε."""
        posterior = self.encode(x)
        return posterior.mean, posterior.std

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """A latent (B, c, h, w), e.g. a diffusion sample → image (B, out, h·f, w·f)."""
        return self.decode(z)

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()  # (B, c, H/f, W/f)
        return self.decode(z), posterior

    def summary(self) -> str:
        c = self.config
        n = sum(p.numel() for p in self.parameters())
        h = c.sample_size // c.downsample_factor
        return (f"AutoencoderKL: {n:,} parameters; widths {c.block_out_channels} × {c.layers_per_block} "
                f"ResnetBlocks/level, f={c.downsample_factor}: {c.in_channels}×{c.sample_size}×{c.sample_size} "
                f"→ {c.latent_channels}×{h}×{h}; config {json.dumps(asdict(c))}")
