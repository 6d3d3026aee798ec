"""MMDiT: a Flux-style multimodal diffusion Transformer (Esser et al. 2024, "Scaling Rectified Flow Transformers
for High-Resolution Image Synthesis" (SD3), and the Flux reference design of double- then single-stream blocks).

x_t (B, C, H, W) ─patchify─► img (B, N, D)                        2-D RoPE on image tokens, none on condition tokens
y ─user encoder─► txt (B, K, D) condition tokens, and a pooled vector ─┐
t ─sinusoid─► MLP ─────────────────────────────────────────────────────┴─► vec (B, D) ─► adaLN of every block
img, txt ─M × DoubleStreamBlock─► [txt; img] ─L × SingleStreamBlock─► img part ─final adaLN + Linear─► unpatchify

N = (H/p)·(W/p) image tokens, K condition tokens, width D, h heads of width d = D/h. A double-stream block keeps
separate weights per stream and attends jointly over [txt; img]; a single-stream block is one sequence with
attention and MLP computed in parallel from one fused projection. Leaves first: QKNorm → StreamAttention →
DoubleStreamBlock → SingleStreamBlock → MMDiTConfig → PRESETS → MMDiT; attention (with RoPE), modulate and
FinalLayer come from layers.py. The contract shared by every backbone: `model(x_t, t, y) → prediction`, same
shape as x_t.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tinyldm.layers import FeedForward, FinalLayer, TimestepEmbedding, attend, checkpointed, modulate, rope_angles
from tinyldm.models.conditioning import COND_TYPES, ConditionEncoder


class QKNorm(nn.Module):
    """RMS-normalise queries and keys per head, each with a learned scale (Esser et al. 2024, Sec. 5.3.2):
    keeps attention logits bounded so training is stable at high resolution and in low precision."""

    def __init__(self, dim_head: int):
        super().__init__()
        self.query_norm = nn.RMSNorm(dim_head, eps=1e-6)
        self.key_norm = nn.RMSNorm(dim_head, eps=1e-6)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.query_norm.weight.dtype  # normalise in the weights' precision (float32 under bf16 autocast)
        return self.query_norm(q.to(w)).to(q.dtype), self.key_norm(k.to(w)).to(k.dtype)  # (B, h, T, d) each


class StreamAttention(nn.Module):
    """One stream's own attention weights: fused QKV, QK-RMSNorm, output projection. The attention itself is joint."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        q, k = self.norm(q, k)  # (B, h, T, d) each
        return q, k, v


class DoubleStreamBlock(nn.Module):
    """Image and condition streams with separate norms, QKV, MLP and modulation, one joint attention over [txt; img]
    (Esser et al. 2024, Fig. 2b). Per stream: x += gate·Attn(modulate(LN x)); x += gate·MLP(modulate(LN x)).
    Modulation names: i_ for the image stream, c_ for the condition ("txt" in Flux) stream."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, reference_attention: bool = False):
        super().__init__()
        self.reference_attention = reference_attention
        D = hidden_size
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))  # image stream
        self.img_norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.img_attn = StreamAttention(D, num_heads)
        self.img_norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.img_mlp = FeedForward(D, mult=mlp_ratio, glu=False)  # GELU (tanh approximation)
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))  # condition stream: same layers, own weights
        self.txt_norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.txt_attn = StreamAttention(D, num_heads)
        self.txt_norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = FeedForward(D, mult=mlp_ratio, glu=False)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K = txt.shape[1]
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec).chunk(6, dim=1)  # 6 × (B, D)
        c_shift1, c_scale1, c_gate1, c_shift2, c_scale2, c_gate2 = self.txt_mod(vec).chunk(6, dim=1)  # 6 × (B, D)
        img_q, img_k, img_v = self.img_attn.qkv_heads(modulate(self.img_norm1(img), i_shift1, i_scale1))  # (B, h, N, d)
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(modulate(self.txt_norm1(txt), c_shift1, c_scale1))  # (B, h, K, d)
        q = torch.cat([txt_q, img_q], dim=2)  # (B, h, K + N, d): the joint sequence [txt; img]
        k = torch.cat([txt_k, img_k], dim=2)  # (B, h, K + N, d)
        v = torch.cat([txt_v, img_v], dim=2)  # (B, h, K + N, d)
        out = attend(q, k, v, cos=cos, sin=sin, reference=self.reference_attention)  # (B, h, K + N, d)
        out = rearrange(out, "b h t d -> b t (h d)")  # (B, K + N, D): every token sees both streams
        txt_out, img_out = out[:, :K], out[:, K:]  # (B, K, D), (B, N, D)
        img = img + i_gate1[:, None] * self.img_attn.proj(img_out)  # (B, N, D)
        img = img + i_gate2[:, None] * self.img_mlp(modulate(self.img_norm2(img), i_shift2, i_scale2))  # (B, N, D)
        txt = txt + c_gate1[:, None] * self.txt_attn.proj(txt_out)  # (B, K, D)
        txt = txt + c_gate2[:, None] * self.txt_mlp(modulate(self.txt_norm2(txt), c_shift2, c_scale2))  # (B, K, D)
        return img, txt


class SingleStreamBlock(nn.Module):
    """One sequence, attention and MLP in parallel from one fused input projection (the Flux single block;
    parallel layers as in ViT-22B, Dehghani et al. 2023):
    (q, k, v, m) = W₁ modulate(LN x);  x += gate·W₂[Attn(q, k, v), GELU(m)]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, reference_attention: bool = False):
        super().__init__()
        self.reference_attention = reference_attention
        self.num_heads = num_heads
        self.mlp_hidden = int(hidden_size * mlp_ratio)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 3 * hidden_size))
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden)  # W₁: q, k, v and MLP input m
        self.norm = QKNorm(hidden_size // num_heads)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden, hidden_size)  # W₂: attention output and MLP hidden

    def forward(self, x: torch.Tensor, vec: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec).chunk(3, dim=1)  # 3 × (B, D)
        h = self.linear1(modulate(self.pre_norm(x), shift, scale))  # (B, T, 3D + M)
        qkv, m = h.split([h.shape[-1] - self.mlp_hidden, self.mlp_hidden], dim=-1)  # (B, T, 3D), (B, T, M)
        q, k, v = rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=self.num_heads)  # (B, h, T, d)
        q, k = self.norm(q, k)
        attn = attend(q, k, v, cos=cos, sin=sin, reference=self.reference_attention)  # (B, h, T, d)
        attn = rearrange(attn, "b h t d -> b t (h d)")  # (B, T, D)
        out = self.linear2(torch.cat([attn, F.gelu(m, approximate="tanh")], dim=-1))  # (B, T, D)
        return x + gate[:, None] * out  # (B, T, D)


@dataclass
class MMDiTConfig:
    input_size: int = 32  # latent height = width (H)
    patch_size: int = 2  # p: tokens are p×p latent patches
    in_channels: int = 4  # latent channels C (output has C too: a velocity, ε or x0, no learned variance)
    hidden_size: int = 384  # D: token width
    depth_double: int = 4  # M double-stream blocks (separate weights per stream, joint attention)
    depth_single: int = 8  # L single-stream blocks (one sequence, parallel attention + MLP); at least 1
    num_heads: int = 6  # h attention heads; head width d = D / h
    mlp_ratio: float = 4.0  # MLP width / D
    axes_dim: tuple[int, ...] | None = None  # RoPE widths (height, width), summing to d; None = split d evenly
    theta: float = 10000.0  # RoPE base θ
    num_classes: int = 31  # number of users; id num_classes is the null id
    cond_type: str = "tokens"  # user encoder: tokens (K learned tokens per id) | embedding | onehot_mlp (K = 1)
    num_cond_tokens: int = 4  # K, for cond_type="tokens"
    text_encoder: dict | None = None  # the text model's CLIPTextConfig fields, for cond_type="text"
    class_dropout_prob: float = 0.1  # condition dropout inside the model (training mode only); train_ldm.py uses 0
    gradient_checkpointing: bool = False  # recompute block activations in backward to save memory
    reference_attention: bool = False  # written-out softmax(QKᵀ/√d)V instead of SDPA (tests, reading); slower

    def __post_init__(self):
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "num_heads", "num_cond_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be a positive integer")
        if self.hidden_size % self.num_heads:
            fits = self.hidden_size // self.num_heads * self.num_heads
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                             f"choose e.g. hidden_size {fits or self.num_heads}")
        d = self.hidden_size // self.num_heads
        if d % 2:
            raise ValueError(f"head width hidden_size/num_heads = {d} is odd; RoPE rotates pairs, choose an even one")
        if self.axes_dim is None:  # the one documented resolution: height gets ⌊d/4⌋·2, width the rest
            self.axes_dim = (d // 4 * 2, d - d // 4 * 2)
        self.axes_dim = tuple(int(a) for a in self.axes_dim)  # config.json stores a list
        if len(self.axes_dim) != 2 or sum(self.axes_dim) != d or any(a % 2 or a < 0 for a in self.axes_dim):
            raise ValueError(f"axes_dim {self.axes_dim} must be two even widths (height, width) summing to the head "
                             f"width hidden_size/num_heads = {d}; choose e.g. {(d // 4 * 2, d - d // 4 * 2)}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}; "
                             f"choose a patch size that divides the latent size")
        if self.depth_double < 0 or self.depth_single < 1:
            raise ValueError(f"depth_double {self.depth_double} must be ≥ 0 and depth_single {self.depth_single} ≥ 1 "
                             f"(without a single block the last double block's condition output would be unused)")
        if self.mlp_ratio <= 0 or self.theta <= 0:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} and theta {self.theta} must be positive; Flux uses 4 and 1e4")
        if self.cond_type not in COND_TYPES:
            raise ValueError(f"cond_type {self.cond_type!r} is not supported; choose one of {COND_TYPES}")

    @property
    def num_txt_tokens(self) -> int:
        """K: condition tokens per sample (the embedding and one-hot encoders give one, a caption its length)."""
        if self.cond_type == "text":
            return self.text_encoder["max_position_embeddings"]
        return self.num_cond_tokens if self.cond_type == "tokens" else 1


PRESETS = {  # tiny: CPU (per-token cost of DiT "tiny": 4 blocks at width 128); small: one GPU (12 blocks, as DiT-S/2)
    "tiny": dict(input_size=32, patch_size=4, hidden_size=128, depth_double=2, depth_single=2, num_heads=4,
                 num_classes=31),
    "small": dict(input_size=32, patch_size=2, hidden_size=384, depth_double=4, depth_single=8, num_heads=6,
                  num_classes=31),
    # seed: the seed names no MMDiT size, so DiT-XL/2's width and heads. Weights per block: double 36D², single 15D²
    # (a DiT block 18D²); compute per token ≈ 12D² for all three. M + L = 28 and 36M + 15L = 28·18 give M = 4,
    # L = 24: DiT-XL/2's per-token compute, and 673,663,120 parameters vs its 673,699,984 (31 users, embedding).
    "seed": dict(input_size=32, patch_size=2, hidden_size=1152, depth_double=4, depth_single=24, num_heads=16,
                 num_classes=31),
}


class MMDiT(nn.Module):
    """Flux-style MMDiT. Build with a config, a preset, or keywords: `MMDiT(MMDiTConfig(...))`,
    `MMDiT.from_preset("tiny", num_classes=5)`, `MMDiT(hidden_size=384, depth_double=4, ...)`.

    Our keyword ↔ Flux's (FluxParams): hidden_size ↔ hidden_size, num_heads ↔ num_heads, mlp_ratio ↔ mlp_ratio,
    depth_double ↔ depth, depth_single ↔ depth_single_blocks, axes_dim ↔ axes_dim (Flux has 3 axes (index, h, w),
    we have (h, w)), theta ↔ theta, in_channels·patch_size² ↔ in_channels (Flux packs 2×2 patches outside the model),
    qkv_bias is always True. Flux's txt_in / vector_in (T5 / CLIP → D) and guidance_in have no counterpart: our user
    encoder already returns width-D tokens and the pooled vector, and CFG is done by the sampler.
    Condition tokens get no rotation (they all sit at position (0, 0), as Flux's text ids are zero).
    """

    def __init__(self, config: MMDiTConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("pass either a config or keyword arguments, not both")
        self.config = c = config or MMDiTConfig(**kwargs)
        grid = c.input_size // c.patch_size
        self.img_in = nn.Linear(c.patch_size * c.patch_size * c.in_channels, c.hidden_size)  # patch embedding
        self.time_in = TimestepEmbedding(256, c.hidden_size)
        self.y_embedder = ConditionEncoder(c.num_classes, c.hidden_size, c.cond_type, c.num_cond_tokens,
                                           c.class_dropout_prob, c.text_encoder)
        rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # (grid, grid) each
        positions = torch.cat([torch.zeros(c.num_txt_tokens, 2, dtype=torch.long),  # condition tokens: (0, 0)
                               torch.stack([rows.flatten(), cols.flatten()], dim=1)])  # (K + N, 2), image row-major
        angles = rope_angles(positions, c.axes_dim, c.theta)  # (K + N, d/2)
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)  # (K + N, d/2)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)  # (K + N, d/2)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio,
                                                             c.reference_attention) for _ in range(c.depth_double))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio,
                                                             c.reference_attention) for _ in range(c.depth_single))
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.in_channels)
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MMDiT":
        if name not in PRESETS:
            raise ValueError(f"unknown MMDiT preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(MMDiTConfig(**{**PRESETS[name], **overrides}))

    def initialize_weights(self) -> None:
        """All init rules in one place: DiT's (Peebles & Xie 2023), with adaLN-Zero for every modulation."""
        for m in self.modules():  # Transformer linears (patch embedding included): Xavier-uniform, zero bias
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.RMSNorm):  # QK-RMSNorm scales start at 1 (plain RMS normalisation)
                nn.init.ones_(m.weight)
        for p in self.y_embedder.parameters():  # user encoder: N(0, 0.02²), and the timestep MLP's weights below
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.time_in.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_in.linear_2.weight, std=0.02)
        modulations = [b.img_mod for b in self.double_blocks] + [b.txt_mod for b in self.double_blocks] + \
            [b.modulation for b in self.single_blocks] + [self.final_layer.adaLN_modulation]
        for mod in modulations:  # adaLN-Zero: gates are 0, so every block starts as the identity
            nn.init.zeros_(mod[-1].weight)
            nn.init.zeros_(mod[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)  # and the output starts at exactly zero
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c, p = self.config, self.config.patch_size
        if x.shape[-1] != c.input_size or x.shape[-2] != c.input_size or x.shape[1] != c.in_channels:
            raise ValueError(f"MMDiT expects latents (B, {c.in_channels}, {c.input_size}, {c.input_size}), "
                             f"got {tuple(x.shape)}; check the autoencoder and input_size")
        img = self.img_in(rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p))  # (B, N, D)
        y_vec, txt = self.y_embedder(y)  # (B, D) pooled, (B, K, D) tokens
        vec = self.time_in(t) + y_vec  # (B, D): drives every adaLN
        cos, sin = self.rope_cos, self.rope_sin  # (K + N, d/2)
        ckpt = c.gradient_checkpointing and self.training
        for block in self.double_blocks:
            img, txt = checkpointed(block, img, txt, vec, cos, sin, enabled=ckpt)  # (B, N, D), (B, K, D)
        h = torch.cat([txt, img], dim=1)  # (B, K + N, D)
        for block in self.single_blocks:
            h = checkpointed(block, h, vec, cos, sin, enabled=ckpt)  # (B, K + N, D)
        img = self.final_layer(h[:, txt.shape[1]:], vec)  # (B, N, p·p·C)
        grid = c.input_size // p
        return rearrange(img, "b (h w) (p q c) -> b c (h p) (w q)", h=grid, w=grid, p=p, q=p)  # (B, C, H, W)

    def summary(self) -> str:
        c = self.config
        n = sum(q.numel() for q in self.parameters())
        tokens = (c.input_size // c.patch_size) ** 2
        return (f"MMDiT: {n:,} trainable parameters; {c.depth_double} double + {c.depth_single} single blocks, "
                f"width {c.hidden_size}, {c.num_heads} heads × {c.hidden_size // c.num_heads} (RoPE h+w "
                f"{c.axes_dim[0]}+{c.axes_dim[1]}, θ {c.theta:g}), patch {c.patch_size} → {tokens} image + "
                f"{c.num_txt_tokens} condition tokens; user encoder {c.cond_type} over {c.num_classes} users + null")
