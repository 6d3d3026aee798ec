"""DiT: a Transformer denoiser over latent patches (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

x_t (B, C, H, W) ─patchify─► tokens (B, T, D) + fixed 2-D sin-cos positions
t ─sinusoid─► MLP ─┐
y ─user encoder────┴─► c (B, D) ─► every block: adaLN-Zero (shift, scale, gate for attention and MLP)
tokens ─N × DiTBlock─► final adaLN + Linear ─unpatchify─► prediction (B, C or 2C, H, W)

T = (H/p)·(W/p) tokens of width D = hidden_size. Leaves first: sincos_1d → sincos_2d → DiTBlock → DiTConfig →
PRESETS → DiT (attention, modulate and FinalLayer come from layers.py). The contract shared by every backbone:
`model(x_t, t, y) → prediction`. The defaults are the original DiT's, learn_sigma=True (2C output channels)
included; training here wants learn_sigma=False (C channels, the simple ε/v/x0 loss), which
`loading.backbone_config` sets.
"""

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from tinyldm.interop import pretrained
from tinyldm.layers import Attention, FeedForward, FinalLayer, TimestepEmbedding, checkpointed, modulate
from tinyldm.models.conditioning import COND_TYPES, ConditionEncoder


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos (T,) → (T, dim): [sin(pos·ω_i), cos(pos·ω_i)], ω_i = 10000^(−i/(dim/2)) (Vaswani et al. 2017)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.double()[:, None] * omega[None]  # (T, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D positions (T, dim), tokens in row-major order: first half encodes the column, second the row
    (the MAE/DiT convention, kept so published DiT weights see the positions they were trained with)."""
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")  # (h, w) each
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    return emb.float()  # (h·w, dim)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Sec. 3.2, Fig. 3)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, reference_attention: bool = False,
                 norm_eps: float = 1e-6):
        super().__init__()
        # ε before attention is 1e-6 in DiT and diffusers alike; diffusers' norm_eps sets only the MLP's (norm2).
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, heads=num_heads, dim_head=hidden_size // num_heads, qkv_bias=True,
                              reference=reference_attention)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.mlp = FeedForward(hidden_size, mult=mlp_ratio, glu=False)  # GELU (tanh approximation)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, T, D)
        x = x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, T, D)
        return x


@dataclass
class DiTConfig:
    input_size: int = 32  # latent height = width (H)
    patch_size: int = 2  # p: tokens are p×p latent patches
    in_channels: int = 4  # latent channels C
    hidden_size: int = 1152  # D: token width
    depth: int = 28  # number of DiT blocks
    num_heads: int = 16  # attention heads (head width D / heads)
    mlp_ratio: float = 4.0  # MLP width / D
    class_dropout_prob: float = 0.1  # condition dropout for classifier-free guidance (training mode only)
    num_classes: int = 1000  # number of users; id num_classes is the null id
    learn_sigma: bool = True  # also output the variance: 2C channels (DiT); training here wants False (backbone_config)
    timestep_freq_shift: float = 0.0  # s in the time features' ω_i = 10000^(−i/(128 − s)): 0 DiT's, 1 diffusers'
    norm_eps: float = 1e-6  # ε of the LayerNorm before each MLP: 1e-6 DiT's, 1e-5 diffusers' default
    cond_type: str = "embedding"  # user encoder: embedding | onehot_mlp | tokens | text (captions)
    num_cond_tokens: int = 4  # K, for cond_type="tokens"
    text_encoder: dict | None = None  # the text model's CLIPTextConfig fields, for cond_type="text"
    gradient_checkpointing: bool = False  # recompute block activations in backward to save memory
    reference_attention: bool = False  # written-out softmax(QKᵀ/√d)V instead of SDPA (tests, reading); slower

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            fits = self.hidden_size // self.num_heads * self.num_heads
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                             f"choose e.g. hidden_size {fits or self.num_heads}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}; "
                             f"choose a patch size that divides the latent size")
        if self.cond_type not in COND_TYPES:
            raise ValueError(f"cond_type {self.cond_type!r} is not supported; choose one of {COND_TYPES}")
        if (self.hidden_size // self.num_heads) % 2 or self.hidden_size % 4:
            step = math.lcm(4, 2 * self.num_heads)  # a multiple of 4 whose head width is even
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of 4 (2-D sin-cos positions) and "
                             f"its head width hidden_size/num_heads = {self.hidden_size // self.num_heads} even; "
                             f"choose e.g. hidden_size {self.hidden_size // step * step or step}")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels


PRESETS = {  # the paper's Table 1 sizes (× patch sizes 2, 4, 8), and the run presets of train_ldm.py --preset
    **{f"DiT-{name}/{p}": dict(depth=d, hidden_size=h, num_heads=n, patch_size=p)
       for name, (d, h, n) in {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                               "XL": (28, 1152, 16)}.items()
       for p in (2, 4, 8)},
    "tiny": dict(input_size=32, depth=4, hidden_size=128, num_heads=4, patch_size=4, learn_sigma=False,
                 num_classes=31),  # CPU: the tiny autoencoder's 32×32×4 latents in 4×4 patches → 64 tokens
    "small": dict(depth=12, hidden_size=384, num_heads=6, patch_size=2),  # one GPU: equal to DiT-S/2
    "seed": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2),  # the seed's size: equal to DiT-XL/2
}


class DiT(nn.Module):
    """Diffusion Transformer. Build with a config, a preset, or the original keyword names:
    `DiT(DiTConfig(...))`, `DiT.from_preset("DiT-XL/2", num_classes=31)`, `DiT(input_size=32, patch_size=2, ...)`.
    The output has 2C channels unless learn_sigma=False (what training here wants; see DiTConfig)."""

    def __init__(self, config: DiTConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("pass either a config or keyword arguments, not both")
        self.config = c = config or DiTConfig(**kwargs)
        grid = c.input_size // c.patch_size
        self.x_embedder = nn.Conv2d(c.in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.register_buffer("pos_embed", sincos_2d(c.hidden_size, grid, grid)[None], persistent=False)  # (1, T, D)
        self.t_embedder = TimestepEmbedding(256, c.hidden_size, freq_shift=c.timestep_freq_shift)
        self.y_embedder = ConditionEncoder(c.num_classes, c.hidden_size, c.cond_type, c.num_cond_tokens,
                                           c.class_dropout_prob, c.text_encoder)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.reference_attention,
                                             c.norm_eps) for _ in range(c.depth))
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DiT":
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(DiTConfig(**{**PRESETS[name], **overrides}))

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **overrides) -> "DiT":
        """A diffusers DiTTransformer2DModel folder, or an original DiT checkpoint (a .pt state dict) → DiT with its
        weights, in eval mode; keyword arguments override config values (tinyldm/interop/pretrained.py)."""
        return pretrained.from_pretrained(cls, DiTConfig, path, subfolder, **overrides)

    def save_pretrained(self, out_dir, approximate_timestep: bool = False) -> None:
        """Write a diffusers DiTTransformer2DModel folder; approximate_timestep: even if timestep_freq_shift ≠ 1."""
        pretrained.save_pretrained(self, out_dir, approximate_timestep)

    def initialize_weights(self) -> None:
        """All init rules in one place (Peebles & Xie 2023, Sec. 3.2 and their released code's choices)."""
        for m in self.modules():  # Transformer linears: Xavier-uniform, zero bias
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight  # the patch embedding is a linear map of a flattened patch
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for p in self.y_embedder.parameters():  # user encoder: N(0, 0.02²), and the timestep MLP's weights below
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.t_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.t_embedder.linear_2.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)  # and the output starts at exactly zero
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c, p = self.config, self.config.patch_size
        if x.shape[-1] != c.input_size or x.shape[-2] != c.input_size or x.shape[1] != c.in_channels:
            raise ValueError(f"DiT expects latents (B, {c.in_channels}, {c.input_size}, {c.input_size}), "
                             f"got {tuple(x.shape)}; check the autoencoder and input_size")
        h = rearrange(self.x_embedder(x), "b d h w -> b (h w) d") + self.pos_embed  # (B, T, D)
        y_vec, _ = self.y_embedder(y)  # (B, D)
        cond = self.t_embedder(t) + y_vec  # (B, D)
        for block in self.blocks:
            h = checkpointed(block, h, cond, enabled=c.gradient_checkpointing and self.training)  # (B, T, D)
        h = self.final_layer(h, cond)  # (B, T, p·p·C_out)
        grid = c.input_size // p
        return rearrange(h, "b (h w) (p q c) -> b c (h p) (w q)", h=grid, w=grid, p=p, q=p)  # (B, C_out, H, W)

    def summary(self) -> str:
        c = self.config
        n = sum(q.numel() for q in self.parameters())
        tokens = (c.input_size // c.patch_size) ** 2
        return (f"DiT: {n:,} trainable parameters (+{self.pos_embed.numel():,} fixed positions); depth {c.depth}, "
                f"width {c.hidden_size}, {c.num_heads} heads × {c.hidden_size // c.num_heads}, patch {c.patch_size} "
                f"→ {tokens} tokens; user encoder {c.cond_type} over {c.num_classes} users + null")
