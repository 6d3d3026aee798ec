"""Per-image reconstruction metrics: PSNR and SSIM, for images in [-1, 1] (data range 2)."""

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10·log10(R² / MSE) in dB → (B,). Identical images give +inf."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, channels: int, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()  # (C, 1, k, k)


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Eq. 13) with an 11×11 Gaussian window (σ = 1.5) → (B,).

    SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), C1 = (0.01 R)², C2 = (0.03 R)²,
    averaged over valid window positions and channels. Images smaller than the window use a window of their size.
    """
    x, y = x.float(), y.float()
    C = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(window, sigma, C, x.device)
    blur = lambda t: F.conv2d(t, w, groups=C)  # noqa: E731  (B, C, H−k+1, W−k+1)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)
