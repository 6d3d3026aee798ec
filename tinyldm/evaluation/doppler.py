"""The walker's speed read back from a spectrogram image: the torso Doppler line (Chen 2011, ch. 4).

The torso is the largest scatterer, so in each time column the strongest Doppler bin is the torso's, at
f_D = 2 v_r / λ with v_r the radial speed (v cos(aspect) for a walker heading at the radar). Read an image back:
  1. undo the colour map: each pixel → the level u ∈ [0, 1] of the nearest of 256 colours of the map;
  2. each column's strongest row, refined to a fraction of a row by the parabola through it and its neighbours;
  3. row → speed through the image's Doppler axis (radar.spectrogram: row 0 = the highest Doppler, v_max);
  4. the median over columns: the torso line's speed, robust to columns where a foot outshines the torso.
The same function reads real and generated images, so the real images' own error against their captions is the
floor for the generated ones'.
"""

import numpy as np

from tinyldm.data.radar import RadarConfig, jet


def colour_levels(img: np.ndarray, cmap=jet) -> np.ndarray:
    """uint8 RGB (H, W, 3) drawn through `cmap` → levels u (H, W) in [0, 1]: the nearest of 256 map colours."""
    lut = 255 * cmap(np.linspace(0, 1, 256))  # (256, 3)
    rgb = img.reshape(-1, 3).astype(np.float32)  # (H·W, 3)
    d2 = (rgb**2).sum(1)[:, None] - 2 * rgb @ lut.T.astype(np.float32) + (lut**2).sum(1)[None].astype(np.float32)
    return d2.argmin(1).reshape(img.shape[:2]) / 255.0  # (H, W)


def row_speeds(height: int, radar: RadarConfig) -> np.ndarray:
    """Radial speed (m/s) at the centre of each of `height` image rows (the spectrogram's band, resized)."""
    freqs = np.fft.fftshift(np.fft.fftfreq(radar.nfft, 1 / radar.fs))  # (nfft,) Hz
    band = freqs[(freqs >= 2 * radar.v_min / radar.wavelength) & (freqs <= 2 * radar.v_max / radar.wavelength)][::-1]
    # A resize of F rows to `height` puts output row r's centre at input row (r + ½)·F/height − ½.
    source = (np.arange(height) + 0.5) * len(band) / height - 0.5
    return np.interp(source, np.arange(len(band)), band) * radar.wavelength / 2  # v = f_D λ / 2


def torso_speed(img: np.ndarray, radar: RadarConfig | None = None, cmap=jet) -> float:
    """The torso line's radial speed (m/s) in one spectrogram image, uint8 (H, W, 3)."""
    radar = radar or RadarConfig()
    u = colour_levels(img, cmap)  # (H, W)
    rows = u.argmax(0).clip(1, u.shape[0] - 2)  # (W,) each column's strongest row (not on the edge)
    cols = np.arange(u.shape[1])
    a, b, c = u[rows - 1, cols], u[rows, cols], u[rows + 1, cols]  # the peak and its neighbours
    curvature = a - 2 * b + c
    offset = np.where(curvature < 0, 0.5 * (a - c) / np.where(curvature < 0, curvature, -1), 0.0).clip(-0.5, 0.5)
    speeds = np.interp(rows + offset, np.arange(u.shape[0]), row_speeds(u.shape[0], radar))  # (W,)
    return float(np.median(speeds))
