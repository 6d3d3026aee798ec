"""Physics of the micro-Doppler simulator: expected values come from the Boulic model's closed forms and from
f_D = 2 v_r / lambda, never from the simulator's own earlier output."""

import numpy as np
import pytest

from tinyldm.data.microdoppler import Nuisance, Person, simulate_spectrogram, world_points
from tinyldm.data.radar import RadarConfig, ellipsoid_rcs, jet, spectrogram
from tinyldm.data.walking import (
    FOOT,
    LOWER_ARM,
    LOWER_LEG,
    UPPER_ARM,
    UPPER_LEG,
    P,
    cycle_duration,
    joint_curves,
    pchip,
    periodic_curve,
    trunk_motion,
    walk,
)

WALKERS = [  # (height m, speed m/s, aspect deg): slow/short, average, fast/tall, across both walking regimes
    (1.55, 0.85, 0.0),
    (1.75, 1.25, 20.0),
    (1.92, 1.75, -25.0),
]


def person(H, V, asymmetry=0.0, cadence=1.0):
    return Person(height=H, speed=V, cadence=cadence, arm_gain=1.0, hip_gain=1.0, knee_gain=1.0, build=1.0,
                  asymmetry=asymmetry)


def nuisance(aspect, range_m=12.0, snr_db=15.0):
    return Nuisance(phase0=0.3, aspect_deg=aspect, range_m=range_m, speed_jitter=0.0, snr_db=snr_db,
                    time_offset_s=0.0)


# Kinematics.

def test_pchip_interpolates_knots_and_preserves_monotonicity():
    xk, yk = np.array([0.0, 0.3, 0.5, 1.0]), np.array([0.0, 1.0, 1.0, 4.0])
    np.testing.assert_allclose(pchip(xk, yk, xk), yk, atol=1e-12)
    y = pchip(xk, yk, np.linspace(0, 1, 1001))
    assert np.all(np.diff(y) >= -1e-12)  # monotone data -> monotone curve, no overshoot on the flat part
    assert np.abs(y[(np.linspace(0, 1, 1001) >= 0.3) & (np.linspace(0, 1, 1001) <= 0.5)] - 1).max() < 1e-12


def test_periodic_curves_wrap_smoothly():
    t = np.array([0.0, 1e-6, 1 - 1e-6])
    for RV in (0.4, 1.0, 2.0):
        for name, y in joint_curves(RV, t).items():
            assert abs(y[1] - y[2]) < 1e-3, (name, RV)  # continuous across t = 1 -> 0
    y = periodic_curve([(0.1, 1.0), (0.6, -2.0)], np.array([0.1, 0.6, 1.1]))
    np.testing.assert_allclose(y, [1.0, -2.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("boundary", [0.5, 1.3])
def test_joint_curves_continuous_across_regimes(boundary):
    # Boulic's regimes meet continuously; the "RV - .13" typo of public copies breaks the elbow at 1.3.
    t = np.linspace(0, 1, 200, endpoint=False)
    below, at = joint_curves(boundary - 1e-9, t), joint_curves(boundary, t)
    for name in below:
        np.testing.assert_allclose(below[name], at[name], atol=1e-5, err_msg=name)


def test_pelvis_roll_amplitude_is_1_66_RV():
    RV = 1.2
    roll = trunk_motion(RV, np.linspace(0, 1, 4001))["roll"]
    # The piecewise cosines swing between -2 a2 and +2 a2 with a2 = 1.66 RV degrees.
    assert roll.max() == pytest.approx(2 * 1.66 * RV, rel=1e-3)
    assert roll.min() == pytest.approx(-2 * 1.66 * RV, rel=1e-3)


@pytest.mark.parametrize("H,RV", [(1.6, 0.9), (1.8, 1.0), (1.9, 2.2)])
def test_body_advances_one_stride_per_cycle_and_keeps_limb_lengths(H, RV):
    Ht = (UPPER_LEG + LOWER_LEG) * H
    Dc = cycle_duration(RV)
    assert Dc == pytest.approx(1.346 / np.sqrt(RV))
    t = np.array([0.0, 0.37, Dc, 0.37 + Dc])
    pts = walk(t, H=H, RV=RV)  # (4, 17, 3)
    # Stride = RLc Ht = 1.346 sqrt(RV) Ht per cycle (public copies move RLc only); shape repeats.
    stride = 1.346 * np.sqrt(RV) * Ht
    np.testing.assert_allclose(pts[2] - pts[0], np.broadcast_to([stride, 0, 0], (17, 3)), atol=1e-9)
    np.testing.assert_allclose(pts[3] - pts[1], np.broadcast_to([stride, 0, 0], (17, 3)), atol=1e-9)
    for a, b, length in [("r_hip", "r_knee", UPPER_LEG), ("l_knee", "l_ankle", LOWER_LEG), ("r_ankle", "r_toe", FOOT),
                         ("l_shoulder", "l_elbow", UPPER_ARM), ("r_elbow", "r_hand", LOWER_ARM)]:
        np.testing.assert_allclose(np.linalg.norm(pts[:, P[a]] - pts[:, P[b]], axis=-1), length * H, rtol=1e-9)


def test_cadence_factor_scales_the_cycle_but_not_the_speed():
    H, RV, cadence = 1.8, 1.1, 1.06
    Dc = cadence * cycle_duration(RV)
    pts = walk(np.array([0.2, 0.2 + Dc]), H=H, RV=RV, cadence=cadence)
    V = RV * (UPPER_LEG + LOWER_LEG) * H
    np.testing.assert_allclose(pts[1] - pts[0], np.broadcast_to([V * Dc, 0, 0], (17, 3)), atol=1e-9)


# Radar.

def test_ellipsoid_rcs_closed_forms():
    a, c = 0.07, 0.22
    assert ellipsoid_rcs(0.1, 0.1, np.array([0.0, 0.5, 1.0])) == pytest.approx(np.pi * 0.01)  # sphere: pi a^2
    assert ellipsoid_rcs(a, c, 0.0) == pytest.approx(np.pi * c**2)  # broadside: pi a^4 c^2 / a^4
    assert ellipsoid_rcs(a, c, 1.0) == pytest.approx(np.pi * a**4 / c**2)  # end-on


def test_spectrogram_puts_a_tone_at_its_doppler_with_approach_at_the_top():
    radar = RadarConfig()
    v = 2.0  # m/s towards the radar
    f0 = 2 * v / radar.wavelength
    n = np.arange(radar.n_samples)
    S_db, freqs = spectrogram(np.exp(2j * np.pi * f0 * n / radar.fs), radar)
    assert np.all(np.diff(freqs) < 0)  # row 0 = highest (approaching) Doppler
    assert np.all(np.abs(freqs[S_db.argmax(0)] - f0) <= radar.fs / radar.nfft / 2)


def test_radar_rejects_settings_that_alias():
    with pytest.raises(ValueError, match="alias"):
        RadarConfig(fs=1000.0)


def test_jet_endpoints():
    np.testing.assert_allclose(jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])


# Spectrogram physics.

@pytest.mark.parametrize("H,V,aspect", WALKERS)
def test_torso_line_sits_at_2v_cos_aspect_over_lambda(H, V, aspect):
    radar = RadarConfig(nfft=2048)  # 1.6 Hz bins, so bin rounding (6 Hz at nfft 512) does not blur a 5 % check
    S_db, freqs = simulate_spectrogram(person(H, V), nuisance(aspect), radar, np.random.default_rng(0))
    ridge = freqs[S_db.argmax(0)]  # (T,) strongest Doppler per column: the torso, the largest scatterer
    expected = 2 * V * np.cos(np.radians(aspect)) / radar.wavelength
    print(f"torso line {np.median(ridge):.1f} Hz, expected 2 v cos(aspect) / lambda = {expected:.1f} Hz")
    assert np.median(ridge) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("H,V,aspect", WALKERS)
def test_feet_reach_higher_doppler_than_the_torso(H, V, aspect):
    radar = RadarConfig()
    p, n = person(H, V), nuisance(aspect)
    rng = np.random.default_rng(0)
    S_feet, freqs = simulate_spectrogram(p, n, radar, rng, segments=["r_foot", "l_foot"], noise=False)
    S_torso, _ = simulate_spectrogram(p, n, radar, rng, segments=["torso"], noise=False)
    feet_peak, torso_peak = freqs[S_feet.argmax(0)].max(), freqs[S_torso.argmax(0)].max()
    # A foot rests during support (Ds of the cycle Dc) and covers the stride V Dc in the rest of it, so its
    # mean speed while swinging is V / (1 - Ds / Dc); its peak is at least that.
    Dc = cycle_duration(p.RV)
    swing = V / (1 - (0.752 * Dc - 0.143) / Dc)
    expected_min = 2 * swing * np.cos(np.radians(aspect)) / radar.wavelength
    print(f"feet peak {feet_peak:.0f} Hz, torso peak {torso_peak:.0f} Hz, mean swing Doppler {expected_min:.0f} Hz")
    assert feet_peak > torso_peak
    assert feet_peak >= 0.95 * expected_min


def test_no_body_part_aliases_for_the_fastest_person():
    radar = RadarConfig()
    p = person(1.50, 1.8 * 1.03)  # shortest and fastest allowed walker, +3 % speed jitter
    pts = world_points(p, nuisance(0.0, range_m=8.0), radar)  # (N', 17, 3)
    R = np.linalg.norm(pts - np.array([0, 0, radar.radar_height]), axis=-1)
    v_r = -np.diff(R, axis=0) / (radar.decimation / radar.fs)  # approaching speed per point
    assert v_r.max() < radar.v_max < radar.wavelength * radar.fs / 4
    assert v_r.min() > radar.v_min


def unbiased_autocorrelation(S_db):
    """Normalised autocorrelation along time of a dB spectrogram (F, T), lags 0..0.6 T columns."""
    X = S_db - S_db.mean(1, keepdims=True)
    T = X.shape[1]
    ac = np.array([np.sum(X[:, : T - k] * X[:, k:]) / (T - k) for k in range(int(0.6 * T))])
    return ac / ac[0]


@pytest.mark.parametrize("H,V,aspect", WALKERS)
@pytest.mark.parametrize("cadence", [1.0, 1.06])
def test_spectrogram_repeats_every_gait_cycle(H, V, aspect, cadence):
    # With a slight left-right asymmetry the picture repeats only after a whole cycle (two steps), so the
    # highest autocorrelation peak past the first zero crossing is Dc = cadence * 1.346 / sqrt(RV).
    radar = RadarConfig(n_frames=512)  # 6.5 s: several cycles
    p = person(H, V, asymmetry=0.1, cadence=cadence)
    S_db, _ = simulate_spectrogram(p, nuisance(aspect, range_m=14.0), radar, np.random.default_rng(0))
    ac = unbiased_autocorrelation(S_db)
    first_zero = np.argmax(ac < 0)
    lag = (first_zero + np.argmax(ac[first_zero:])) * radar.hop / radar.fs  # seconds
    Dc = cadence * 1.346 / np.sqrt(p.RV)
    print(f"autocorrelation period {lag:.3f} s, Dc = {Dc:.3f} s")
    assert lag == pytest.approx(Dc, rel=0.05)
