"""tinyldm's second built-in data family: simulated 5.8 GHz CW micro-Doppler spectrograms of six activities.

    python -m tinyldm.data.activities --out data/act --per-class 150 --height 64 [--seed 0] [--workers N]

writes data/act/fall/000.png ... data/act/drink/149.png and data/act/metadata.json. The classes are activities,
not people: fall, sit_down, stand_up, bend_pick_up, wave, drink, each one occurrence per recording at a random
onset, with the person idle (breathing, swaying) before and after. Every recording draws a new person (height,
build, breathing, sway, maybe a fidget), how the event goes (speed, amplitude, hold, wave rate and count, arm,
fall direction, stoop or squat) and how the radar sees it (aspect, range, SNR), from (seed, class, index).
Images are wide, height x round(5 height / 3), viridis. The same seed gives the same bytes whatever --workers;
a rerun completes a partial set; a folder made with other settings is refused.

The statistics differ from the walking family on purpose (carrier, slow-time rate, recording length, noise floor,
dynamic range, colour map, image shape), so that training recipes can be judged on data they were not tuned on.
Kinematics: poses.py; radar returns and spectrogram: radar.py, shared with the walking family; colour:
colormaps.py. More in docs/data.md, "The second family: activities".
"""

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinyldm.data.colormaps import viridis
from tinyldm.data.errors import DataError
from tinyldm.data.microdoppler import (
    body_to_radar,
    check_settings,
    file_name,
    remove_temporaries,
    run_jobs,
    save_png,
    write_json,
)
from tinyldm.data.poses import ACTIVITIES, Event, bump, event_duration, joint_angles, pose_points, script
from tinyldm.data.radar import RadarConfig, returns, spectrogram, spectrogram_image
from tinyldm.data.walking import TORSO

VERSION = 1  # bump when images for the same seed change
CLASSES = tuple(ACTIVITIES)  # fall, sit_down, stand_up, bend_pick_up, wave, drink; class id = index
ASPECT_RATIO = 5 / 3  # image width / height, as in the measured set's 1000 x 600 images
RADAR = RadarConfig(
    carrier_hz=5.8e9,  # lambda = 5.17 cm: 38.7 Hz of Doppler per m/s
    fs=800.0,  # unambiguous up to lambda fs / 4 = 10.3 m/s; no point of the fastest fall passes 5.3 m/s
    window=160,  # 0.2 s Hann: 5 Hz (13 cm/s) resolution for the slow torso motions
    hop=16,  # 20 ms per column
    nfft=512,  # 1.56 Hz (4 cm/s) bins
    n_frames=280,  # ((280 - 1) 16 + 160) / 800 = 5.78 s per recording
    v_min=-4.0,  # falls and arms move both ways
    v_max=4.0,
    dynamic_range_db=50.0,  # a deeper noise floor than walking's 40 dB
)


@dataclass
class Recording:
    """Everything drawn for one recording: the event, the person, and how the radar sees them."""

    event: Event
    onset_s: float  # start of the event, seconds after the start of the recording
    height: float  # H, m (1.50-1.95)
    build: float  # ellipsoid radius factor: wider body, larger RCS (0.85-1.2)
    breath_hz: float  # breathing rate (0.2-0.4 Hz)
    breath_mm: float  # chest (neck) excursion, +- (2-5 mm)
    breath_phase: float  # radians at t = 0
    sway_hz: float  # postural sway rate (0.1-0.3 Hz)
    sway_deg: float  # sway of the whole body about the ankles, +- (0.1-0.4 degrees)
    sway_phase: float  # radians at t = 0
    fidget_joint: str  # "" (none), "r_arm", "l_arm" or "trunk": an unrelated move out and back (scratch, shrug)
    fidget_deg: float  # its excursion (arm 15-50, trunk 5-15 degrees)
    fidget_s: float  # its start, s after the start of the recording
    fidget_d: float  # seconds out and seconds back (0.4-1.0)
    fidget_hold_s: float  # pause between (0-1 s)
    aspect_deg: float  # angle between the person's front and the line of sight (+-75; 0 = facing the radar)
    range_m: float  # horizontal distance from the radar to the feet (2-5 m)
    snr_db: float  # per-sample signal-to-noise ratio (5-20 dB)


def image_width(height):
    return round(height * ASPECT_RATIO)  # 64 -> 107, 600 -> 1000


def recording_rng(seed, activity, index):
    return np.random.default_rng([seed, 2, CLASSES.index(activity), index])


def draw_recording(activity, rng, radar=RADAR):
    """A random recording of `activity`: the event starts >= 0.3 s after the start and ends >= 0.2 s before the end."""
    u = rng.uniform
    event = Event(activity, speed=u(0.6, 1.5), amplitude=u(0.6, 1.2), hold_s=u(0.3, 1.2), wave_hz=u(1.5, 2.5),
                  wave_cycles=int(rng.integers(1, 4)), side=str(rng.choice(["r", "l"])),
                  backward=bool(rng.random() < 0.5), squat=u(0, 1))
    latest = radar.duration - 0.2 - event_duration(event)
    if latest < 0.3:
        raise ValueError(f"a {radar.duration:.1f} s recording is too short for a {event_duration(event):.1f} s "
                         f"{activity} with 0.5 s of idle around it; raise the radar's n_frames")
    fidget = str(rng.choice(["", "r_arm", "l_arm", "trunk"]))
    return Recording(event, onset_s=u(0.3, latest), height=u(1.50, 1.95), build=u(0.85, 1.2), breath_hz=u(0.2, 0.4),
                     breath_mm=u(2, 5), breath_phase=u(0, 2 * np.pi), sway_hz=u(0.1, 0.3), sway_deg=u(0.1, 0.4),
                     sway_phase=u(0, 2 * np.pi), fidget_joint=fidget,
                     fidget_deg=u(5, 15) if fidget == "trunk" else u(15, 50), fidget_s=u(0, radar.duration - 1),
                     fidget_d=u(0.4, 1.0), fidget_hold_s=u(0, 1), aspect_deg=u(-75, 75), range_m=u(2, 5),
                     snr_db=u(5, 20))


def body_points(rec, t):
    """The 17 body points (N, 17, 3) of a recording at times t (N,) s from its start, body frame (feet at 0)."""
    start, moves = script(rec.event)
    q = joint_angles(start, moves, t - rec.onset_s)  # (N,) per joint, degrees
    # Idle motion on top: breathing rocks the trunk by +- breath_mm at the neck, sway rocks the body on its ankles.
    breath_deg = np.degrees(rec.breath_mm / 1e3 / (TORSO * rec.height))
    q["trunk"] = q["trunk"] + breath_deg * np.sin(2 * np.pi * rec.breath_hz * t + rec.breath_phase)
    q["shank"] = q["shank"] + rec.sway_deg * np.sin(2 * np.pi * rec.sway_hz * t + rec.sway_phase)
    if rec.fidget_joint:
        j = rec.fidget_joint
        q[j] = q[j] + rec.fidget_deg * bump(t, rec.fidget_s, rec.fidget_d, rec.fidget_hold_s)
    return pose_points(q, rec.height)  # (N, 17, 3)


def world_points(rec, radar):
    """Body points (N / d + 1, 17, 3) every d = radar.decimation samples, radar frame (radar at 0, z up)."""
    n = np.arange(0, radar.n_samples + 1, radar.decimation)  # (N / d + 1,) slow-time sample indices
    return body_to_radar(body_points(rec, n / radar.fs), rec.aspect_deg, rec.range_m)


def simulate_spectrogram(rec, radar, rng, segments=None, noise=True):
    """dB spectrogram (F, T) and Doppler frequencies (F,) of one recording."""
    x = returns(world_points(rec, radar), radar, radius_scale=rec.build * rec.height / 1.8,
                snr_db=rec.snr_db if noise else None, rng=rng, segments=segments)  # (N,)
    return spectrogram(x, radar)


def render(activity, index, height, seed=0, radar=RADAR):
    """Image `index` of `activity`: uint8 (height, round(5 height / 3), 3) through viridis, and its Recording."""
    rng = recording_rng(seed, activity, index)
    rec = draw_recording(activity, rng, radar)
    S_db, _ = simulate_spectrogram(rec, radar, rng)
    return spectrogram_image(S_db, height, radar, width=image_width(height), cmap=viridis), rec


def image_path(out, activity, index, per_class):
    """out/<activity>/III.png, zero-padded so names sort in index order."""
    return Path(out) / activity / file_name(index, per_class)


def _write_one(job):
    """Worker: render one image and save it (atomically)."""
    out, activity, index, per_class, height, seed = job
    img, _ = render(activity, index, height, seed)
    save_png(img, image_path(out, activity, index, per_class))


def is_complete(out, per_class):
    """True when `out` holds metadata.json and all 6 x per_class images."""
    out = Path(out)
    return (out / "metadata.json").is_file() and all(
        image_path(out, c, i, per_class).is_file() for c in CLASSES for i in range(per_class))


def generate_activities(out, per_class=150, height=64, seed=0, workers=None, progress=True):
    """Write out/<activity>/III.png and out/metadata.json; a rerun only renders what is missing.

    Like microdoppler.generate_dataset: deterministic for a seed whatever `workers`, PNGs written atomically, safe
    to run twice at once on one folder, and a folder made with other settings is refused.
    """
    out = Path(out)
    for name, value in (("--height", height), ("--per-class", per_class)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise DataError(f"{name} must be a positive integer, got {value!r}")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file; choose a folder path for --out")
    settings = {"version": VERSION, "seed": seed, "height": height, "width": image_width(height),
                "radar": asdict(RADAR)}
    check_settings(out, settings)

    # 1. Metadata first (cheap): every recording's drawn values.
    paths = {(c, i): image_path(out, c, i, per_class) for c in CLASSES for i in range(per_class)}
    meta = {"settings": settings, "classes": list(CLASSES), "per_class": per_class,
            "images": {f"{c}/{path.name}": asdict(draw_recording(c, recording_rng(seed, c, i)))
                       for (c, i), path in paths.items()}}
    try:
        for c in CLASSES:
            (out / c).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the output folder {out} ({e.strerror}); choose another --out") from None
    remove_temporaries(out, folders="*")
    write_json(out / "metadata.json", meta)

    # 2. Images still missing, rendered in parallel; temporaries are removed even on Ctrl-C.
    jobs = [(out, c, i, per_class, height, seed) for (c, i), path in paths.items() if not path.is_file()]
    try:
        run_jobs(_write_one, jobs, workers, f"simulating {out}", progress)
    finally:
        remove_temporaries(out, folders="*")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinyldm.data.activities", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created; a rerun completes a partial set)")
    p.add_argument("--per-class", type=int, default=150, help="recordings per activity (default 150)")
    p.add_argument("--height", type=int, default=64,
                   help="image height in pixels; the width is round(5 height / 3), e.g. 64 -> 107 (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the recordings (default 0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    args = p.parse_args(argv)
    try:
        generate_activities(args.out, args.per_class, args.height, args.seed, args.workers)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {len(CLASSES)} activities x {args.per_class} images "
          f"({args.height}x{image_width(args.height)}) to {args.out}")


if __name__ == "__main__":
    main()
