"""VQModel: an autoencoder with a discrete latent space (VQ-VAE, van den Oord et al. 2017; VQGAN, Esser et al. 2021).

image x (B, 3, H, W) ─Encoder─► z_e (B, c, H/f, W/f) ─quant_conv─► z (B, D, h, w) ─VectorQuantizer─► z_q
  ─post_quant_conv─► (B, c, h, w) ─Decoder─► x̂,     f = 2^(len(block_out_channels) − 1).

Notation: e_k (`embedding.weight[k]`) the K codes of width D, z a vector of the encoder output, z_q = e_k* its
nearest code, sg(·) the stop-gradient, β the commitment weight, γ the EMA decay, N_k / m_k the EMA cluster size
and cluster sum. Leaves first: VectorQuantizer → VQModelConfig → PRESETS → VQModel.
"""

import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tinyldm.interop import pretrained
from tinyldm.losses import commitment_loss, vq_loss
from tinyldm.models.autoencoder_kl import Decoder, Encoder, check_layout


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient, van den Oord et al. 2017, Sec. 3.1.

    Options: EMA codebook updates (ibid., Appendix A.1) instead of the codebook loss; restart of codes unused
    for `dead_code_threshold` training steps from random encodings of the batch; l2-normalised codes and
    encodings, so that the nearest code is the most cosine-similar one (ViT-VQGAN, Yu et al. 2022, Sec. 3.2).
    EMA updates and restarts happen only in training mode, after the lookup, so they affect the next step.
    Under DDP each rank updates from its own batch; DDP's default buffer broadcast then keeps rank 0's codebook.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        beta: float = 0.25,
        use_ema: bool = False,
        ema_decay: float = 0.99,
        restart_dead_codes: bool = True,
        dead_code_threshold: int = 100,
        l2_normalize: bool = False,
        ema_eps: float = 1e-5,
    ):
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(f"codebook {num_embeddings}×{embedding_dim} is empty; use at least 1 code of width 1")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay {ema_decay} must lie in [0, 1); 0.99 is usual")
        if dead_code_threshold < 1:
            raise ValueError(f"dead_code_threshold {dead_code_threshold} must be ≥ 1 training step; 100 is usual")
        self.K, self.D = num_embeddings, embedding_dim
        self.beta, self.use_ema, self.gamma, self.eps = beta, use_ema, ema_decay, ema_eps
        self.restart_dead_codes, self.dead_code_threshold = restart_dead_codes, dead_code_threshold
        self.l2_normalize = l2_normalize
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)  # codes e_k: (K, D)
        if use_ema:  # the codebook follows the EMA, not the gradient
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_cluster_size", torch.ones(num_embeddings))  # N_k: (K,)
            self.register_buffer("ema_embed_sum", torch.zeros(num_embeddings, embedding_dim))  # m_k: (K, D)
        if restart_dead_codes:
            self.register_buffer("steps_unused", torch.zeros(num_embeddings, dtype=torch.long))  # (K,)
        self.initialize_weights()

    def initialize_weights(self):
        # Codes start near 0, uniform in ±1/K (as in VQGAN); dead-code restarts move them onto the data.
        nn.init.uniform_(self.embedding.weight, -1.0 / self.K, 1.0 / self.K)
        if self.use_ema:  # N_k = 1, m_k = e_k, so that e_k = m_k / N_k holds from the start
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(self.embedding.weight.detach())
        if self.restart_dead_codes:
            self.steps_unused.zero_()

    def codebook(self) -> torch.Tensor:
        """The codes used for lookup, (K, D): e_k, or e_k / ‖e_k‖ when l2-normalised."""
        e = self.embedding.weight
        return F.normalize(e, dim=1) if self.l2_normalize else e

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, H, W) → codes (B, D, H, W)."""
        e = self.embedding(indices)  # (B, H, W, D)
        if self.l2_normalize:
            e = F.normalize(e, dim=-1)
        return rearrange(e, "b h w d -> b d h w")

    @torch.no_grad()
    def nearest_code(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, H, W) → indices (B, H, W) of the nearest codes; no gradient, no codebook update.

        k* = argmin_k ‖z − e_k‖² = argmin_k (‖z‖² − 2 z·e_k + ‖e_k‖²), in float32 even under autocast
        (bf16 rounding would pick wrong codes).
        """
        B, D, H, W = z.shape
        if D != self.D:
            raise ValueError(f"input has {D} channels but the codebook width is {self.D}; set vq_embed_dim to {D}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = rearrange(z.float(), "b d h w -> (b h w) d")  # (N, D), N = B·H·W
            if self.l2_normalize:
                z_flat = F.normalize(z_flat, dim=1)
            e = self.codebook().float()  # (K, D)
            dist = z_flat.pow(2).sum(1, keepdim=True) - 2 * z_flat @ e.T + e.pow(2).sum(1)  # (N, K)
        return rearrange(dist.argmin(dim=1), "(b h w) -> b h w", b=B, h=H, w=W)

    def forward(
        self, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z (B, D, H, W) → (z_q straight-through (B, D, H, W), indices (B, H, W), loss, stats).

        `generator` (on z's device) drives the choice of batch encodings for dead-code restarts.
        stats: "perplexity" = exp(−Σ_k p_k log p_k) of the batch's code usage p_k, "usage" = fraction of codes used.
        """
        in_dtype = z.dtype
        # 1. Nearest code (no gradient flows through the argmin); the rest in float32 too.
        indices = self.nearest_code(z)  # (B, H, W)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=1) if self.l2_normalize else z.float()  # (B, D, H, W)
            z_q = self.lookup(indices).float()  # (B, D, H, W), differentiable w.r.t. the codes

            # 2. Loss (Eq. 3): codebook + commitment terms, or only commitment when the EMA moves the codes.
            loss = commitment_loss(z, z_q, self.beta) if self.use_ema else vq_loss(z, z_q, self.beta)

            # 3. Straight-through estimator: the forward pass uses z_q, the backward pass copies ∂L/∂z_q to z.
            z_q_st = z + (z_q - z).detach()  # (B, D, H, W)

            # 4. Usage statistics, then the training-time codebook updates.
            idx_flat = indices.flatten()  # (N,), N = B·H·W
            counts = torch.bincount(idx_flat, minlength=self.K).float()  # n_k: (K,)
            if self.training:
                with torch.no_grad():
                    z_flat = rearrange(z, "b d h w -> (b h w) d")  # (N, D)
                    if self.use_ema:
                        self._ema_update(z_flat, idx_flat, counts)
                    if self.restart_dead_codes:
                        self._restart_dead_codes(z_flat, counts, generator)
        p = counts / counts.sum()  # (K,)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()  # 0·log 0 = 0
        stats = {"perplexity": entropy.exp().detach(), "usage": (counts > 0).float().mean()}
        return z_q_st.to(in_dtype), indices, loss, stats

    def _ema_update(self, z_flat: torch.Tensor, idx_flat: torch.Tensor, counts: torch.Tensor):
        """van den Oord et al. 2017, Appendix A.1, Eqs. 6–8, with Laplace smoothing of the cluster sizes."""
        sums = torch.zeros_like(self.ema_embed_sum).index_add_(0, idx_flat, z_flat)  # Σ_{z→k} z: (K, D)
        self.ema_cluster_size.mul_(self.gamma).add_(counts, alpha=1 - self.gamma)  # N_k ← γ N_k + (1 − γ) n_k
        self.ema_embed_sum.mul_(self.gamma).add_(sums, alpha=1 - self.gamma)  # m_k ← γ m_k + (1 − γ) Σ z
        n = self.ema_cluster_size.sum()
        N_smooth = (self.ema_cluster_size + self.eps) / (n + self.K * self.eps) * n  # (N_k + ε)/(n + Kε)·n
        self.embedding.weight.copy_(self.ema_embed_sum / N_smooth[:, None])  # e_k ← m_k / N_k

    def _restart_dead_codes(self, z_flat: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None):
        """Codes unused for `dead_code_threshold` steps are moved onto random encodings of this batch.

        (An optimiser's moment estimates for a restarted row are kept; they are small for a row without gradient.)
        """
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.steps_unused >= self.dead_code_threshold).nonzero().squeeze(1)  # (n_dead,)
        if dead.numel() == 0:
            return
        pick = torch.randint(z_flat.shape[0], (dead.numel(),), generator=generator, device=z_flat.device)
        self.embedding.weight[dead] = z_flat[pick].to(self.embedding.weight.dtype)
        self.steps_unused[dead] = 0
        if self.use_ema:  # restart the cluster statistics too, so the next EMA step keeps the new code
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = z_flat[pick]


@dataclass
class VQModelConfig:
    """diffusers' VQModel keyword names, plus the VectorQuantizer's options (`beta` … `l2_normalize`)."""

    in_channels: int = 3  # image channels in
    out_channels: int = 3  # image channels out
    down_block_types: list[str] = field(default_factory=lambda: ["DownEncoderBlock2D"] * 4)  # accepted for parity
    up_block_types: list[str] = field(default_factory=lambda: ["UpDecoderBlock2D"] * 4)  # accepted for parity
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])  # width per level
    layers_per_block: int = 2  # ResnetBlocks per encoder level (decoder uses one more)
    act_fn: str = "silu"  # activation everywhere
    latent_channels: int = 3  # c: channels out of the encoder and into the decoder
    sample_size: int = 256  # training image size (pixels); the model itself is fully convolutional
    num_vq_embeddings: int = 256  # K: number of codes
    norm_num_groups: int = 32  # GroupNorm groups; must divide every width
    vq_embed_dim: int | None = None  # D: code width; None → latent_channels
    scaling_factor: float = 1.0  # multiply latents by this for stage 2; train_vae.py measures 1/std(z)
    beta: float = 0.25  # β: weight of the commitment term ‖sg(z_q) − z‖²
    use_ema: bool = False  # move codes by EMA of their clusters instead of the codebook loss
    ema_decay: float = 0.99  # γ of the EMA codebook
    restart_dead_codes: bool = True  # re-initialise long-unused codes from batch encodings
    dead_code_threshold: int = 100  # training steps a code may stay unused before it is restarted
    l2_normalize: bool = False  # cosine-similarity lookup on l2-normalised codes (ViT-VQGAN)
    mid_block_add_attention: bool = True  # self-attention in the encoder's and decoder's mid blocks

    def __post_init__(self):
        check_layout(self)
        if self.vq_embed_dim is None:
            self.vq_embed_dim = self.latent_channels
        for name in ("latent_channels", "num_vq_embeddings", "vq_embed_dim", "dead_code_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be ≥ 1")
        if self.beta < 0:
            raise ValueError(f"beta {self.beta} is negative; 0.25 is the paper's value")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay {self.ema_decay} must lie in [0, 1); 0.99 is usual")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


PRESETS = {
    # 64×64 → 16×16×3 (f=4), 256 codes: what the tests and CPU demos train.
    "tiny": dict(block_out_channels=[32, 64, 64], layers_per_block=1, norm_num_groups=16, sample_size=64,
                 latent_channels=3, num_vq_embeddings=256,
                 down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3),
    # 256×256 → 32×32×4 (f=8): the SD VAE's encoder/decoder with a 16384-code book of width 4 (|Z| and c of
    # LDM's VQ-f8, Rombach et al. 2022, Tab. 8), so its latents have the KL seed's shape.
    "seed": dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, sample_size=256,
                 latent_channels=4, num_vq_embeddings=16384),
}


class VQModel(nn.Module):
    """Encoder → quant_conv → VectorQuantizer → post_quant_conv → Decoder.

    Build with a config, a preset name, or the diffusers keyword names verbatim:
    `VQModel(VQModelConfig(...))`, `VQModel.from_preset("tiny")`, `VQModel(latent_channels=3, ...)`.
    Encoder, decoder and the 1×1 convs keep PyTorch's default init, as in AutoencoderKL; the codebook's is in
    `VectorQuantizer.initialize_weights`.
    """

    def __init__(self, config: VQModelConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("pass either a config or keyword arguments, not both")
        self.config = config or VQModelConfig(**kwargs)
        c = self.config
        self.encoder = Encoder(c.in_channels, c.latent_channels, c.block_out_channels, c.layers_per_block,
                               c.norm_num_groups, double_z=False, act_fn=c.act_fn,
                               mid_block_add_attention=c.mid_block_add_attention)
        self.quant_conv = nn.Conv2d(c.latent_channels, c.vq_embed_dim, 1)
        self.quantize = VectorQuantizer(c.num_vq_embeddings, c.vq_embed_dim, beta=c.beta, use_ema=c.use_ema,
                                        ema_decay=c.ema_decay, restart_dead_codes=c.restart_dead_codes,
                                        dead_code_threshold=c.dead_code_threshold, l2_normalize=c.l2_normalize)
        self.post_quant_conv = nn.Conv2d(c.vq_embed_dim, c.latent_channels, 1)
        self.decoder = Decoder(c.latent_channels, c.out_channels, c.block_out_channels, c.layers_per_block,
                               c.norm_num_groups, act_fn=c.act_fn, mid_block_add_attention=c.mid_block_add_attention)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VQModel":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(VQModelConfig(**{**PRESETS[name], **overrides}))

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **overrides) -> "VQModel":
        """A diffusers VQModel folder (a pipeline folder with subfolder="vqvae") → VQModel with its weights, in
        eval mode; keyword arguments override config values (tinyldm/interop/pretrained.py)."""
        return pretrained.from_pretrained(cls, VQModelConfig, path, subfolder, **overrides)

    def save_pretrained(self, out_dir) -> None:
        """Write a diffusers model folder (config.json + diffusion_pytorch_model.safetensors)."""
        pretrained.save_pretrained(self, out_dir)

    def _quantize(self, x: torch.Tensor, generator: torch.Generator | None):
        z = self.quant_conv(self.encoder(x))  # (B, D, H/f, W/f)
        return self.quantize(z, generator)  # z_q (B, D, h, w), indices (B, h, w), loss, stats

    def encode(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, in, H, W) → (z_q (B, D, H/f, W/f), indices (B, H/f, W/f), vq loss)."""
        z_q, indices, loss, _ = self._quantize(x, generator)
        return z_q, indices, loss

    def decode(self, z: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """z (B, D, h, w) → x̂ (B, out, h·f, w·f). `quantize=True` first snaps z to its nearest codes, as LDM
        does when decoding a diffusion sample (which is continuous) with a VQ first stage."""
        if quantize:
            z = self.quantize.lookup(self.quantize.nearest_code(z))  # (B, D, h, w)
        return self.decoder(self.post_quant_conv(z))

    # The latent-diffusion side, the same two methods as AutoencoderKL's: stage 2 and sampling call only these.
    def latent_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, in, H, W) → (z, σ = 0), z (B, D, H/f, W/f) the continuous pre-quantisation encoding: the
        diffusion model works on continuous latents and `decode_latent` quantises (Rombach et al. 2022, Sec. 3)."""
        z = self.quant_conv(self.encoder(x))  # (B, D, h, w)
        return z, torch.zeros_like(z)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """A continuous latent (B, D, h, w), e.g. a diffusion sample → image: snapped to its nearest codes, decoded."""
        return self.decode(z, quantize=True)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) → x̂ (B, out, h·f, w·f)."""
        return self.decode(self.quantize.lookup(indices))

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x → (x̂, vq loss, stats with "perplexity" and "usage" of the codebook in this batch)."""
        z_q, _, loss, stats = self._quantize(x, generator)
        return self.decode(z_q), loss, stats

    def summary(self) -> str:
        c = self.config
        n = sum(p.numel() for p in self.parameters())
        h = c.sample_size // c.downsample_factor
        return (f"VQModel: {n:,} parameters; widths {c.block_out_channels} × {c.layers_per_block} ResnetBlocks/level, "
                f"f={c.downsample_factor}: {c.in_channels}×{c.sample_size}×{c.sample_size} → {h}×{h} indices into "
                f"{c.num_vq_embeddings} codes of width {c.vq_embed_dim}; config {json.dumps(asdict(c))}")
