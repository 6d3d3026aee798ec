"""CLIPTextModel: the text tower of CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision", Sec. 2.4), the text encoder of Stable Diffusion 1.x and 2.x.

input_ids (B, T) ─token embedding + learned position embedding─► (B, T, D)
  ─N × pre-LN block (causal self-attention, MLP)─► final LayerNorm ─► last_hidden_state (B, T, D)
  ─the row at the end-of-text token─► pooled (B, D)

Causal: position t attends to positions ≤ t only (CLIP's text transformer is a masked, GPT-like one), so a token's
state never depends on what follows it. SD's UNet cross-attends to all of last_hidden_state; `pooled` is the
sentence vector CLIP's projection head (CLIPTextModelWithProjection, not built here) would map to the joint space.
Module names follow tinyldm's vocabulary (to_q, norm1, …); interop/transformers_clip.py maps them onto the names of
transformers' `text_encoder/` folders. Leaves first: quick_gelu → CausalSelfAttention → CLIPLayer → CLIPTextConfig
→ PRESETS → CLIPTextModel.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tinyldm.interop import transformers_clip
from tinyldm.layers import Attention

# eos_token_id 2 marks the configs written before transformers' PR #24773 (SD 1.x's and 2.x's among them), where the
# end-of-text token is found as the largest id in the row (CLIP's tokenizer gives it the last id of the vocabulary).
LEGACY_EOS_ID = 2


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(1.702x), the sigmoid approximation of GELU (Hendrycks & Gimpel 2016, Sec. 2) that OpenAI's CLIP uses."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}  # gelu: exact (erf), OpenCLIP's (SD 2.x)


class CausalSelfAttention(Attention):
    """layers.Attention's projections (biased, as CLIP's) around softmax(QKᵀ/√d + M)V with a (B, 1, T, T) mask M:
    True where query t may attend to key s (s ≤ t, and s not padding). layers.attend takes only a (B, S) key mask,
    so the core is written here; `reference=True` runs the written-out formula instead of SDPA."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(proj(x), "b t (h d) -> b h t d", h=self.heads)
                   for proj in (self.to_q, self.to_k, self.to_v))  # (B, h, T, d) each
        if self.reference:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.dim_head)  # (B, h, T, T)
            out = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v  # (B, h, T, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, d)
        return self.to_out(rearrange(out, "b h t d -> b t (h d)"))  # (B, T, D)


class CLIPLayer(nn.Module):
    """Pre-LN block (GPT-2 style): x += Attn(LN x); x += fc2(act(fc1(LN x)))."""

    def __init__(self, dim: int, heads: int, inner: int, act: str, eps: float, reference_attention: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = CausalSelfAttention(dim, heads=heads, dim_head=dim // heads, qkv_bias=True,
                                        reference=reference_attention)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, inner)
        self.act = ACTIVATIONS[act]
        self.fc2 = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)  # (B, T, D)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))  # (B, T, D)


@dataclass
class CLIPTextConfig:
    vocab_size: int = 49408  # V: token ids 0 … V − 1
    hidden_size: int = 768  # D: token width
    intermediate_size: int = 3072  # MLP width
    num_hidden_layers: int = 12  # N: transformer blocks
    num_attention_heads: int = 12  # heads (head width D / heads)
    max_position_embeddings: int = 77  # longest input: learned positions 0 … 76
    layer_norm_eps: float = 1e-5  # ε of every LayerNorm
    hidden_act: str = "quick_gelu"  # MLP activation: quick_gelu (OpenAI CLIP) | gelu (OpenCLIP, SD 2.x)
    eos_token_id: int = 2  # pooling: 2 (legacy) → the largest id's position, else the first position of this id
    bos_token_id: int = 0  # the tokenizer's start id: kept so config.json round-trips; the model never reads it
    pad_token_id: int = 1  # the tokenizer's padding id: likewise only kept
    reference_attention: bool = False  # written-out softmax(QKᵀ/√d + M)V instead of SDPA (tests, reading); slower

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be at least 1")
        if self.hidden_size % self.num_attention_heads:
            fits = self.hidden_size // self.num_attention_heads * self.num_attention_heads
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}; choose e.g. hidden_size {fits or self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not implemented by tinyldm's CLIPTextModel; it "
                             f"implements {sorted(ACTIVATIONS)}")
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(f"eos_token_id {self.eos_token_id} is not a token id (0 … {self.vocab_size - 1}); set "
                             "it to your tokenizer's end-of-text id")


PRESETS = {
    "sd1": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2),
    # OpenCLIP ViT-H/14's text tower, 24 blocks of which SD 2.x's text_encoder keeps 23 (it reads the penultimate).
    "sd2": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", eos_token_id=2),
    # Our own captions: set vocab_size and eos_token_id from the tokenizer (an eos id of 2 selects the legacy rule).
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                 max_position_embeddings=32, hidden_act="gelu"),
}


class CLIPTextModel(nn.Module):
    """CLIP's text transformer: `model(input_ids) → (last_hidden_state (B, T, D), pooled (B, D))`. Build with
    `CLIPTextModel(CLIPTextConfig(...))`, `CLIPTextModel.from_preset("sd1")`, or load SD's text encoder with
    `CLIPTextModel.from_pretrained(pipeline_folder, subfolder="text_encoder")`."""

    def __init__(self, config: CLIPTextConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("pass either a config or keyword arguments, not both")
        self.config = c = config or CLIPTextConfig(**kwargs)
        self.token_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embedding = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.layers = nn.ModuleList(
            CLIPLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps,
                      c.reference_attention) for _ in range(c.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CLIPTextModel":
        if name not in PRESETS:
            raise ValueError(f"unknown CLIPTextModel preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(CLIPTextConfig(**{**PRESETS[name], **overrides}))

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **overrides) -> "CLIPTextModel":
        """A transformers CLIPTextModel folder (config.json + model.safetensors) → CLIPTextModel with its weights,
        in eval mode; keyword arguments override config values (tinyldm/interop/transformers_clip.py)."""
        return transformers_clip.from_pretrained(cls, CLIPTextConfig, path, subfolder, **overrides)

    def save_pretrained(self, out_dir) -> None:
        """Write a folder that transformers' CLIPTextModel.from_pretrained reads (SD's text_encoder/ layout)."""
        transformers_clip.save_pretrained(self, out_dir)

    def initialize_weights(self) -> None:
        """All init rules in one place: those of OpenAI's released CLIP code (model.py, initialize_parameters)."""
        D, N = self.config.hidden_size, self.config.num_hidden_layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)
        for layer in self.layers:
            for proj in (layer.attn.to_q, layer.attn.to_k, layer.attn.to_v):
                nn.init.normal_(proj.weight, std=D ** -0.5)
            nn.init.normal_(layer.attn.to_out.weight, std=D ** -0.5 * (2 * N) ** -0.5)  # residual branches: 1/√(2N)
            nn.init.normal_(layer.fc1.weight, std=(2 * D) ** -0.5)
            nn.init.normal_(layer.fc2.weight, std=D ** -0.5 * (2 * N) ** -0.5)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)  # LayerNorms keep PyTorch's own init: weight 1, bias 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) long; attention_mask (B, T), optional: 1 for tokens, 0 for padding keys (SD pipelines
        pass none: with the causal mask, padding after the end-of-text token never reaches the positions up to it)."""
        c, (B, T) = self.config, input_ids.shape
        if T > c.max_position_embeddings:
            raise ValueError(f"input_ids has {T} tokens; this CLIPTextModel takes at most {c.max_position_embeddings} "
                             "(max_position_embeddings): truncate in the tokenizer")
        x = self.token_embedding(input_ids) + self.position_embedding.weight[:T]  # (B, T, D)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]  # (1, 1, T, T): key s ≤ query t
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T): and key s is no padding
        for layer in self.layers:
            x = layer(x, mask)  # (B, T, D)
        h = self.final_layer_norm(x)  # (B, T, D)

        # Pool at the end-of-text token: transformers' rule, kept so SD's configs give the same vectors.
        if c.eos_token_id == LEGACY_EOS_ID:
            eos = input_ids.argmax(dim=-1)  # (B,): the largest id, the first such position
        else:
            is_eos = input_ids == c.eos_token_id  # (B, T)
            if not is_eos.any(dim=-1).all():  # transformers would silently pool position 0
                raise ValueError(f"a row of input_ids has no end-of-text token {c.eos_token_id}, so it has no pooled "
                                 "vector; let the tokenizer append it (and truncate before it)")
            eos = is_eos.int().argmax(dim=-1)  # (B,): the first end-of-text position
        pooled = h[torch.arange(B, device=h.device), eos]  # (B, D)
        return h, pooled
