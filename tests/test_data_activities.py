"""The second data family (activities): kinematics, radar physics, images and generation. Expected values come
from closed forms (minimum-jerk polynomial, segment lengths, f_D = 2 v_r / lambda, published viridis colours),
never from the simulator's own earlier output."""

import dataclasses
import json

import numpy as np
import pytest

from tinyldm.data import DataError
from tinyldm.data.activities import (
    CLASSES,
    RADAR,
    VERSION,
    Recording,
    body_points,
    draw_recording,
    generate_activities,
    image_width,
    is_complete,
    main,
    recording_rng,
    render,
    simulate_spectrogram,
    world_points,
)
from tinyldm.data.colormaps import VIRIDIS_HEX, viridis
from tinyldm.data.microdoppler import body_to_radar
from tinyldm.data.poses import (
    SEATED,
    STANDING,
    Event,
    Move,
    event_duration,
    joint_angles,
    late_peak,
    minimum_jerk,
    pose_points,
)
from tinyldm.data.radar import C_LIGHT, returns, spectrogram, spectrogram_image
from tinyldm.data.walking import (
    FOOT,
    HEAD,
    HIP,
    LOWER_ARM,
    LOWER_LEG,
    SHOULDER,
    TORSO,
    UPPER_ARM,
    UPPER_LEG,
    P,
)

BIN = RADAR.fs / RADAR.nfft  # Hz per FFT bin


def event(activity, speed=1.0, amplitude=1.0, backward=False, squat=0.5, hold_s=0.6, wave_hz=2.0, wave_cycles=2):
    return Event(activity, speed=speed, amplitude=amplitude, hold_s=hold_s, wave_hz=wave_hz, wave_cycles=wave_cycles,
                 side="r", backward=backward, squat=squat)


def recording(ev, onset_s=1.0, height=1.75, aspect_deg=0.0, range_m=3.0, idle=True):
    """A recording with chosen values; idle=False turns breathing and sway off."""
    return Recording(ev, onset_s=onset_s, height=height, build=1.0, breath_hz=0.4, breath_mm=5.0 if idle else 0.0,
                     breath_phase=0.3, sway_hz=0.3, sway_deg=0.4 if idle else 0.0, sway_phase=1.1, fidget_joint="",
                     fidget_deg=0.0, fidget_s=0.0, fidget_d=1.0, fidget_hold_s=0.0, aspect_deg=aspect_deg,
                     range_m=range_m, snr_db=10.0)


def every_event():
    """Each activity in its variants: both fall directions, stoop and squat, slow and fast, small and large."""
    for activity in CLASSES:
        for backward, squat, speed, amplitude in [(False, 0.0, 0.6, 0.6), (True, 1.0, 1.5, 1.2)]:
            yield event(activity, speed, amplitude, backward, squat)


# Kinematics.

def test_minimum_jerk_hits_its_end_points_at_rest():
    # s(tau) = 10 tau^3 - 15 tau^4 + 6 tau^5: s' = 30 tau^2 (1 - tau)^2, s'' = 60 tau (1 - tau)(1 - 2 tau).
    tau, h = np.linspace(0, 1, 2001), 1e-6
    assert minimum_jerk(0.0) == 0.0 and minimum_jerk(1.0) == 1.0
    speed = (minimum_jerk(tau + h) - minimum_jerk(tau - h)) / (2 * h)
    np.testing.assert_allclose(speed, 30 * tau**2 * (1 - tau) ** 2, atol=1e-6)
    assert speed.max() == pytest.approx(1.875, abs=1e-6) and tau[speed.argmax()] == pytest.approx(0.5)
    # The fall's profile: at rest at both ends too, speed 12 tau^2 (1 - tau) peaking at tau = 2/3.
    assert late_peak(0.0) == 0.0 and late_peak(1.0) == 1.0
    fall_speed = (late_peak(tau + h) - late_peak(tau - h)) / (2 * h)
    np.testing.assert_allclose(fall_speed, 12 * tau**2 * (1 - tau), atol=1e-6)
    assert tau[fall_speed.argmax()] == pytest.approx(2 / 3, abs=1e-3)


def test_moves_chain_from_target_to_target_and_rest_at_each_end():
    moves = [Move("trunk", 0.5, 1.0, 40.0), Move("trunk", 2.0, 0.5, 10.0), Move("r_arm", 0.0, 2.0, 90.0)]
    t = np.array([0.0, 0.5, 1.0, 1.5, 1.75, 2.0, 2.5, 9.0])
    q = joint_angles(STANDING, moves, t)
    np.testing.assert_allclose(q["trunk"], [0, 0, 20, 40, 40, 40, 10, 10], atol=1e-12)  # s(1/2) = 1/2 by symmetry
    s = lambda tau: 10 * tau**3 - 15 * tau**4 + 6 * tau**5
    np.testing.assert_allclose(q["r_arm"], 90 * np.array([0, s(0.25), 0.5, s(0.75), s(0.875), 1, 1, 1]), atol=1e-12)
    np.testing.assert_allclose(q["l_elbow"], STANDING["l_elbow"])  # joints without moves keep the start pose
    h = 1e-5  # speed at the start and end of every move is zero
    for t_edge in (0.5, 1.5, 2.0, 2.5):
        ends = joint_angles(STANDING, moves, np.array([t_edge - h, t_edge + h]))["trunk"]
        assert abs(ends[1] - ends[0]) / (2 * h) < 1e-6


@pytest.mark.parametrize("ev", list(every_event()), ids=lambda e: f"{e.activity}-{e.speed}")
def test_poses_keep_segment_lengths_and_the_feet_planted(ev):
    H = 1.83
    t = np.linspace(0, 6, 301)
    pts = body_points(recording(ev, onset_s=0.5, height=H), t)  # (N, 17, 3)
    for a, b, length in [("r_ankle", "r_knee", LOWER_LEG), ("l_knee", "l_hip", UPPER_LEG), ("base", "neck", TORSO),
                         ("neck", "head", HEAD), ("r_shoulder", "r_elbow", UPPER_ARM), ("l_elbow", "l_hand", LOWER_ARM),
                         ("r_ankle", "r_toe", FOOT), ("neck", "l_shoulder", SHOULDER), ("base", "r_hip", HIP)]:
        np.testing.assert_allclose(np.linalg.norm(pts[:, P[a]] - pts[:, P[b]], axis=-1), length * H, rtol=1e-9,
                                   err_msg=f"{ev.activity} {a}-{b}")
    np.testing.assert_allclose(pts[:, P["l_ankle"]], np.broadcast_to([0, HIP * H, 0], (len(t), 3)), atol=1e-12)
    np.testing.assert_allclose(pts[:, P["r_toe"]], np.broadcast_to([FOOT * H, -HIP * H, 0], (len(t), 3)), atol=1e-12)


def test_sitting_ends_on_a_seat_and_a_fall_ends_lower():
    H = 1.8
    end = np.array([5.5])
    seated = body_points(recording(event("sit_down"), onset_s=0.5, height=H, idle=False), end)[0]
    # Thigh horizontal on a shank tilted 5 degrees: seat = LOWER_LEG H cos 5; trunk and head 5 degrees off vertical.
    seat = LOWER_LEG * H * np.cos(np.radians(SEATED["shank"]))
    assert seated[P["base"], 2] == pytest.approx(seat)
    assert seated[P["head"], 2] == pytest.approx(seat + (TORSO + HEAD) * H * np.cos(np.radians(SEATED["trunk"])))
    for backward in (False, True):
        fallen = body_points(recording(event("fall", backward=backward), onset_s=0.5, height=H, idle=False), end)[0]
        assert fallen[P["head"], 2] < 0.5 * seated[P["head"], 2] and fallen[P["base"], 2] < seat
        assert np.sign(fallen[P["head"], 0]) == (-1 if backward else 1)  # lands behind or in front of the feet


def test_the_longest_events_fit_the_recording_with_idle_around_them():
    slowest = [event(a, speed=0.6, amplitude=1.2, backward=b, hold_s=1.2, wave_hz=1.5, wave_cycles=3)
               for a in CLASSES for b in (False, True)]
    assert max(event_duration(e) for e in slowest) <= RADAR.duration - 0.5
    for activity in CLASSES:
        for i in range(20):
            rec = draw_recording(activity, recording_rng(0, activity, i))
            assert rec.onset_s >= 0.3 and rec.onset_s + event_duration(rec.event) <= RADAR.duration - 0.2


# Radar.

def test_radar_is_5_8_ghz_with_no_aliasing_for_the_fastest_motion():
    assert RADAR.wavelength == pytest.approx(C_LIGHT / 5.8e9) == pytest.approx(0.0517, abs=1e-4)
    assert 2 / RADAR.wavelength == pytest.approx(38.7, abs=0.05)  # Hz of Doppler per m/s
    assert RADAR.duration == pytest.approx(((280 - 1) * 16 + 160) / 800)
    limit = RADAR.wavelength * RADAR.fs / 4  # fastest unambiguous radial speed
    for ev in every_event():
        if ev.speed < 1:
            continue
        # Tallest person, nearest range, facing the radar: every point's radial speed from the kinematics.
        pts = world_points(recording(ev, onset_s=0.5, height=1.95, range_m=2.0), RADAR)  # (N', 17, 3)
        R = np.linalg.norm(pts - np.array([0, 0, RADAR.radar_height]), axis=-1)
        v_r = np.diff(R, axis=0) / (RADAR.decimation / RADAR.fs)
        assert np.abs(v_r).max() < 0.6 * limit, ev.activity  # with room for fidgets on top


@pytest.mark.parametrize("v", [-3.0, -0.8, 0.5, 2.5])
def test_a_point_approaching_at_v_shows_at_2v_over_lambda(v):
    t = np.arange(RADAR.n_samples) / RADAR.fs
    x = np.exp(-4j * np.pi * (10.0 - v * t) / RADAR.wavelength)  # range R = R0 - v t
    S_db, freqs = spectrogram(x, RADAR)
    assert np.all(np.abs(freqs[S_db.argmax(0)] - 2 * v / RADAR.wavelength) <= BIN / 2)


def test_a_whole_body_moving_at_v_shows_at_2v_over_lambda():
    # A standing body (no idle motion) sliding towards the radar at 1.2 m/s, far enough that every segment's line
    # of sight is horizontal to within cos = 0.9995: every segment, and so the spectrogram's peak, at 2 v / lambda.
    v, n = 1.2, np.arange(0, RADAR.n_samples + 1, RADAR.decimation)
    still = {j: np.full(len(n), a) for j, a in STANDING.items()}
    pts = body_to_radar(pose_points(still, 1.8), 0.0, 30.0) - np.array([v, 0, 0]) * (n / RADAR.fs)[:, None, None]
    S_db, freqs = spectrogram(returns(pts, RADAR), RADAR)
    assert np.all(np.abs(freqs[S_db.argmax(0)] - 2 * v / RADAR.wavelength) <= 1.5 * BIN)


@pytest.mark.parametrize("backward,aspect", [(False, 0.0), (False, 30.0), (True, -20.0)])
def test_torso_doppler_during_a_fall_follows_the_kinematics(backward, aspect):
    rec = recording(event("fall", backward=backward), onset_s=2.0, aspect_deg=aspect)
    S_db, freqs = simulate_spectrogram(rec, RADAR, None, segments=["torso"], noise=False)
    # The torso ellipsoid's centre, from the kinematics at every slow-time sample, projected on the line of sight.
    pts = body_to_radar(body_points(rec, np.arange(RADAR.n_samples) / RADAR.fs), aspect, rec.range_m)
    centre = (pts[:, P["base"]] + pts[:, P["neck"]]) / 2  # (N, 3)
    R = np.linalg.norm(centre - np.array([0, 0, RADAR.radar_height]), axis=-1)
    f_D = -np.gradient(R) * RADAR.fs * 2 / RADAR.wavelength  # (N,) f_D = 2 v_r / lambda
    expected = f_D[RADAR.hop * np.arange(RADAR.n_frames) + RADAR.window // 2]  # (T,) at each window's centre
    moving = np.abs(expected) > 5.0
    print(f"fall: {moving.sum()} columns with the torso moving, peak {np.abs(expected).max():.0f} Hz")
    assert moving.sum() >= 20 and np.abs(expected).max() > 25
    assert np.all(np.abs(freqs[S_db.argmax(0)] - expected)[moving] <= 2 * BIN)  # within two 1.56 Hz bins


def test_before_the_onset_the_energy_sits_near_zero_doppler():
    rec = recording(event("bend_pick_up"), onset_s=3.0, height=1.95)
    S_db, freqs = simulate_spectrogram(rec, RADAR, np.random.default_rng(0))  # noise at 10 dB SNR
    before = RADAR.hop * np.arange(RADAR.n_frames) + RADAR.window < rec.onset_s * RADAR.fs  # (T,) windows before it
    # Idle speeds: breathing moves the neck 2 pi f_b a_b, sway moves the head 2 pi f_s theta_s H at most.
    v_idle = 2 * np.pi * (rec.breath_hz * rec.breath_mm / 1e3 + rec.sway_hz * np.radians(rec.sway_deg) * rec.height)
    assert np.all(np.abs(freqs[S_db[:, before].argmax(0)]) <= 2 * v_idle / RADAR.wavelength + BIN)
    S_clean, _ = simulate_spectrogram(rec, RADAR, None, noise=False)
    power = 10 ** (S_clean[:, before] / 10)
    near = np.abs(freqs) <= 2 * RADAR.fs / RADAR.window  # the Hann main lobe: +-2 resolution cells of 5 Hz
    assert np.all(power[near].sum(0) / power.sum(0) > 0.99)
    after = ~before & (RADAR.hop * np.arange(RADAR.n_frames) > (rec.onset_s + 0.3) * RADAR.fs)
    assert np.abs(freqs[S_db[:, after].argmax(0)]).max() > 5 * BIN  # the event moves energy off zero


# Images.

def test_viridis_matches_the_published_colours_and_rises_in_lightness():
    hex_rgb = lambda h: [int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    np.testing.assert_allclose(viridis(np.array([0.0, 1.0])), [hex_rgb("#440154"), hex_rgb("#fde725")])
    np.testing.assert_allclose(viridis(np.array([128 / 255])), [hex_rgb(VIRIDIS_HEX[8])])  # #21918c at the middle
    rgb = viridis(np.linspace(0, 1, 1001))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)  # sRGB -> linear light
    Y = linear @ np.array([0.2126, 0.7152, 0.0722])  # relative luminance (Rec. 709), monotone in L*
    assert np.all(np.diff(Y) > 0)


@pytest.mark.parametrize("height", [32, 60, 64])
def test_images_are_wide_uint8(height):
    img, rec = render("wave", 3, height)
    assert img.shape == (height, round(5 * height / 3), 3) == (height, image_width(height), 3)
    assert img.dtype == np.uint8 and img.std() > 5
    assert image_width(600) == 1000 and image_width(64) == 107
    flat = spectrogram_image(np.zeros((20, 30)), height, RADAR, width=image_width(height), cmap=viridis)
    assert np.all(flat == [253, 231, 37])  # a flat spectrogram is all at the top of the range: #fde725


# Generation.

def read_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_cli_writes_the_set_and_explains_itself(tmp_path, capsys):
    out = tmp_path / "act"
    main(["--out", str(out), "--per-class", "2", "--height", "16", "--workers", "1"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*CLASSES, "metadata.json"])
    assert sorted(p.name for p in (out / "fall").iterdir()) == ["000.png", "001.png"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["settings"]["version"] == VERSION and meta["settings"]["radar"]["carrier_hz"] == 5.8e9
    assert meta["settings"]["width"] == 27 and meta["classes"] == list(CLASSES)
    assert set(meta["images"]) == {f"{c}/{i:03d}.png" for c in CLASSES for i in range(2)}
    assert meta["images"]["drink/001.png"] == dataclasses.asdict(render("drink", 1, 16)[1])
    assert "wrote 6 activities x 2 images (16x27)" in capsys.readouterr().out
    assert is_complete(out, 2) and not is_complete(out, 3)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert all(c in text for c in CLASSES) and "round(5 height / 3)" in text and "5.8 GHz" in text


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_activities(a, per_class=2, height=16, seed=3, workers=1, progress=False)
    generate_activities(b, per_class=2, height=16, seed=3, workers=2, progress=False)
    assert read_bytes(a) == read_bytes(b) and len(read_bytes(a)) == 12
    assert (a / "metadata.json").read_bytes() == (b / "metadata.json").read_bytes()
    assert not np.array_equal(render("fall", 0, 16, seed=4)[0], render("fall", 0, 16, seed=3)[0])


def test_rerun_completes_a_partial_set_and_removes_temporaries(tmp_path):
    generate_activities(tmp_path, per_class=2, height=16, workers=1, progress=False)
    kept = read_bytes(tmp_path)
    (tmp_path / "wave/001.png").unlink()
    (tmp_path / "wave/.001.png.99999999.tmp").write_bytes(b"half a png")  # left by a killed process
    assert not is_complete(tmp_path, 2)
    generate_activities(tmp_path, per_class=2, height=16, workers=1, progress=False)
    assert read_bytes(tmp_path) == kept and not list(tmp_path.rglob("*.tmp"))


def test_a_folder_made_with_other_settings_is_refused(tmp_path):
    generate_activities(tmp_path, per_class=1, height=16, workers=1, progress=False)
    with pytest.raises(DataError, match="other height, width"):
        generate_activities(tmp_path, per_class=1, height=24, workers=1, progress=False)
    with pytest.raises(DataError, match="other seed"):
        generate_activities(tmp_path, per_class=1, height=16, seed=1, workers=1, progress=False)


@pytest.mark.parametrize("kwargs,message", [({"height": 0}, "--height must be a positive integer"),
                                            ({"per_class": -2}, "--per-class must be a positive integer")])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        generate_activities(tmp_path / "act", **{"per_class": 1, "height": 16, **kwargs})
    assert not (tmp_path / "act").exists()


def test_default_data_dir_names_and_caches_each_family(tmp_path, monkeypatch, capsys):
    import tinyldm.data.datasets as datasets

    monkeypatch.setattr(datasets, "ACTIVITIES_PER_CLASS", 2)  # the real set is 6 × 150; the logic is the same
    out = datasets.default_data_dir("tiny", root=tmp_path, family="activities", workers=1)
    assert out == tmp_path / "activities-v1-tiny" and "generating the simulated activity set" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(CLASSES)
    assert datasets.default_data_dir("tiny", root=tmp_path, family="activities") == out
    assert "generating" not in capsys.readouterr().out  # the second call reuses the set
    with pytest.raises(DataError, match="unknown data family 'running'; choose one of walking, activities"):
        datasets.default_data_dir("tiny", root=tmp_path, family="running")
