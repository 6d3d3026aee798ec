"""tinyldm's default data set: simulated 24 GHz CW micro-Doppler spectrograms of 31 people walking.

    python -m tinyldm.data.microdoppler --out data/md --users 31 --per-user 150 --size 256 [--gray] [--seed 0]

writes data/md/user_00/000.png ..., data/md/metadata.json and data/md/captions.json (captions.py). Each user is
one person (height, speed, cadence, arm swing, hip and knee gains, build, left-right asymmetry), drawn once from
(seed, user), so user k is the same person whatever --users says. Each image is a fresh 3.3 s recording of that
person: start phase of the gait, aspect angle, range, +-3 % speed, SNR and a sub-column time offset are drawn from
(seed, user, image).
Kinematics: walking.py (Boulic-Thalmann); radar and spectrogram: radar.py.
"""

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tinyldm.data.captions import write_walking_captions
from tinyldm.data.errors import DataError
from tinyldm.data.radar import RadarConfig, returns, spectrogram, spectrogram_image
from tinyldm.data.walking import LOWER_LEG, UPPER_LEG, walk

VERSION = 1  # bump when images for the same seed change; default_data_dir's cache folder carries it


@dataclass
class Person:
    """One simulated user; the factors multiply Boulic's average walker (see walking.walk)."""

    height: float  # H, m (1.50-1.95)
    speed: float  # V, m/s (0.8-1.8)
    cadence: float  # cycle-duration factor, decoupled from speed (0.93-1.07)
    arm_gain: float  # arm swing (0.6-1.4)
    hip_gain: float  # hip swing about its mean (0.85-1.15)
    knee_gain: float  # knee flexion (0.85-1.15)
    build: float  # ellipsoid radius factor: wider body, larger RCS (0.85-1.2)
    asymmetry: float  # right limbs swing (1 + a/2)x, left (1 - a/2)x (-0.1-0.1)

    @property
    def RV(self):
        return self.speed / ((UPPER_LEG + LOWER_LEG) * self.height)  # relative velocity V / Ht


@dataclass
class Nuisance:
    """What changes from one recording of the same person to the next."""

    phase0: float  # gait phase at the middle of the recording, [0, 1)
    aspect_deg: float  # angle between walking direction and line of sight at mid-recording (+-30)
    range_m: float  # horizontal distance radar-walker at mid-recording (8-14 m); the walker approaches
    speed_jitter: float  # relative change of speed for this recording (+-0.03)
    snr_db: float  # per-sample signal-to-noise ratio (10-25 dB)
    time_offset_s: float  # start of the recording within one STFT hop


def draw_person(user, seed=0):
    """User `user`'s parameters, drawn from a generator seeded with (seed, 0, user)."""
    rng = np.random.default_rng([seed, 0, user])
    u = rng.uniform
    return Person(height=u(1.50, 1.95), speed=u(0.8, 1.8), cadence=u(0.93, 1.07), arm_gain=u(0.6, 1.4),
                  hip_gain=u(0.85, 1.15), knee_gain=u(0.85, 1.15), build=u(0.85, 1.2), asymmetry=u(-0.1, 0.1))


def draw_nuisance(rng, radar):
    u = rng.uniform
    return Nuisance(phase0=u(0, 1), aspect_deg=u(-30, 30), range_m=u(8, 14), speed_jitter=u(-0.03, 0.03),
                    snr_db=u(10, 25), time_offset_s=u(0, radar.hop / radar.fs))


def world_points(person, nuisance, radar):
    """Body points (N / d + 1, 17, 3) every d = radar.decimation samples, radar frame (radar at 0, z up)."""
    n = np.arange(0, radar.n_samples + 1, radar.decimation)  # (N / d + 1,) slow-time sample indices
    time = nuisance.time_offset_s + n / radar.fs - radar.duration / 2  # 0 = middle of the recording
    body = walk(time, H=person.height, RV=person.RV * (1 + nuisance.speed_jitter), phase0=nuisance.phase0,
                cadence=person.cadence, hip_gain=person.hip_gain, knee_gain=person.knee_gain,
                arm_gain=person.arm_gain, asymmetry=person.asymmetry)  # (N / d + 1, 17, 3), x forward
    # The walker is at (range_m, 0) at time 0 and heads back towards the radar, turned by the aspect angle.
    return body_to_radar(body, nuisance.aspect_deg, nuisance.range_m)  # (N / d + 1, 17, 3)


def body_to_radar(body, aspect_deg, range_m):
    """Body-frame points (..., 3) -> radar frame: body origin at (range_m, 0, 0), body x facing the radar,
    turned by aspect_deg (0 = straight towards it); z stays up."""
    a = np.radians(aspect_deg)
    forward = np.array([-np.cos(a), np.sin(a), 0.0])
    left = np.array([-np.sin(a), -np.cos(a), 0.0])
    frame = np.stack([forward, left, [0.0, 0.0, 1.0]])  # (3, 3): rows = body axes in the radar frame
    return body @ frame + np.array([range_m, 0.0, 0.0])  # (..., 3)


def simulate_spectrogram(person, nuisance, radar, rng, segments=None, noise=True):
    """dB spectrogram (F, T) and Doppler frequencies (F,) of one recording."""
    x = returns(world_points(person, nuisance, radar), radar, radius_scale=person.build * person.height / 1.8,
                snr_db=nuisance.snr_db if noise else None, rng=rng, segments=segments)  # (N,)
    return spectrogram(x, radar)


def image_rng(seed, user, index):
    return np.random.default_rng([seed, 1, user, index])


def render(user, index, size, gray=False, seed=0, radar=None):
    """Image `index` of user `user`: uint8 (size, size, 3) jet, or (size, size) grayscale, and its Nuisance."""
    radar = radar or RadarConfig()
    rng = image_rng(seed, user, index)
    nuisance = draw_nuisance(rng, radar)
    S_db, _ = simulate_spectrogram(draw_person(user, seed), nuisance, radar, rng)
    return spectrogram_image(S_db, size, radar, gray), nuisance


def file_name(index, count):
    """III.png for image `index` of `count`, zero-padded to at least 3 digits so names sort in index order."""
    return f"{index:0{max(3, len(str(count - 1)))}d}.png"


def image_path(out, user, index, users, per_user):
    """out/user_KK/III.png, zero-padded to at least 2 and 3 digits so names sort in id order."""
    return Path(out) / f"user_{user:0{max(2, len(str(users - 1)))}d}" / file_name(index, per_user)


def save_png(img, path):
    """Write uint8 img to path under a temporary name, then rename (atomic: no half-written PNGs)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(img).save(tmp, format="PNG", compress_level=3)  # 3x faster than the default 6, +10 % size
    os.replace(tmp, path)


def _write_one(job):
    """Worker: render one image and save it."""
    out, user, index, users, per_user, size, gray, seed, radar = job
    img, _ = render(user, index, size, gray, seed, RadarConfig(**radar))
    save_png(img, image_path(out, user, index, users, per_user))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22  # exists but is not ours, or a number no process can have
    return True


def remove_temporaries(out, folders="user_*"):
    """Delete temporaries (.III.png.PID.tmp) left by dead processes; a live one may be a parallel run's."""
    for tmp in Path(out).glob(f"{folders}/.*.tmp"):
        pid = tmp.name.split(".")[-2]
        if not (pid.isdigit() and _alive(int(pid))):
            tmp.unlink(missing_ok=True)


def check_settings(out, settings):
    """Refuse (DataError) a folder whose metadata.json was written with other settings."""
    meta_path = Path(out) / "metadata.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        changed = [k for k in settings if old.get("settings", {}).get(k) != settings[k]]
        if changed:
            raise DataError(f"{out} holds a set made with other {', '.join(changed)}; choose another --out "
                            f"or delete {out}")


def write_json(path, obj):
    """Write obj as JSON under a temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_jobs(write_one, jobs, workers, desc, progress):
    """write_one(job) for every job, with a progress bar: here when workers == 1 or few jobs, else in a fork pool."""
    workers = workers or len(os.sched_getaffinity(0))
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress or not jobs)
    try:
        if workers == 1 or len(jobs) < 8:
            for job in jobs:
                write_one(job)
                bar.update()
        else:  # fork: the workers need numpy and PIL only, and fork does not re-run the caller's script
            with get_context("fork").Pool(workers) as pool:
                for _ in pool.imap_unordered(write_one, jobs, chunksize=4):
                    bar.update()
    finally:
        bar.close()


def is_complete(out, users, per_user):
    """True when `out` holds metadata.json and all users x per_user images."""
    out = Path(out)
    return (out / "metadata.json").is_file() and all(
        image_path(out, k, i, users, per_user).is_file() for k in range(users) for i in range(per_user))


def generate_dataset(out, users=31, per_user=150, size=256, gray=False, seed=0, workers=None, radar=None,
                     progress=True):
    """Write out/user_KK/III.png and out/metadata.json; a rerun only renders what is missing.

    Safe to run twice at once on the same folder (e.g. by every rank of a torchrun job): images are
    deterministic, written under per-process temporary names and renamed atomically.
    """
    radar = radar or RadarConfig()
    out = Path(out)
    for name, value in (("--size", size), ("--users", users), ("--per-user", per_user)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise DataError(f"{name} must be a positive integer, got {value!r}")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file; choose a folder path for --out")
    settings = {"version": VERSION, "seed": seed, "size": size, "gray": gray, "radar": asdict(radar)}
    check_settings(out, settings)

    # 1. Metadata first (cheap): every user's parameters and every image's nuisance values.
    paths = {(k, i): image_path(out, k, i, users, per_user) for k in range(users) for i in range(per_user)}
    meta = {"settings": settings, "users": users, "per_user": per_user,
            "people": {paths[k, 0].parent.name: asdict(draw_person(k, seed)) for k in range(users)},
            "images": {str(path.relative_to(out)): asdict(draw_nuisance(image_rng(seed, k, i), radar))
                       for (k, i), path in paths.items()}}
    try:
        for k in range(users):
            paths[k, 0].parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the output folder {out} ({e.strerror}); choose another --out") from None
    remove_temporaries(out)
    write_json(out / "metadata.json", meta)

    # 2. Images still missing, rendered in parallel; temporaries are removed even on Ctrl-C.
    jobs = [(out, k, i, users, per_user, size, gray, seed, asdict(radar))
            for (k, i), path in paths.items() if not path.is_file()]
    try:
        run_jobs(_write_one, jobs, workers, f"simulating {out}", progress)
    finally:
        remove_temporaries(out)
    write_walking_captions(out)  # one sentence per image from its person's parameters (train_ldm.py --cond text)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinyldm.data.microdoppler", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (created; a rerun completes a partial set)")
    p.add_argument("--users", type=int, default=31, help="number of people")
    p.add_argument("--per-user", type=int, default=150, help="images per person")
    p.add_argument("--size", type=int, default=256, help="image height and width in pixels")
    p.add_argument("--gray", action="store_true", help="grayscale PNGs instead of the jet colour map")
    p.add_argument("--seed", type=int, default=0, help="seed of people and recordings")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    args = p.parse_args(argv)
    try:
        generate_dataset(args.out, args.users, args.per_user, args.size, args.gray, args.seed, args.workers)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.users} users x {args.per_user} images to {args.out}")


if __name__ == "__main__":
    main()
