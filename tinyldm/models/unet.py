"""UNet2DConditionModel: the latent-diffusion UNet (Rombach et al. 2022, Sec. 3.3; Ronneberger et al. 2015).

x_t (B, C, H, W) ─conv_in─► down path (ResnetBlocks [+ SpatialTransformer] per level, Downsample between)
  ─► mid (Resnet → SpatialTransformer → Resnet) ─► up path (concat the matching skip, ResnetBlocks
  [+ SpatialTransformer], Upsample between) ─► GroupNorm → SiLU → conv_out ─► prediction (B, C, H, W).
t ─sinusoid─► MLP ─► temb (+ the user vector) into every ResnetBlock; the user tokens (or an
`encoder_hidden_states` passed in, e.g. a text encoder's) are the context of every cross-attention.
Leaves first: config (with the heads resolution) → PRESETS → spatial_transformer → DownBlock → MidBlock →
UpBlock → UNet.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from tinyldm.interop import pretrained
from tinyldm.layers import Downsample, ResnetBlock, SpatialTransformer, TimestepEmbedding, Upsample, checkpointed
from tinyldm.models.conditioning import COND_TYPES, ConditionEncoder

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass
class UNetConfig:
    sample_size: int = 32  # latent height = width
    in_channels: int = 4  # latent channels in
    out_channels: int = 4  # prediction channels out
    layers_per_block: int = 2  # ResnetBlocks per down level (up levels use one more)
    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])  # width per level
    down_block_types: list[str] = field(
        default_factory=lambda: ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])  # with / without attention
    up_block_types: list[str] = field(default_factory=lambda: ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    cross_attention_dim: int = 768  # width of the condition tokens
    attention_head_dim: int | list[int] = 8  # diffusers' name, but a head count (SD 1.x); docs/interop.md
    num_attention_heads: int | list[int] | None = None  # heads per level; wins over attention_head_dim
    use_linear_projection: bool = False  # Linear (SD 2.x) instead of 1×1 conv around the transformer
    norm_num_groups: int = 32  # GroupNorm groups; must divide every width
    transformer_layers_per_block: int = 1  # TransformerBlocks in each SpatialTransformer
    num_classes: int = 31  # number of users; id num_classes is the null id; 0: no user encoder (context passed in)
    cond_type: str = "embedding"  # user encoder: embedding | onehot_mlp | tokens | text (captions)
    num_cond_tokens: int = 4  # K, for cond_type="tokens"
    text_encoder: dict | None = None  # the text model's CLIPTextConfig fields, for cond_type="text"
    class_dropout_prob: float = 0.1  # condition dropout for classifier-free guidance
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    reference_attention: bool = False  # written-out softmax(QKᵀ/√d)V instead of SDPA (tests, reading); slower

    def __post_init__(self):
        self.block_out_channels = list(self.block_out_channels)
        n = len(self.block_out_channels)
        for name, allowed in (("down_block_types", DOWN_TYPES), ("up_block_types", UP_TYPES)):
            types = list(getattr(self, name))
            setattr(self, name, types)
            if len(types) != n:
                raise ValueError(f"{name} has {len(types)} entries but block_out_channels has {n}; give one per level")
            for t in types:
                if t not in allowed:
                    raise ValueError(f"{name}: {t!r} is not supported; choose from {allowed}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {self.block_out_channels}: {c} is not divisible by "
                                 f"norm_num_groups {self.norm_num_groups}; use multiples of it or fewer groups")
        if self.cond_type not in COND_TYPES:
            raise ValueError(f"cond_type {self.cond_type!r} is not supported; choose one of {COND_TYPES}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes is {self.num_classes}; it must be the number of users, or 0 for none")
        if self.sample_size % 2 ** (n - 1):
            raise ValueError(f"sample_size {self.sample_size} is not divisible by 2^{n - 1} (one halving per level)")
        self.heads()  # validates the head layout

    def heads(self) -> list[tuple[int, int]]:
        """(heads, head width) per level: num_attention_heads if given, else attention_head_dim."""
        spec = self.num_attention_heads if self.num_attention_heads is not None else self.attention_head_dim
        per_level = spec if isinstance(spec, (list, tuple)) else [spec] * len(self.block_out_channels)
        if len(per_level) != len(self.block_out_channels):
            raise ValueError(f"{len(per_level)} head counts for {len(self.block_out_channels)} levels; "
                             "give one per level")
        out = []
        for c, h in zip(self.block_out_channels, per_level):
            if c % h:
                raise ValueError(f"width {c} is not divisible by {h} attention heads; choose a head count dividing it")
            out.append((h, c // h))
        return out


PRESETS = {
    # The tiny autoencoder's 32×32×4 latents on CPU: 3 levels (32 → 16 → 8), attention at the two coarser ones
    # (attention over all 1024 positions of the 32×32 level made a training step 40× slower than the tiny DiT's).
    "tiny": dict(sample_size=32, block_out_channels=[32, 64, 128], layers_per_block=1,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 cross_attention_dim=128, num_attention_heads=4),
    # One GPU: the tiny layout, twice as wide, two ResnetBlocks per level.
    "small": dict(block_out_channels=[128, 256, 256], layers_per_block=2,
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                  cross_attention_dim=256, num_attention_heads=8),
    # The seed's configuration: SD 1.x's layout with 64-wide heads and linear projections (as SD 2.x).
    "seed": dict(layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=768,
                 attention_head_dim=8, num_attention_heads=[5, 10, 20, 20], use_linear_projection=True),
    # Stable Diffusion 1.x (859,520,964 parameters without the user encoder).
    "sd1": dict(sample_size=64, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                cross_attention_dim=768, attention_head_dim=8),
}


def spatial_transformer(channels: int, heads: tuple[int, int], cfg: UNetConfig) -> SpatialTransformer:
    """The SpatialTransformer of an attention level: heads = (heads, head width) from `UNetConfig.heads()`."""
    return SpatialTransformer(channels, heads[0], heads[1], cfg.cross_attention_dim, cfg.transformer_layers_per_block,
                              cfg.norm_num_groups, cfg.use_linear_projection,
                              reference_attention=cfg.reference_attention)


class DownBlock(nn.Module):
    """ResnetBlocks (each followed by a SpatialTransformer when `attention`), then an optional Downsample."""

    def __init__(self, c_in, c_out, layers, temb, heads, attention, down, cfg: UNetConfig):
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, temb, groups=g, eps=1e-5)
                                     for i in range(layers))
        self.attentions = nn.ModuleList(spatial_transformer(c_out, heads, cfg) for _ in range(layers)) \
            if attention else None
        # a list of one: diffusers' weight names
        self.downsamplers = nn.ModuleList([Downsample(c_out, padding=1)]) if down else None

    def forward(self, h, temb, context, ckpt=False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = checkpointed(resnet, h, temb, enabled=ckpt)
            if self.attentions is not None:
                h = checkpointed(self.attentions[i], h, context, enabled=ckpt)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    def __init__(self, c, temb, heads, cfg: UNetConfig):
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList(ResnetBlock(c, c, temb, groups=g, eps=1e-5) for _ in range(2))
        self.attentions = nn.ModuleList([spatial_transformer(c, heads, cfg)])  # a list of one: diffusers' weight names

    def forward(self, h, temb, context, ckpt=False):
        h = checkpointed(self.resnets[0], h, temb, enabled=ckpt)
        h = checkpointed(self.attentions[0], h, context, enabled=ckpt)
        return checkpointed(self.resnets[1], h, temb, enabled=ckpt)


class UpBlock(nn.Module):
    """ResnetBlocks on [h, skip] concatenated along channels (+ SpatialTransformer), then an optional Upsample."""

    def __init__(self, c_in, skip_channels, c_out, temb, heads, attention, up, cfg: UNetConfig):
        super().__init__()
        g = cfg.norm_num_groups
        ins = [c_in] + [c_out] * (len(skip_channels) - 1)
        self.resnets = nn.ModuleList(ResnetBlock(i + s, c_out, temb, groups=g, eps=1e-5)
                                     for i, s in zip(ins, skip_channels))
        self.attentions = nn.ModuleList(spatial_transformer(c_out, heads, cfg) for _ in skip_channels) \
            if attention else None
        self.upsamplers = nn.ModuleList([Upsample(c_out)]) if up else None  # a list of one: diffusers' weight names

    def forward(self, h, skips, temb, context, ckpt=False):
        for i, resnet in enumerate(self.resnets):
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C_h + C_skip, H, W)
            h = checkpointed(resnet, h, temb, enabled=ckpt)
            if self.attentions is not None:
                h = checkpointed(self.attentions[i], h, context, enabled=ckpt)
        return h if self.upsamplers is None else self.upsamplers[0](h)


class UNet2DConditionModel(nn.Module):
    """Build with a config, a preset, or the diffusers keyword names verbatim:
    `UNet2DConditionModel(UNetConfig(...))`, `.from_preset("tiny")`, `UNet2DConditionModel(sample_size=32, ...)`."""

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("pass either a config or keyword arguments, not both")
        self.config = c = config or UNetConfig(**kwargs)
        chans, heads, levels = c.block_out_channels, c.heads(), len(c.block_out_channels)
        temb = 4 * chans[0]
        self.conv_in = nn.Conv2d(c.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb)
        self.cond_encoder, self.cond_proj = None, None  # num_classes = 0: the context comes from outside
        if c.num_classes:
            self.cond_encoder = ConditionEncoder(c.num_classes, c.cross_attention_dim, c.cond_type,
                                                 c.num_cond_tokens, c.class_dropout_prob, c.text_encoder)
            self.cond_proj = nn.Linear(c.cross_attention_dim, temb)  # the user vector joins the time embedding

        # Down path; remember each skip's channels, the up path takes them back in reverse.
        skip_channels = [chans[0]]
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(c.down_block_types):
            down = i < levels - 1
            self.down_blocks.append(DownBlock(chans[max(i - 1, 0)], chans[i], c.layers_per_block, temb, heads[i],
                                              kind == "CrossAttnDownBlock2D", down, c))
            skip_channels += [chans[i]] * (c.layers_per_block + int(down))
        self.mid_block = MidBlock(chans[-1], temb, heads[-1], c)
        self.up_blocks = nn.ModuleList()
        h = chans[-1]
        for i, kind in enumerate(c.up_block_types):
            level = levels - 1 - i
            skips = [skip_channels.pop() for _ in range(c.layers_per_block + 1)]
            self.up_blocks.append(UpBlock(h, skips, chans[level], temb, heads[level], kind == "CrossAttnUpBlock2D",
                                          level > 0, c))
            h = chans[level]
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, chans[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[0], c.out_channels, 3, padding=1)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet2DConditionModel":
        if name not in PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(UNetConfig(**{**PRESETS[name], **overrides}))

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **overrides) -> "UNet2DConditionModel":
        """A diffusers UNet2DConditionModel folder (a pipeline folder with subfolder="unet") → UNet with its
        weights, in eval mode; keyword arguments override config values (tinyldm/interop/pretrained.py). An SD UNet
        has no user encoder: pass num_classes=N to add a new one, or call it with encoder_hidden_states."""
        return pretrained.from_pretrained(cls, UNetConfig, path, subfolder, **overrides)

    def save_pretrained(self, out_dir) -> None:
        """Write a diffusers model folder (config.json + diffusion_pytorch_model.safetensors)."""
        pretrained.save_pretrained(self, out_dir)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,), user ids y (B,) → prediction (B, C_out, H, W).

        `encoder_hidden_states` (B, S, D_ctx), e.g. a text encoder's output, replaces the user tokens as the
        cross-attention context (diffusers' argument name); y, when also given, still adds the user vector to
        the time embedding.
        """
        c = self.config
        if x.shape[1] != c.in_channels or x.shape[-1] % 2 ** (len(c.block_out_channels) - 1):
            raise ValueError(f"UNet expects latents (B, {c.in_channels}, H, W) with H, W divisible by "
                             f"{2 ** (len(c.block_out_channels) - 1)}, got {tuple(x.shape)}")
        if y is not None and self.cond_encoder is None:
            raise ValueError("this UNet has no user encoder (num_classes=0); pass encoder_hidden_states, or build "
                             "it with num_classes=N to condition on user ids")
        if y is None and encoder_hidden_states is None:
            raise ValueError("pass user ids y or a cross-attention context encoder_hidden_states (B, S, "
                             f"{c.cross_attention_dim})")
        ckpt = c.gradient_checkpointing and self.training
        temb = self.time_embedding(t)  # (B, 4·C0)
        context = encoder_hidden_states  # (B, S, D_ctx) or None
        if y is not None:
            y_vec, tokens = self.cond_encoder(y)  # (B, D_ctx), (B, K, D_ctx)
            temb = temb + self.cond_proj(y_vec)  # (B, 4·C0)
            context = tokens if context is None else context
        h = self.conv_in(x)  # (B, C0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h, s = block(h, temb, context, ckpt)
            skips += s
        h = self.mid_block(h, temb, context, ckpt)  # (B, C_last, H/2^(L−1), W/2^(L−1))
        for block in self.up_blocks:
            h = block(h, skips, temb, context, ckpt)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))  # (B, C_out, H, W)

    def summary(self) -> str:
        c = self.config
        n = sum(p.numel() for p in self.parameters())
        n_cond = sum(p.numel() for m in (self.cond_encoder, self.cond_proj) if m is not None for p in m.parameters())
        layout = ", ".join(f"{ch}: {h}×{d}" for ch, (h, d) in zip(c.block_out_channels, c.heads()))
        context = f"{c.cond_type} tokens" if c.num_classes else "encoder_hidden_states"
        return (f"UNet2DConditionModel: {n:,} parameters ({n - n_cond:,} UNet + {n_cond:,} user encoder); "
                f"levels {c.block_out_channels} × {c.layers_per_block} ResnetBlocks; attention heads × head width "
                f"per level: {layout}; cross-attention to {context} of width {c.cross_attention_dim}")
