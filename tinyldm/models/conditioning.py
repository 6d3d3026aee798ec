"""User-id encoders: the condition every backbone sees, with a null id for classifier-free guidance.

Ids are 0 … num_classes − 1 for the users, and `num_classes` itself is the null ("no user") id. Condition
dropout (Ho & Salimans 2022) replaces ids by the null id with probability p per sample, in training mode only,
so one network learns both ε(x_t, t, y) and ε(x_t, t, ∅).

Four encoders, each returning a vector (B, D) (added to the time embedding, or fed to adaLN) and a token
sequence (B, K, D) (the keys/values of cross-attention):
  embedding    nn.Embedding(num_classes + 1, D): one learned vector per id; tokens = that vector (K = 1)
  onehot_mlp   one_hot(y) → Linear → SiLU → Linear: the seed's "one-hot + MLP"; tokens = the vector (K = 1)
  tokens       K learned tokens per id (B, K, D); vector = their mean
  text         a caption's token ids y (B, L) → a CLIP text transformer (clip_text.py) → its hidden states, each
               projected to D, are the tokens (K = L), and its pooled output, projected, the vector (as in SD 3).
               The null condition is the empty caption; the caller drops captions (train_ldm.py), not the encoder.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tinyldm.models.clip_text import CLIPTextConfig, CLIPTextModel

COND_TYPES = ("embedding", "onehot_mlp", "tokens", "text")


def check_ids(y: torch.Tensor, num_classes: int) -> None:
    """One clear error for ids outside [0, num_classes] (num_classes is the null id)."""
    if y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"user ids must be an integer tensor, got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > num_classes):
        bad = y[(y < 0) | (y > num_classes)][0].item()
        raise ValueError(f"user id {bad} is outside [0, {num_classes}] (0…{num_classes - 1} are users, "
                         f"{num_classes} is the null id); check --users / the data's user folders")


def check_caption_ids(y: torch.Tensor, config: CLIPTextConfig) -> torch.Tensor:
    """One clear error for caption token ids that the text model cannot read."""
    if y.dim() != 2 or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"a text-conditioned model takes caption token ids (B, L) of integers, got {y.dtype} of "
                         f"shape {tuple(y.shape)}; tokenize the captions with the run's tokenizer/")
    if y.shape[1] > config.max_position_embeddings or (y.numel() and not 0 <= int(y.min()) <= int(y.max())
                                                          < config.vocab_size):
        raise ValueError(f"caption ids of length {y.shape[1]} in [{int(y.min())}, {int(y.max())}] do not fit the text "
                         f"model ({config.max_position_embeddings} positions, {config.vocab_size} tokens); use the "
                         "run's own tokenizer/")
    return y


def drop_captions(ids: torch.Tensor, null_ids: torch.Tensor, p: float, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Replace each caption (B, L) by the empty caption's ids (L,) with probability p (condition dropout for CFG)."""
    if p <= 0:
        return ids
    drop = torch.rand(ids.shape[:1], generator=generator, device=ids.device) < p  # (B,) bool
    return torch.where(drop[:, None], null_ids.to(ids), ids)


def drop_ids(y: torch.Tensor, num_classes: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each id by the null id with probability p (condition dropout for CFG)."""
    if p <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p  # (B,) bool
    return torch.where(drop, torch.full_like(y, num_classes), y)


class ConditionEncoder(nn.Module):
    """User id (B,) or caption ids (B, L) → (vector (B, D), tokens (B, K, D)); drops user ids to the null id in
    training mode. `text_encoder`: the CLIPTextConfig fields of the text transformer, for cond_type="text"."""

    def __init__(self, num_classes: int, dim: int, cond_type: str = "embedding", num_tokens: int = 4,
                 dropout_prob: float = 0.1, text_encoder: dict | None = None):
        super().__init__()
        if cond_type not in COND_TYPES:
            raise ValueError(f"cond_type {cond_type!r} is not supported; choose one of {COND_TYPES}")
        self.num_classes, self.cond_type, self.dropout_prob = num_classes, cond_type, dropout_prob
        if cond_type == "text":
            if not text_encoder:
                raise ValueError("cond_type 'text' needs text_encoder: the CLIPTextConfig fields of its text model")
            if dropout_prob:
                raise ValueError(f"class_dropout_prob {dropout_prob} with cond_type 'text': the caller replaces "
                                 "captions by the empty caption (train_ldm.py does); set it to 0")
            self.text_model = CLIPTextModel(CLIPTextConfig(**text_encoder))
            width = self.text_model.config.hidden_size
            self.context_proj = nn.Linear(width, dim)  # each hidden state → a token of width D
            self.pooled_proj = nn.Linear(width, dim)  # the pooled output → the vector
            return
        if num_classes < 1:
            raise ValueError(f"num_classes is {num_classes}; it must be the number of users (≥ 1)")
        if not 0.0 <= dropout_prob < 1.0:
            raise ValueError(f"condition dropout {dropout_prob} must lie in [0, 1); 0.1 is usual")
        n = num_classes + 1  # users + the null id
        if cond_type == "embedding":
            self.embedding_table = nn.Embedding(n, dim)
        elif cond_type == "onehot_mlp":
            self.mlp = nn.Sequential(nn.Linear(n, dim), nn.SiLU(), nn.Linear(dim, dim))
        else:
            self.tokens = nn.Parameter(torch.randn(n, num_tokens, dim) * 0.02)  # (N + 1, K, D)

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cond_type == "text":
            hidden, pooled = self.text_model(check_caption_ids(y, self.text_model.config))  # (B, L, W), (B, W)
            return self.pooled_proj(pooled), self.context_proj(hidden)  # (B, D), (B, L, D)
        check_ids(y, self.num_classes)
        if self.training:
            y = drop_ids(y, self.num_classes, self.dropout_prob, generator)
        if self.cond_type == "embedding":
            vector = self.embedding_table(y)  # (B, D)
            return vector, vector[:, None]  # (B, D), (B, 1, D)
        if self.cond_type == "onehot_mlp":
            one_hot = F.one_hot(y, self.num_classes + 1).to(self.mlp[0].weight.dtype)  # (B, N + 1)
            vector = self.mlp(one_hot)  # (B, D)
            return vector, vector[:, None]
        tokens = self.tokens[y]  # (B, K, D)
        return tokens.mean(dim=1), tokens
