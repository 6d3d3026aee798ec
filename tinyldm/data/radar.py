"""CW radar returns of a walking body and their spectrogram image (V. C. Chen, "The Micro-Doppler Effect in
Radar", 2011, ch. 4). numpy only.

The body is 16 ellipsoids (head, torso, and per side shoulder, upper arm, forearm, hip, thigh, shank, foot).
Each contributes one complex return per slow-time sample n:

    x(n) = sum_k sqrt(sigma_k(n)) / R_k(n)^2 * exp(-j 4 pi R_k(n) / lambda) + w(n)

with R_k the range of segment k's centre, sigma_k its radar cross-section and w complex white Gaussian noise at
the chosen SNR. A scatterer approaching at radial speed v_r shows at Doppler f_D = 2 v_r / lambda (160 Hz per
m/s at 24 GHz). The spectrogram is a Hann-windowed STFT, |.| in dB, clipped to the top `dynamic_range_db`.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tinyldm.data.walking import P

C_LIGHT = 299_792_458.0  # m/s

# Segments as (from point, to point, radius in m for a 1.8 m person of average build) (Chen 2011, Fig. 4.30).
SEGMENTS = (
    ("head", "neck", "head", 0.10),
    ("torso", "base", "neck", 0.15),
    ("r_shoulder", "neck", "r_shoulder", 0.06), ("l_shoulder", "neck", "l_shoulder", 0.06),
    ("r_upper_arm", "r_shoulder", "r_elbow", 0.06), ("l_upper_arm", "l_shoulder", "l_elbow", 0.06),
    ("r_forearm", "r_elbow", "r_hand", 0.05), ("l_forearm", "l_elbow", "l_hand", 0.05),
    ("r_hip", "base", "r_hip", 0.07), ("l_hip", "base", "l_hip", 0.07),
    ("r_thigh", "r_hip", "r_knee", 0.07), ("l_thigh", "l_hip", "l_knee", 0.07),
    ("r_shank", "r_knee", "r_ankle", 0.06), ("l_shank", "l_knee", "l_ankle", 0.06),
    ("r_foot", "r_ankle", "r_toe", 0.05), ("l_foot", "l_ankle", "l_toe", 0.05),
)
SEGMENT_NAMES = tuple(s[0] for s in SEGMENTS)  # 16 names


@dataclass
class RadarConfig:
    """CW radar and spectrogram settings. Defaults: 24 GHz, 3.2 kHz slow-time, 0.1 s Hann window, 12.5 ms hop."""

    carrier_hz: float = 24e9  # f_c; lambda = c / f_c = 12.5 mm
    fs: float = 3200.0  # slow-time sample rate (Hz); unambiguous |f_D| < fs / 2, i.e. |v_r| < lambda fs / 4 = 10 m/s
    window: int = 320  # STFT window length (samples), Hann; 0.1 s -> 10 Hz (6 cm/s) resolution
    hop: int = 40  # STFT hop (samples); 12.5 ms per column
    nfft: int = 512  # FFT size (zero-padded); 6.25 Hz per bin
    n_frames: int = 256  # STFT columns per image; duration = ((n_frames - 1) hop + window) / fs = 3.29 s
    v_min: float = -3.0  # lowest radial speed shown (m/s, + = approaching); feet swing back to about -2 m/s
    v_max: float = 9.0  # highest radial speed shown; toes of a fast walker peak near 8 m/s
    dynamic_range_db: float = 40.0  # image shows [max - 40 dB, max]
    radar_height: float = 1.0  # m above the ground
    decimation: int = 4  # body kinematics every 4th sample, ranges linearly interpolated (error < 0.1 mm << lambda)

    def __post_init__(self):
        if not (self.window <= self.nfft and self.hop > 0 and self.n_frames > 1):
            raise ValueError(f"need hop > 0, n_frames > 1 and window <= nfft, got hop {self.hop}, "
                             f"n_frames {self.n_frames}, window {self.window}, nfft {self.nfft}")
        if self.decimation < 1 or self.n_samples % self.decimation:
            raise ValueError(f"decimation {self.decimation} must be >= 1 and divide the {self.n_samples} samples")
        if max(abs(self.v_min), abs(self.v_max)) >= self.wavelength * self.fs / 4:
            raise ValueError(f"speeds up to {max(abs(self.v_min), abs(self.v_max))} m/s alias at fs = {self.fs} Hz "
                             f"(limit lambda fs / 4 = {self.wavelength * self.fs / 4:.2f} m/s); raise fs")

    @property
    def wavelength(self):
        return C_LIGHT / self.carrier_hz  # lambda (m)

    @property
    def n_samples(self):
        return (self.n_frames - 1) * self.hop + self.window

    @property
    def duration(self):
        return self.n_samples / self.fs  # seconds of slow time behind one image


def segment_geometry(points):
    """Centres (N, 16, 3), axes (N, 16, 3) and half-lengths (N, 16) of the ellipsoids from (N, 17, 3) points."""
    a = points[:, [P[s[1]] for s in SEGMENTS]]  # (N, 16, 3)
    b = points[:, [P[s[2]] for s in SEGMENTS]]
    axis = b - a
    half = np.linalg.norm(axis, axis=-1) / 2  # (N, 16)
    return (a + b) / 2, axis, half


def ellipsoid_rcs(a, c, cos_theta):
    """RCS of a spheroid, semi-axes a = b (across) and c (along its axis), seen at angle theta from the axis.

    sigma = pi a^2 b^2 c^2 / (a^2 sin^2 th cos^2 ph + b^2 sin^2 th sin^2 ph + c^2 cos^2 th)^2, with a = b the
    azimuth ph drops out: sigma = pi a^4 c^2 / (a^2 sin^2 th + c^2 cos^2 th)^2.
    """
    cos2 = cos_theta**2
    return np.pi * a**4 * c**2 / (a**2 * (1 - cos2) + c**2 * cos2) ** 2


def returns(points, radar, radius_scale=1.0, snr_db=None, rng=None, segments=None):
    """Complex slow-time return x(n), (N,), of world-frame body points seen from a radar at the origin.

    points are (N / d + 1, 17, 3), sampled every d = radar.decimation slow-time samples; R_k and sigma_k are
    linearly interpolated in between (kinematics are smooth, the phase 4 pi R / lambda is not).
    radius_scale multiplies every ellipsoid radius (build); segments limits the sum to some SEGMENT_NAMES
    (tests use it to look at the feet alone); snr_db adds noise of power mean|x|^2 / 10^(snr/10).
    """
    centre, axis, c = segment_geometry(points)  # (N, 16, 3), (N, 16, 3), (N, 16)
    to_radar = np.array([0.0, 0.0, radar.radar_height]) - centre  # (N, 16, 3)
    R = np.linalg.norm(to_radar, axis=-1)  # (N / d + 1, 16)
    cos_theta = np.abs(np.sum(axis * to_radar, -1)) / (2 * c * R)  # angle between segment axis and line of sight
    a = radius_scale * np.array([s[3] for s in SEGMENTS])  # (16,)
    sigma = ellipsoid_rcs(a, c, cos_theta)  # (N / d + 1, 16) m^2
    frac = (np.arange(radar.decimation) / radar.decimation)[None, :, None]  # (1, d, 1)
    R, amp = ((1 - frac) * y[:-1, None] + frac * y[1:, None] for y in (R, np.sqrt(sigma) / R**2))  # (N / d, d, 16)
    phase = (-4 * np.pi / radar.wavelength) * R.reshape(radar.n_samples, -1)  # (N, 16)
    terms = amp.reshape(radar.n_samples, -1) * (np.cos(phase) + 1j * np.sin(phase))  # (N, 16)
    if segments is not None:
        terms = terms[:, [SEGMENT_NAMES.index(s) for s in segments]]
    x = terms.sum(-1)  # (N,)
    if snr_db is not None:
        noise_power = np.mean(np.abs(x) ** 2) / 10 ** (snr_db / 10)
        x = x + np.sqrt(noise_power / 2) * (rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape))
    return x


def spectrogram(x, radar):
    """|STFT|^2 in dB of x (N,): returns S_db (F, T) with row 0 = the highest Doppler, and freqs (F,) in Hz.

    Hann window of `window` samples every `hop` samples, FFT of `nfft` points, fftshift; rows kept are the
    Doppler band [2 v_min / lambda, 2 v_max / lambda], flipped so approaching (positive) Doppler is at the top.
    """
    starts = radar.hop * np.arange(radar.n_frames)  # (T,)
    frames = x[starts[:, None] + np.arange(radar.window)] * np.hanning(radar.window)  # (T, window)
    S = np.fft.fftshift(np.fft.fft(frames, radar.nfft, axis=1), axes=1)  # (T, nfft)
    freqs = np.fft.fftshift(np.fft.fftfreq(radar.nfft, 1 / radar.fs))  # (nfft,) Hz
    band = (freqs >= 2 * radar.v_min / radar.wavelength) & (freqs <= 2 * radar.v_max / radar.wavelength)
    S_db = 20 * np.log10(np.abs(S[:, band]).T + 1e-30)  # (F, T)
    return S_db[::-1], freqs[band][::-1]


def jet(u):
    """MATLAB-style jet colour map of u in [0, 1] (any shape) -> RGB floats (..., 3) in [0, 1]."""
    return np.clip(1.5 - np.abs(4 * u[..., None] - np.array([3.0, 2.0, 1.0])), 0, 1)


def spectrogram_image(S_db, size, radar, gray=False, width=None, cmap=jet):
    """dB spectrogram (F, T) -> uint8 image (size, width, 3) through cmap, or (size, width) grayscale.

    Clip to [max - dynamic_range_db, max], scale to [0, 1], resize (PIL bicubic, anti-aliased) to `size` rows
    and `width` columns (default: square), colour with cmap ([0, 1] -> RGB in [0, 1], jet or colormaps.viridis).
    """
    width = width or size
    top = S_db.max()
    u = (np.clip(S_db, top - radar.dynamic_range_db, top) - top) / radar.dynamic_range_db + 1  # (F, T) in [0, 1]
    u = np.asarray(Image.fromarray(u.astype(np.float32), "F").resize((width, size), Image.Resampling.BICUBIC))
    u = np.clip(u, 0, 1)  # (size, width); bicubic overshoots slightly
    img = u if gray else cmap(u)
    return np.round(255 * img).astype(np.uint8)
