"""Captions: one sentence per image, the text condition of `train_ldm.py --cond text`.

A data folder's captions live in `captions.json` beside its user folders, {"user_03/012.png": "…", …}, one entry per
image file (every window of a wide image shares its file's caption). Bring your own for your recordings, or let the
walking simulator write them: each of its images is one recording of one person whose parameters it draws
(tinyldm/data/microdoppler.py), so the caption states them, e.g.

    "a 1.84 m person walking at 1.31 m/s, 1.08 s gait cycle, wide arm swing"

height H, this recording's speed V·(1 + jitter), the gait cycle Dc = cadence · 1.346/√(V/Ht) s (walking.py) and the
arm swing in three words. What the caption leaves out (aspect angle, range, SNR) the model must learn to vary.
"""

import json
import math
from pathlib import Path

from tinyldm.data.errors import DataError
from tinyldm.data.walking import LOWER_LEG, UPPER_LEG

CAPTIONS = "captions.json"
ARM_SWING = ((0.87, "small"), (1.13, "normal"), (math.inf, "wide"))  # arm_gain 0.6–1.4 in thirds


def walking_caption(person: dict, nuisance: dict) -> str:
    """The caption of one simulated recording, from metadata.json's person and nuisance entries."""
    speed = person["speed"] * (1 + nuisance["speed_jitter"])  # V of this recording, m/s
    cycle = person["cadence"] * 1.346 / math.sqrt(speed / ((UPPER_LEG + LOWER_LEG) * person["height"]))  # Dc, s
    arms = next(word for limit, word in ARM_SWING if person["arm_gain"] < limit)
    return f"a {person['height']:.2f} m person walking at {speed:.2f} m/s, {cycle:.2f} s gait cycle, {arms} arm swing"


def write_walking_captions(folder) -> Path:
    """captions.json for a folder the walking simulator wrote (its metadata.json names every person and image)."""
    folder = Path(folder)
    meta_path = folder / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
        people, images = meta["people"], meta["images"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{meta_path}: cannot read the simulator's people and images ({e}); captions.json can "
                        "only be written for a folder made by python -m tinyldm.data.microdoppler") from None
    captions = {name: walking_caption(people[name.split("/")[0]], nuisance) for name, nuisance in images.items()}
    tmp = folder / f".{CAPTIONS}.tmp"
    tmp.write_text(json.dumps(captions, indent=0, sort_keys=True))
    tmp.replace(folder / CAPTIONS)
    return folder / CAPTIONS


def read_captions(folder) -> dict[str, str]:
    """{relative file path: caption} from folder/captions.json; a simulator folder without one gets it written."""
    folder = Path(folder)
    path = folder / CAPTIONS
    if not path.is_file() and (folder / "metadata.json").is_file():
        print(f"captions: writing {path} from the simulator's metadata.json")
        write_walking_captions(folder)
    if not path.is_file():
        raise DataError(f"{folder} has no {CAPTIONS}: --cond text needs one caption per image, as "
                        '{"user_00/000.png": "a caption", ...} in that file')
    try:
        captions = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); it should map file paths to captions") from None
    if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
        raise DataError(f"{path} should be one JSON object mapping file paths to caption strings")
    return captions


def captions_of(root, paths) -> list[str]:
    """The caption of each image file in `paths` (absolute, under root), in order; a missing one is named."""
    captions, root = read_captions(root), Path(root)
    names = [Path(p).relative_to(root).as_posix() for p in paths]  # the keys of captions.json
    missing = [name for name in names if name not in captions]
    if missing:
        raise DataError(f"{root / CAPTIONS} has no caption for {len(missing)} image(s), e.g. {missing[0]}; add them "
                        "or remove those files")
    return [captions[name] for name in names]
