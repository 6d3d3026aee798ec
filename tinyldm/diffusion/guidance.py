"""Classifier-free guidance (Ho & Salimans 2022), autoguidance (Karras et al. 2024) and guidance rescale (Lin et
al. 2023), around any network.

Both kinds of guidance extrapolate from a weaker prediction towards the model's conditional one, D_w = D_weak +
w (D_c − D_weak). Classifier-free guidance takes the same network without the condition as the weaker one: it
pushes each sample towards what makes it *this* user (identity) and, at large w, away from the data's spread.
Autoguidance takes a worse version of the same network, conditioned the same way (here: the run's own EMA weights
early in training, `guide.safetensors`): it pushes away from what a less-trained model still gets wrong, so it
sharpens the images without narrowing them to caricatures. The two combine as a sum of their pushes (`autoguidance`).

Guidance is applied to the raw network output (ε, v, x0 or flow velocity) on every channel. For each of the four
it is the same as guiding x̂0, because x̂0 is affine in the output with coefficients that do not depend on the
condition; the rescale, which divides standard deviations, is applied to the raw output as Lin et al. do.
"""

import torch


def classifier_free_guidance(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """ε̂ = ε̂_u + w (ε̂_c − ε̂_u), w = cfg_scale: 0 unconditional, 1 conditional, > 1 guided (Ho & Salimans 2022,
    Eq. 6)."""
    return pred_uncond + cfg_scale * (pred_cond - pred_uncond)


def autoguidance(pred_guided: torch.Tensor, pred_cond: torch.Tensor, pred_guide: torch.Tensor,
                 ag_scale: float) -> torch.Tensor:
    """D + (w_a − 1)(D_c − D_guide), w_a = ag_scale: the push of autoguidance added to a (classifier-free guided)
    prediction D. With D = D_c (no classifier-free guidance) it is Karras et al. 2024 (arXiv 2406.02507), Eq. 1 with
    the guide as D_0: w_a D_c + (1 − w_a) D_guide; w_a = 1 adds nothing."""
    return pred_guided + (ag_scale - 1) * (pred_cond - pred_guide)


def rescale_guidance(pred_cfg: torch.Tensor, pred_cond: torch.Tensor, cfg_rescale: float) -> torch.Tensor:
    """x = φ x_cfg·std(x_c)/std(x_cfg) + (1 − φ) x_cfg, φ = cfg_rescale, std over all non-batch dims
    (Lin et al. 2023, Eq. 15–16)."""
    phi = cfg_rescale
    if phi == 0:
        return pred_cfg
    dims = tuple(range(1, pred_cfg.dim()))
    rescaled = pred_cfg * pred_cond.std(dim=dims, keepdim=True) / pred_cfg.std(dim=dims, keepdim=True)  # Eq. 15
    return phi * rescaled + (1 - phi) * pred_cfg  # Eq. 16


def guided_model(model, cond, null_cond, cfg_scale: float, cfg_rescale: float = 0.0, guide=None,
                 ag_scale: float = 1.0):
    """model(x, t, cond) → a function (x, t) that guides: classifier-free with w = cfg_scale (one batched forward
    of [cond, null]), then autoguidance with w_a = ag_scale (one more forward, guide(x, t, cond)); the rescale
    φ = cfg_rescale last, on the sum.

    cond is (B, ...); null_cond has the same shape, or batch size 1 and is repeated. The scales are trusted (a
    SamplingConfig checked them); w = 1 skips the null forward, w_a = 1 the guide's.
    """
    if cfg_scale != 1.0 and (cond is None or null_cond is None):
        raise ValueError(f"guidance w = cfg_scale = {cfg_scale:g} needs both cond and null_cond (the null / "
                         "unconditional input); pass both, or cfg_scale=1.0 (SamplingConfig) for no guidance")
    if ag_scale != 1.0 and guide is None:
        raise ValueError(f"autoguidance w_a = ag_scale = {ag_scale:g} needs the guide network (a run's "
                         "guide.safetensors: tinyldm.loading.load_guide); pass it, or ag_scale=1.0")
    if cfg_scale != 1.0:
        if torch.is_tensor(null_cond) and torch.is_tensor(cond) and null_cond.shape[0] == 1 and cond.shape[0] != 1:
            null_cond = null_cond.expand(cond.shape[0], *null_cond.shape[1:])
        both_cond = torch.cat([cond, null_cond]) if torch.is_tensor(cond) else list(cond) + list(null_cond)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Every prediction in float32, even where the network runs in bf16 (tinyldm.generate), so that the
        # guidance arithmetic is float32.
        if cfg_scale != 1.0:
            out = model(torch.cat([x, x]), torch.cat([t, t]), both_cond).float()  # (2B, ...) one forward
            pred_cond, pred_uncond = out.chunk(2)  # (B, ...) each
            pred = classifier_free_guidance(pred_cond, pred_uncond, cfg_scale)
        else:
            pred = pred_cond = model(x, t, cond).float()  # (B, ...)
        if ag_scale != 1.0:
            pred = autoguidance(pred, pred_cond, guide(x, t, cond).float(), ag_scale)
        return rescale_guidance(pred, pred_cond, cfg_rescale)

    return guided
