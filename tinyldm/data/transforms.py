"""Spectrogram-safe augmentation on batches (B, C, H, W) in [-1, 1]; rows are Doppler (up = approaching), columns time.

No flips, on purpose: a time flip plays the gait backwards (heel strike and toe-off swap order, the feet's
Doppler ramps run the wrong way) and a Doppler flip turns a person walking towards the radar into one walking
away. Neither image is a plausible recording of the same person, so both would teach a model wrong physics.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def to_uint8(x):
    """Inverse of the loader's normalisation: float (..., C, H, W) in [-1, 1] -> uint8 (..., H, W, C)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)


@dataclass
class SpectrogramAugment:
    """Random time shift/crop, small gain and gamma jitter, optional time/frequency masking.

    time_shift:  "circular" (roll along time; the gait is periodic, but the wrap-around seam is visible
                 because an image rarely holds a whole number of cycles), "crop" (random window of
                 crop_width columns, for images wider than tall), or None
    crop_width:  columns kept by "crop"; None = image height (square output)
    gain:        brightness jitter u -> g u with g in [1 - gain, 1 + gain], u = (x + 1) / 2 in [0, 1]
    gamma:       contrast jitter u -> u ** exp(s), s in [-gamma, gamma]; on jet RGB images both act per
                 colour channel, i.e. as a slight colour-map distortion, so keep them small
    time_mask:   up to this many consecutive columns replaced by the background colour (0 = off)
    freq_mask:   up to this many consecutive rows replaced by the background colour (0 = off)
    blur:        with probability 1/2, a Gaussian blur of standard deviation s ~ U(0, blur) pixels (0 = off).
                 Autoencoders smooth the speckle of the noise floor; a classifier that must read *identity*
                 off reconstructions or generated images has to be trained not to rely on that texture.
    The background colour is the per-channel median, i.e. the noise floor of a gait spectrogram.
    Time stretching is deliberately absent: it would change the cadence, which is part of a person's identity.
    """

    time_shift: str | None = "circular"
    crop_width: int | None = None
    gain: float = 0.05
    gamma: float = 0.05
    time_mask: int = 0
    freq_mask: int = 0
    blur: float = 0.0

    def __post_init__(self):
        if self.time_shift not in ("circular", "crop", None):
            raise ValueError(f"time_shift must be 'circular', 'crop' or None, got {self.time_shift!r}")
        for name in ("gain", "gamma"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}; typical 0.05")
        if self.blur < 0:
            raise ValueError(f"blur must be >= 0 pixels, got {self.blur!r}; typical 1.5")
        for name in ("time_mask", "freq_mask"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 columns/rows, got {getattr(self, name)!r}")

    def __call__(self, x, generator=None):
        """x (B, C, H, W) or one image (C, H, W) in [-1, 1] -> augmented, the same shape (W -> crop_width with
        "crop"), in [-1, 1]. Every image draws its own shift, gain, gamma, masks and blur from `generator`."""
        if x.dim() == 3:
            return self(x[None], generator)[0]
        B, C, H, W = x.shape

        # 1. Shift or crop along time: column j of image b becomes column (t0_b + j) mod W.
        if self.time_shift is not None:
            w = W if self.time_shift == "circular" else (self.crop_width or H)
            if w > W:
                raise ValueError(f"crop_width {w} is wider than the image ({W} columns); lower crop_width")
            t0 = torch.randint(W - w + 1 if self.time_shift == "crop" else W, (B,), generator=generator)  # (B,)
            cols = (t0[:, None] + torch.arange(w)) % W  # (B, w)
            x = x.gather(-1, cols[:, None, None, :].expand(B, C, H, w))  # (B, C, H, w)

        # 2. Gain g and gamma exp(s) in [0, 1].
        if self.gain or self.gamma:
            u = (x + 1) / 2
            g = _uniform(1 - self.gain, 1 + self.gain, B, generator)  # (B, 1, 1, 1)
            s = _uniform(-self.gamma, self.gamma, B, generator)  # (B, 1, 1, 1)
            u = (g * u.clamp_min(0) ** torch.exp(s)).clamp(0, 1)
            x = 2 * u - 1

        # 3. Masks filled with the background colour (each image's per-channel median).
        if self.time_mask or self.freq_mask:
            background = x.flatten(2).median(dim=2).values[:, :, None, None]  # (B, C, 1, 1)
            if self.time_mask:
                x = torch.where(_band(self.time_mask, x.shape[-1], B, generator)[:, None, None, :], background, x)
            if self.freq_mask:
                x = torch.where(_band(self.freq_mask, H, B, generator)[:, None, :, None], background, x)

        # 4. Gaussian blur with probability 1/2, of std σ ~ U(0, blur) pixels (σ = 0: the image unchanged).
        if self.blur:
            blurred = torch.rand(B, generator=generator) < 0.5  # (B,)
            sigma = torch.rand(B, generator=generator) * self.blur * blurred  # (B,)
            x = gaussian_blur(x, sigma)
        return x


def _uniform(low, high, n, generator):
    """n draws from U(low, high), shaped (n, 1, 1, 1) to scale a batch of images."""
    return low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)


def _band(most: int, size: int, n: int, generator) -> torch.Tensor:
    """n random bands of 1 to min(most, size) consecutive positions out of `size` → (n, size) bool, True inside."""
    width = 1 + torch.randint(min(most, size), (n,), generator=generator)  # (n,)
    start = (torch.rand(n, generator=generator) * (size - width + 1)).long()  # (n,), uniform in [0, size - width]
    i = torch.arange(size)  # (size,)
    return (i >= start[:, None]) & (i < (start + width)[:, None])  # (n, size)


def gaussian_blur(x: torch.Tensor, sigma) -> torch.Tensor:
    """x (B, C, H, W) → every image convolved with a normalised Gaussian of std sigma[b] pixels along H and W
    (sigma: (B,) or one number for all); reflect-padded at the borders. σ = 0 is the identity (a one-tap kernel)."""
    B, C, H, W = x.shape
    sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(B)  # (B,)
    r = min(int(3 * sigma.max().item() + 0.5), H - 1, W - 1)  # kernel half-width, ≈ 3σ; reflect needs r < H, W
    k = torch.arange(-r, r + 1, dtype=x.dtype)  # (K,), K = 2r + 1
    g = torch.exp(-k**2 / (2 * sigma[:, None].clamp_min(1e-6) ** 2))  # (B, K); σ → 0: 1 at k = 0, else 0
    g = (g / g.sum(1, keepdim=True)).repeat_interleave(C, dim=0)  # (B·C, K): one kernel per image and channel
    y = F.pad(x.reshape(1, B * C, H, W), (r, r, r, r), mode="reflect")  # (1, B·C, H + 2r, W + 2r)
    y = F.conv2d(y, g[:, None, None, :], groups=B * C)  # along time     (1, B·C, H + 2r, W)
    y = F.conv2d(y, g[:, None, :, None], groups=B * C)  # along Doppler  (1, B·C, H, W)
    return y.reshape(B, C, H, W)


def random_crops(x: torch.Tensor, size: int, multiple: int, generator: torch.Generator) -> torch.Tensor:
    """x (B, C, H, W) → (B, C, size, size): one window per image at a random offset that is a multiple of `multiple`.

    For training a fully convolutional autoencoder on patches (the SD autoencoders were trained on 256² crops and
    run at 512²): a step costs size² / (H W) of a full-image step. Offsets on the autoencoder's downsampling grid
    (multiple = f) keep every crop's latent pixels aligned with the full image's.
    """
    B, _, H, W = x.shape
    if size % multiple or size > min(H, W):
        raise ValueError(f"crop size {size} must be a multiple of {multiple} and at most the image size {H}×{W}")
    top = torch.randint((H - size) // multiple + 1, (B,), generator=generator) * multiple  # (B,)
    left = torch.randint((W - size) // multiple + 1, (B,), generator=generator) * multiple  # (B,)
    return torch.stack([x[b, :, t:t + size, s:s + size] for b, (t, s) in enumerate(zip(top.tolist(), left.tolist()))])
