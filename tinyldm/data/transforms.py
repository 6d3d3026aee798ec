"""Spectrogram-safe augmentation on tensors (C, H, W) in [-1, 1]; rows are Doppler (up = approaching), columns time.

No flips, on purpose: a time flip plays the gait backwards (heel strike and toe-off swap order, the feet's
Doppler ramps run the wrong way) and a Doppler flip turns a person walking towards the radar into one walking
away. Neither image is a plausible recording of the same person, so both would teach a model wrong physics.
"""

from dataclasses import dataclass

import torch


def to_uint8(x):
    """Inverse of the loader's normalisation: float (..., C, H, W) in [-1, 1] -> uint8 (..., H, W, C)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)


def _uniform(low, high, generator):
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(high, generator):
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator))


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
        """x (C, H, W) in [-1, 1] -> augmented (C, H, W') in [-1, 1]; randomness from `generator`."""
        C, H, W = x.shape
        # 1. Shift or crop along time.
        if self.time_shift == "circular":
            x = torch.roll(x, _randint(W, generator), dims=-1)
        elif self.time_shift == "crop":
            w = self.crop_width or H
            if w > W:
                raise ValueError(f"crop_width {w} is wider than the image ({W} columns); lower crop_width")
            t0 = _randint(W - w + 1, generator)
            x = x[:, :, t0:t0 + w]  # (C, H, w)

        # 2. Gain and gamma in [0, 1].
        if self.gain or self.gamma:
            u = (x + 1) / 2
            g = _uniform(1 - self.gain, 1 + self.gain, generator)
            s = _uniform(-self.gamma, self.gamma, generator)
            u = (g * u.clamp_min(0) ** torch.exp(torch.tensor(s))).clamp(0, 1)
            x = 2 * u - 1

        # 3. Masks filled with the background colour.
        if self.time_mask or self.freq_mask:
            x = x.clone()
            background = x.flatten(1).median(dim=1).values[:, None, None]  # (C, 1, 1)
            if self.time_mask:
                w = 1 + _randint(min(self.time_mask, x.shape[-1]), generator)
                t0 = _randint(x.shape[-1] - w + 1, generator)
                x[:, :, t0:t0 + w] = background
            if self.freq_mask:
                h = 1 + _randint(min(self.freq_mask, H), generator)
                f0 = _randint(H - h + 1, generator)
                x[:, f0:f0 + h, :] = background

        # 4. Gaussian blur, separable, reflect-padded at the borders.
        if self.blur and _uniform(0, 1, generator) < 0.5:
            x = gaussian_blur(x, _uniform(0, self.blur, generator))
        return x


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x (C, H, W) → the same image convolved with a normalised Gaussian of std `sigma` pixels along H and W."""
    if sigma <= 0:
        return x
    C, H, W = x.shape
    r = min(int(3 * sigma + 0.5), H - 1, W - 1)  # kernel half-width; reflect padding needs r < H, W
    k = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-k**2 / (2 * sigma**2))
    g = (g / g.sum()).repeat(C, 1)  # (C, 2r + 1)
    y = torch.nn.functional.pad(x[None], (r, r, r, r), mode="reflect")  # (1, C, H + 2r, W + 2r)
    y = torch.nn.functional.conv2d(y, g[:, None, None, :], groups=C)  # along time   (1, C, H + 2r, W)
    y = torch.nn.functional.conv2d(y, g[:, None, :, None], groups=C)  # along Doppler (1, C, H, W)
    return y[0]


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
