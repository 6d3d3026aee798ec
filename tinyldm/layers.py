"""Building blocks shared by every tinyldm network, leaves first.

activation → checkpointed → timestep_embedding → TimestepEmbedding → ResnetBlock → Downsample / Upsample →
rope_angles → apply_rope → attend → Attention → FeedForward → TransformerBlock → SpatialTransformer → modulate →
FinalLayer.

Letters in shape comments: B batch, C channels, H/W spatial, T tokens (query), S tokens (context), D width,
h heads, d head width. Module attribute names follow the diffusers vocabulary (norm1, conv1, to_q, proj_in, …)
so published weights map onto them by name.
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def activation(name: str) -> nn.Module:
    """`act_fn` string of a config → module; the only strings we accept are these few."""
    if name not in ACTIVATIONS:
        raise ValueError(f"act_fn {name!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def checkpointed(module: nn.Module, *args, enabled: bool):
    """module(*args); when `enabled` (gradient checkpointing), its activations are recomputed in backward
    instead of stored, trading compute for memory."""
    return checkpoint(module, *args, use_reentrant=False) if enabled else module(*args)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, Vaswani et al. 2017 / DDPM.

    emb = [cos(t·ω_i), sin(t·ω_i)],  ω_i = max_period^(−i/(dim/2 − s)),  i = 0 … dim/2 − 1.
    (cos first: the order of the SD UNet's `flip_sin_to_cos=True` and of DiT.) The shift s is 0 in DDPM, the SD
    UNet and the original DiT; diffusers' DiT uses 1 (its `downscale_freq_shift`).
    """
    half = dim // 2
    arange = torch.arange(half, dtype=torch.float32, device=t.device)
    omega = torch.exp(-math.log(max_period) * arange / (half - freq_shift))
    angles = t.float()[:, None] * omega[None]  # (B, dim/2)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, 2·(dim/2))
    if dim % 2:  # odd width: pad one zero column
        emb = F.pad(emb, (0, 1))
    return emb  # (B, dim)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features (frequency shift s, see `timestep_embedding`) → Linear → SiLU → Linear: the time vector
    that conditions every block."""

    def __init__(self, in_dim: int, dim: int, freq_shift: float = 0.0):
        super().__init__()
        self.in_dim, self.freq_shift = in_dim, freq_shift
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.in_dim, freq_shift=self.freq_shift).to(self.linear_1.weight.dtype)  # (B, in)
        return self.linear_2(self.act(self.linear_1(emb)))  # (B, D)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → Conv → (+ time) → GroupNorm → SiLU → Dropout → Conv, plus a (1×1) shortcut.

    The time embedding enters after the first conv, either added per channel ("default") or as a
    scale-shift of the second norm ("scale_shift", Dhariwal & Nichol 2021: h = norm(h)·(1 + s) + b).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        temb_channels: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        time_embedding_norm: str = "default",
        act_fn: str = "silu",
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        for c in (in_channels, out_channels):
            if c % groups:
                raise ValueError(f"channels {c} are not divisible by norm_num_groups {groups}; change one of them")
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"time_embedding_norm {time_embedding_norm!r}: choose 'default' or 'scale_shift'")
        self.time_embedding_norm = time_embedding_norm
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = None
        if temb_channels is not None:
            mult = 2 if time_embedding_norm == "scale_shift" else 1
            self.time_emb_proj = nn.Linear(temb_channels, mult * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = activation(act_fn)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))  # (B, C_out, H, W)
        if self.time_emb_proj is not None:
            if temb is None:
                raise ValueError("this ResnetBlock was built with temb_channels; pass the time embedding")
            t = self.time_emb_proj(self.act(temb))[:, :, None, None]  # (B, C_out or 2·C_out, 1, 1)
            if self.time_embedding_norm == "scale_shift":
                scale, shift = t.chunk(2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + t)
        else:
            h = self.norm2(h)
        h = self.conv2(self.dropout(self.act(h)))  # (B, C_out, H, W)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample(nn.Module):
    """Strided 3×3 conv, H×W → H/2×W/2.

    padding=1 is the UNet's; padding=0 is the autoencoder's, which pads right/bottom by one first
    (the asymmetric padding of the original LDM VAE, kept so its weights give the same outputs).
    """

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv (avoids the checkerboard of transposed convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


def rope_angles(positions: torch.Tensor, axes_dim: tuple[int, ...], theta: float) -> torch.Tensor:
    """positions (T, A) → rotation angles (T, d/2), float64: axis a gets d_a/2 angles pos_a·ω_i with
    ω_i = θ^(−2i/d_a), i = 0 … d_a/2 − 1 (RoFormer, Su et al. 2021, Eq. 15), concatenated over the axes."""
    angles = []
    for a, dim in enumerate(axes_dim):
        omega = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (d_a/2,)
        angles.append(positions[:, a].double()[:, None] * omega[None])  # (T, d_a/2)
    return torch.cat(angles, dim=1)  # (T, d/2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_2i, x_2i+1) of every head by its angle (RoFormer Eq. 34); x (B, h, T, d), cos (T, d/2)."""
    x1, x2 = rearrange(x, "b h t (i two) -> two b h t i", two=2)  # (B, h, T, d/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, h, T, d/2, 2)
    return rearrange(out, "b h t i two -> b h t (i two)")  # (B, h, T, d)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           cos: torch.Tensor | None = None, sin: torch.Tensor | None = None, reference: bool = False) -> torch.Tensor:
    """softmax(Q Kᵀ / √d + mask) V per head (Vaswani et al. 2017, Eq. 1): q (B, h, T, d), k, v (B, h, S, d) →
    (B, h, T, d). `mask` (B, S) bool: True where a key may be attended to. `cos`, `sin` (T, d/2): rotate q and k
    first (RoPE, self-attention only, S = T). The core runs through `F.scaled_dot_product_attention`;
    `reference=True` runs the same formula written out, for tests and for reading."""
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, h, T, d)
    attn_mask = None if mask is None else mask[:, None, None, :].bool()  # (B, 1, 1, S)
    if not reference:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, T, d)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, T, S)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, h, T, d)


def written_out_attention(model: nn.Module) -> nn.Module:
    """Switch every attention in `model` to attend's written-out formula (the same math; tested equal). Used for
    bf16 training on CPUs, where the written-out path's matmuls run on the bf16 hardware (AMX or AVX512-BF16) and
    SDPA's flash backward does not: the tiny DiT's bf16 step is 1.5× faster this way (benchmarks/bench_precision.py)."""
    for m in model.modules():
        if hasattr(m, "reference"):
            m.reference = True
        if hasattr(m, "reference_attention"):
            m.reference_attention = True
    return model


class Attention(nn.Module):
    """Multi-head attention, self (context=None) or cross (context (B, S, D_ctx)): projections around `attend`.

    `reference=True` runs attend's written-out formula instead of SDPA. `mask` (B, S) bool: True where a key may
    be attended to.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        qkv_bias: bool = False,
        out_bias: bool = True,
        dropout: float = 0.0,
        reference: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.reference = reference
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, query_dim, bias=out_bias)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b t (h d) -> b h t d", h=self.heads)  # (B, h, T, d)
        k = rearrange(self.to_k(context), "b s (h d) -> b h s d", h=self.heads)  # (B, h, S, d)
        v = rearrange(self.to_v(context), "b s (h d) -> b h s d", h=self.heads)  # (B, h, S, d)
        out = attend(q, k, v, mask=mask, reference=self.reference)  # (B, h, T, d)
        out = rearrange(out, "b h t d -> b t (h d)")  # (B, T, h·d)
        return self.dropout(self.to_out(out))  # (B, T, D)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear → GELU → Linear, or with GEGLU (Shazeer 2020): (xW) ⊙ GELU(xV) → Linear."""

    def __init__(self, dim: int, mult: float = 4.0, glu: bool = True, dropout: float = 0.0, dim_out: int | None = None):
        super().__init__()
        inner = int(dim * mult)
        self.glu = glu
        self.proj_in = nn.Linear(dim, inner * 2 if glu else inner)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim_out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(x)  # (B, T, inner or 2·inner)
        if self.glu:
            h, gate = h.chunk(2, dim=-1)
            h = h * F.gelu(gate)  # (B, T, inner)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.proj_out(self.dropout(h))  # (B, T, D)


class TransformerBlock(nn.Module):
    """Pre-norm block: x += SelfAttn(LN x); x += CrossAttn(LN x, context); x += FF(LN x)."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None, dropout: float = 0.0,
                 reference_attention: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout, reference=reference_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim=context_dim, heads=heads, dim_head=dim_head, dropout=dropout,
                               reference=reference_attention)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout, glu=True)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, T, D)
        x = x + self.attn2(self.norm2(x), context=context, mask=mask)  # context None → self-attention again
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Feature map ↔ token sequence around TransformerBlocks (the LDM UNet's "Transformer2DModel").

    GroupNorm → proj_in (1×1 conv, or Linear on tokens when `use_linear_projection`) → blocks → proj_out,
    added back to the input.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        depth: int = 1,
        groups: int = 32,
        use_linear_projection: bool = False,
        dropout: float = 0.0,
        reference_attention: bool = False,
    ):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels {channels} are not divisible by norm_num_groups {groups}; change one of them")
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in, self.proj_out = nn.Linear(channels, inner), nn.Linear(inner, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(channels, inner, 1), nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, dim_head, context_dim, dropout, reference_attention) for _ in range(depth)
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(rearrange(h, "b c h w -> b (h w) c"))  # (B, H·W, D)
        else:
            h = rearrange(self.proj_in(h), "b c h w -> b (h w) c")  # (B, H·W, D)
        for block in self.transformer_blocks:
            h = block(h, context=context, mask=mask)
        if self.use_linear_projection:
            h = rearrange(self.proj_out(h), "b (h w) c -> b c h w", h=H, w=W)  # (B, C, H, W)
        else:
            h = self.proj_out(rearrange(h, "b (h w) c -> b c h w", h=H, w=W))
        return x + h


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift, per sample, broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, T, D)


class FinalLayer(nn.Module):
    """Output layer of the adaLN Transformers (DiT, MMDiT): adaLN (shift, scale) → Linear to p·p·C_out per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, p·p·C_out)
