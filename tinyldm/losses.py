"""Training losses of the first stage: reconstruction, KL, frequency, perceptual and VQ terms.

Leaves first: the single terms, then `AutoencoderLossWeights` and `autoencoder_loss`, their weighted sum.
Every term returns a 0-dim tensor. Images are in [-1, 1]; shapes use B batch, C channels, H/W spatial.

Notation: x is the input image, x̂ (`x_hat`) the reconstruction, μ (`mean`) and log σ² (`logvar`) the
encoder's diagonal Gaussian posterior q(z|x), z the encoder output of a VQ model, z_q its nearest code,
sg(·) the stop-gradient (`.detach()`), β (`beta`) the commitment weight.
"""

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

REC_KINDS = ("l1", "mse")
FREQ_KINDS = ("real", "logmag")
FREQ_NORMS = ("ortho", "backward")


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean |x − x̂| ("l1") or mean (x − x̂)² ("mse") over every element."""
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    if kind == "mse":
        return F.mse_loss(x_hat, x)
    raise ValueError(f"reconstruction kind {kind!r} is not supported; choose one of {REC_KINDS}")


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)), summed over the latent's (C, H, W) and averaged over the batch.

    Per element, Kingma & Welling 2014, Appendix B:  KL = ½ (μ² + σ² − 1 − log σ²).
    The sum over elements is what `DiagonalGaussian.kl()` returns per sample, shape (B,); this is its batch mean.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)  # (B, C, H, W)
    return kl.flatten(1).sum(dim=1).mean()


def frequency_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "real", norm: str = "ortho") -> torch.Tensor:
    """Distance between the 2-D spectra of x and x̂, taken over the last two dims (H, W).

    F(x) = fft2(x, norm). "ortho" (our default) scales by 1/√(H·W), so by Parseval the loss lives on the same
    scale as a pixel MSE at every image size. "backward" is torch's default, unnormalised transform, which
    the seed used: its values grow like H·W (×4096 at 64×64, ×65536 at 256×256), so with the seed's weight 0.05
    the frequency term outweighs the reconstruction term ~100-fold; pass norm="backward" to reproduce it.
    A constant offset c on an H×W image moves only the DC coefficient, by c·H·W ("backward") or c·√(H·W).
    - "real" (the seed's loss): mean over (B, C, H, W) of (Re F(x) − Re F(x̂))². It ignores the imaginary
      parts, i.e. the odd (sine) components of the error; kept because it is what the seed trained with.
    - "logmag": mean of (log(1 + |F(x)|) − log(1 + |F(x̂)|))². Phase-blind, and the log keeps the large
      low-frequency coefficients from drowning the high ones.
    Computed in float32 (torch's FFT does not take bf16, as under autocast).
    """
    if norm not in FREQ_NORMS:
        raise ValueError(f"frequency norm {norm!r} is not supported; choose one of {FREQ_NORMS}")
    X, X_hat = torch.fft.fft2(x.float(), norm=norm), torch.fft.fft2(x_hat.float(), norm=norm)  # (B, C, H, W) complex
    if kind == "real":
        return F.mse_loss(X_hat.real, X.real)
    if kind == "logmag":
        return F.mse_loss(torch.log1p(X_hat.abs()), torch.log1p(X.abs()))
    raise ValueError(f"frequency kind {kind!r} is not supported; choose one of {FREQ_KINDS}")


def load_perceptual_loss(device: torch.device | str = "cpu", net: str = "vgg") -> nn.Module | None:
    """LPIPS (Zhang et al. 2018) as a frozen module in eval mode, or None when it cannot be had offline.

    Needs the optional `lpips` package and its backbone's ImageNet weights, which torchvision downloads on
    first use. Either missing → one log line saying how to enable it, and None; this never raises.
    The module expects images in [-1, 1] with 3 channels (see `perceptual_loss`).
    """
    try:
        import lpips
    except ImportError:
        log.warning(
            'perceptual loss off: the lpips package is not installed; enable it with pip install -e ".[perceptual]" '
            "(its backbone weights are downloaded on first use)"
        )
        return None
    try:
        module = lpips.LPIPS(net=net, verbose=False)
    except Exception as err:  # no internet, a broken cache, a bad hash: any failure only switches the term off
        log.warning(
            f"perceptual loss off: lpips could not load its {net} backbone weights ({type(err).__name__}: {err}); "
            "they need a one-time download from the internet, or a copy in the torch hub cache"
        )
        return None
    module = module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def perceptual_loss(module: nn.Module, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Batch mean of LPIPS(x, x̂); single-channel images are repeated to the 3 channels LPIPS was trained on."""
    if x.shape[1] == 1:
        x, x_hat = x.expand(-1, 3, -1, -1), x_hat.expand(-1, 3, -1, -1)  # (B, 3, H, W)
    if x.shape[1] != 3:
        raise ValueError(f"perceptual loss needs 1 or 3 image channels, got {x.shape[1]}; set perceptual weight to 0")
    return module(x_hat, x).mean()  # LPIPS returns (B, 1, 1, 1)


def commitment_loss(z: torch.Tensor, z_q: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """β ‖sg(z_q) − z‖²: pulls the encoder output z toward its (fixed) code. Mean over elements."""
    return beta * F.mse_loss(z, z_q.detach())


def codebook_loss(z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """‖z_q − sg(z)‖²: pulls the chosen codes toward the (fixed) encoder outputs. Mean over elements."""
    return F.mse_loss(z_q, z.detach())


def vq_loss(z: torch.Tensor, z_q: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """VQ-VAE loss without its reconstruction term, van den Oord et al. 2017, Eq. 3 (means over elements).

    L = ‖z_q − sg(z)‖² + β ‖sg(z_q) − z‖²,  so ∂L/∂z = 2β (z − z_q) / numel.
    β multiplies the *encoder-side* (commitment) term. taming-transformers' VectorQuantizer once put β on the
    codebook term instead (the two sg(·) swapped); with β = 0.25 that moves the codes 4× slower than the paper.
    """
    return codebook_loss(z, z_q) + commitment_loss(z, z_q, beta)


@dataclass
class AutoencoderLossWeights:
    """Weights of the terms of `autoencoder_loss`; the defaults are the seed's."""

    rec: float = 1.0  # reconstruction, L1 or MSE per `rec_kind`
    kl: float = 1e-6  # KL of the posterior to N(0, I) (AutoencoderKL only)
    perceptual: float = 0.1  # LPIPS, used only when a perceptual module is passed
    freq: float = 0.05  # FFT frequency loss per `freq_kind`
    vq: float = 1.0  # VQ codebook + commitment loss (VQModel only)
    rec_kind: str = "l1"  # "l1" or "mse"
    freq_kind: str = "real"  # "real" (the seed's) or "logmag"
    freq_norm: str = "ortho"  # FFT normalisation: "ortho" (size-independent) or "backward" (the seed's, unnormalised)

    def __post_init__(self):
        for name in ("rec", "kl", "perceptual", "freq", "vq"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name}={getattr(self, name)} is negative; use 0 to switch it off")
        if self.rec_kind not in REC_KINDS:
            raise ValueError(f"rec_kind {self.rec_kind!r} is not supported; choose one of {REC_KINDS}")
        if self.freq_norm not in FREQ_NORMS:
            raise ValueError(f"freq_norm {self.freq_norm!r} is not supported; choose one of {FREQ_NORMS}")
        if self.freq_kind not in FREQ_KINDS:
            raise ValueError(f"freq_kind {self.freq_kind!r} is not supported; choose one of {FREQ_KINDS}")


def autoencoder_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    weights: AutoencoderLossWeights,
    *,
    posterior_mean: torch.Tensor | None = None,
    posterior_logvar: torch.Tensor | None = None,
    vq_loss: torch.Tensor | None = None,
    perceptual: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted first-stage loss: w_rec·L_rec + w_kl·L_KL + w_perceptual·LPIPS + w_freq·L_freq + w_vq·L_VQ.

    Terms whose inputs are absent are skipped and not logged: KL without a posterior, VQ without `vq_loss`,
    perceptual without a module. Returns (total, terms), where terms maps "rec", "kl", "perceptual", "freq",
    "vq" to the *unweighted* value of each term computed and "total" to the weighted sum, all detached.
    """
    if (posterior_mean is None) != (posterior_logvar is None):
        raise ValueError("pass both posterior_mean and posterior_logvar, or neither")
    terms = {
        "rec": (weights.rec, reconstruction_loss(x, x_hat, weights.rec_kind)),
        "freq": (weights.freq, frequency_loss(x, x_hat, weights.freq_kind, weights.freq_norm)),
    }
    if posterior_mean is not None:
        terms["kl"] = (weights.kl, kl_loss(posterior_mean, posterior_logvar))
    if perceptual is not None:
        terms["perceptual"] = (weights.perceptual, perceptual_loss(perceptual, x, x_hat))
    if vq_loss is not None:
        terms["vq"] = (weights.vq, vq_loss)
    total = sum(w * value for w, value in terms.values())
    logged = {name: value.detach() for name, (_, value) in terms.items()}
    logged["total"] = total.detach()
    return total, logged
