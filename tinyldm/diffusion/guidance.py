"""Classifier-free guidance (Ho & Salimans 2022) with guidance rescale (Lin et al. 2023), around any network.

Guidance is applied to the raw network output (ε, v, x0 or flow velocity) on every channel. For each of the four
it is the same as guiding x̂0, because x̂0 is affine in the output with coefficients that do not depend on the
condition; the rescale, which divides standard deviations, is applied to the raw output as Lin et al. do.
"""

import torch


def classifier_free_guidance(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """ε̂ = ε̂_u + w (ε̂_c − ε̂_u), w = cfg_scale: 0 unconditional, 1 conditional, > 1 guided (Ho & Salimans 2022,
    Eq. 6)."""
    return pred_uncond + cfg_scale * (pred_cond - pred_uncond)


def rescale_guidance(pred_cfg: torch.Tensor, pred_cond: torch.Tensor, cfg_rescale: float) -> torch.Tensor:
    """x = φ x_cfg·std(x_c)/std(x_cfg) + (1 − φ) x_cfg, φ = cfg_rescale, std over all non-batch dims
    (Lin et al. 2023, Eq. 15–16)."""
    phi = cfg_rescale
    if phi == 0:
        return pred_cfg
    dims = tuple(range(1, pred_cfg.dim()))
    rescaled = pred_cfg * pred_cond.std(dim=dims, keepdim=True) / pred_cfg.std(dim=dims, keepdim=True)  # Eq. 15
    return phi * rescaled + (1 - phi) * pred_cfg  # Eq. 16


def guided_model(model, cond, null_cond, cfg_scale: float, cfg_rescale: float = 0.0):
    """model(x, t, cond) → a function (x, t) that runs one batched forward of [cond, null] and guides.

    cond is (B, ...); null_cond has the same shape, or batch size 1 and is repeated. cfg_scale and cfg_rescale are
    trusted (a SamplingConfig checked them).
    """
    if cond is None or null_cond is None:
        raise ValueError(f"guidance w = cfg_scale = {cfg_scale:g} needs both cond and null_cond (the null / "
                         "unconditional input); pass both, or cfg_scale=1.0 (SamplingConfig) for no guidance")
    if torch.is_tensor(null_cond) and torch.is_tensor(cond) and null_cond.shape[0] == 1 and cond.shape[0] != 1:
        null_cond = null_cond.expand(cond.shape[0], *null_cond.shape[1:])
    both_cond = torch.cat([cond, null_cond]) if torch.is_tensor(cond) else list(cond) + list(null_cond)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), both_cond).float()  # (2B, ...) one forward; float32 even
        # where the network runs in bf16 (tinyldm.generate), so that the guidance arithmetic is float32
        pred_cond, pred_uncond = out.chunk(2)  # (B, ...) each
        return rescale_guidance(classifier_free_guidance(pred_cond, pred_uncond, cfg_scale), pred_cond, cfg_rescale)

    return guided
