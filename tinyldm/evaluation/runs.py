"""The three ways in: a generated folder against real data, a train_ldm.py run, a train_vae.py run.

Each builds the real reference (classifier reused or trained), measures, writes report.json / report.md / plots
to out_dir, prints the headline lines and returns the report as a dict.

Unless a classifier_dir is given, the classifier comes from the shared cache ($TINYLDM_CACHE/classifier, else
~/.cache/tinyldm/classifier) when one was trained on the same data with the same settings, and is copied into
the run's own classifier folder either way, so that the run folder stays self-contained. use_cache=False (and
an explicit classifier_dir) neither read nor write the cache.
"""

from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from tinyldm.data import DataError
from tinyldm.diffusion import SamplingConfig
from tinyldm.evaluation.classifier import cache_root
from tinyldm.evaluation.memorisation import near_copies_picture
from tinyldm.evaluation.metrics import topk_correct
from tinyldm.evaluation.pipeline import (
    Reference,
    build_reference,
    evaluate_images,
    headline,
    images_per_user,
    measure_tstr,
    read_generated,
    real_format,
    reconstruction_metrics,
    seed_spread,
)
from tinyldm.evaluation.report import headline_lines, write_report
from tinyldm.evaluation.sweep import (
    GUIDANCE_SCALES,
    SWEEP_SAMPLERS,
    SWEEP_STEPS,
    best_guidance,
    choose_guidance,
    guidance_sweep,
    sample_users,
    sampler_sweep,
    save_guidance,
    settings_record,
)
from tinyldm.generate import DEFAULT_SAMPLING, guidance_choice, run_guidance
from tinyldm.runs import RunError, check_writable, read_config
from tinyldm.viz import to_uint8


def _header(ref: Reference, source: str, kind: str, val_fraction: float, split_seed: int) -> dict:
    """The part of every report that describes the real data and the classifier."""
    res, cfg = ref.record["results"], ref.record["config"]
    return {"kind": kind, "source": source, "classes": ref.classes,
            "real": {"root": str(ref.root), "image_size": ref.image_size, "channels": ref.channels,
                     "n_train": len(ref.train_y), "n_val": len(ref.val_y), "val_fraction": val_fraction,
                     "split_seed": split_seed},
            "classifier": {"folder": str(ref.folder), "val_acc": res["val_acc"],
                           "val_top5": topk_correct(ref.val_logits, ref.val_y, 5).float().mean().item(),
                           "best_epoch": res["best_epoch"], "best_step": res["best_step"],
                           "train_seconds": res["train_seconds"], "feature_dim": cfg["feature_dim"]}}


def _pairs_picture(ref: Reference, x: torch.Tensor, generated: dict) -> Image.Image:
    """The closest generated/training pairs in pixels (near_copies.png), from evaluate_images' result for x."""
    pixels = generated["memorisation"]["pixels"]
    return near_copies_picture(x, ref.train_x, pixels["closest"], pixels["threshold"])


def _finish(report: dict, out_dir: Path, quiet: bool, near_copies: Image.Image | None = None) -> dict:
    report = write_report(out_dir, report, near_copies)
    if not quiet:
        print("== evaluation ==")
        for line in headline_lines(report):
            print("  " + line)
    return report


def evaluate_folders(real, generated, out_dir, image_size: int | None = None, channels: int | None = None,
                     val_fraction: float = 0.1, split_seed: int = 0, classifier_dir=None, with_tstr: bool = True,
                     seed: int = 0, device="cpu", retrain: bool = False, quiet: bool = False,
                     use_cache: bool = True) -> dict:
    """Generated images in `generated`/<user>/*.png against the real data folder (or CSV) `real`.

    image_size/channels default to those of the first real image; the classifier is kept in classifier_dir
    (default out_dir/classifier, and the shared cache: see above) and reused while the real data and split stay
    the same.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir)
    size, ch = real_format(real)
    image_size, channels = image_size or size, channels or ch
    cache = cache_root() if use_cache and classifier_dir is None else None
    ref = build_reference(real, image_size, channels, val_fraction, split_seed,
                          classifier_dir or out_dir / "classifier", seed, device, retrain, cache)
    x, y = read_generated(generated, ref)
    report = _header(ref, str(generated), "folders", val_fraction, split_seed)
    report["generated"] = evaluate_images(ref, x, y, with_tstr, seed)
    return _finish(report, out_dir, quiet, _pairs_picture(ref, x, report["generated"]))


def write_pngs(folder: Path, x, y, classes: list[str], channels: int) -> None:
    """Images (N, C, H, W) of users y as folder/<user>/NNN.png, sample.py's layout (re-readable as --generated)."""
    counts = {}
    for img, k in zip(to_uint8(x), y.tolist()):
        (folder / classes[k]).mkdir(parents=True, exist_ok=True)
        i = counts[k] = counts.get(k, -1) + 1
        Image.fromarray(img if channels == 3 else img[..., 0]).save(folder / classes[k] / f"{i:03d}.png")


def other_seeds(model, vae, cfg: dict, ref: Reference, first: dict, first_images: tuple[torch.Tensor, torch.Tensor],
                n_per_user: int, sampling: SamplingConfig, seeds: int, with_tstr: bool, device, guide=None
                ) -> tuple[dict, dict]:
    """The headline numbers at sampling seeds seed … seed + seeds − 1 (`first`: seed's, already measured, of
    `first_images` (x, y)), each with new noise and a new draw of the real floor, and their spread → (that record,
    TSTR: measure_tstr's entry, trained once on the images of all seeds together; {} without with_tstr).

    TSTR pools the seeds (n_per_user × seeds per user): one seed's few images per user cap a classifier by their
    count, not by what they show (docs/evaluation.md, "TSTR")."""
    per_seed, images = [headline(first)], [first_images]
    for s in range(sampling.seed + 1, sampling.seed + seeds):
        x, y, _ = sample_users(model, vae, cfg, n_per_user, replace(sampling, seed=s), device, guide=guide)
        images.append((x, y))
        per_seed.append(headline(evaluate_images(ref, x, y, with_tstr=False, seed=s)))
    record = {"seeds": list(range(sampling.seed, sampling.seed + seeds)), "per_seed": per_seed,
              "spread": seed_spread(per_seed)}
    pooled = torch.cat([x for x, _ in images]), torch.cat([y for _, y in images])
    return record, measure_tstr(ref, *pooled, sampling.seed) if with_tstr else {}


def sweeps(model, vae, cfg: dict, ref: Reference, sampling: SamplingConfig, guidance_scales, samplers, steps_list,
           n_per_user: int, device, guide=None) -> dict:
    """Quality against cost: guidance scales, and samplers × steps, each at n_per_user images of every user."""
    g = guidance_sweep(model, vae, cfg, ref, guidance_scales, n_per_user, sampling, device, guide)
    s = sampler_sweep(model, vae, cfg, ref, samplers, steps_list, n_per_user, sampling, device, guide)
    return {"n_per_user": n_per_user, "guidance": g, "samplers": s, "best_guidance": best_guidance(g) if g else None}


def run_reference(run_dir: Path, cfg: dict, classifier_dir: Path, seed: int, device, retrain: bool, cache,
                  data: Path | None = None) -> tuple[Reference, dict]:
    """The real reference of a run → (reference, split). The split is the one the run read its data with; for a
    train_ldm.py run on a train_vae.py autoencoder, that autoencoder's. data: where the run's data is now, if it
    moved (default: the folder its config.json names)."""
    from tinyldm.loading import autoencoder_split, data_split

    if cfg["kind"] == "ldm":
        split, root, classes = data_split(cfg), cfg["data"], cfg["classes"]
    else:
        split, root, classes = autoencoder_split(cfg), cfg["data"]["root"], cfg["data"]["classes"]
    root = data if data is not None else root
    ref = build_reference(root, split["image_size"], split["channels"], split["val_fraction"], split["seed"],
                          classifier_dir, seed, device, retrain, cache, split["aspect"])
    if ref.classes != classes:
        raise DataError(f"the data at {root} now has users {ref.classes[:3]}… ({len(ref.classes)}) but {run_dir} "
                        f"was trained on {classes[:3]}… ({len(classes)}); evaluate against the run's data (pass "
                        "--data DIR where it is now)")
    return ref, split


def evaluable_config(run_dir: Path) -> dict:
    """The config.json of a run this evaluation can measure: a train_ldm.py run on user ids, or a train_vae.py run."""
    cfg = read_config(run_dir)
    if cfg.get("kind") not in ("ldm", "autoencoder"):
        raise RunError(f"{run_dir} is a {cfg.get('kind')!r} run; pass a train_ldm.py or train_vae.py run folder")
    if cfg.get("backbone_config", {}).get("cond_type") == "text":
        raise RunError(f"{run_dir} is conditioned on captions, not user ids, and this evaluation asks for users; "
                       "measure whether its images follow their captions with benchmarks/caption_following.py")
    return cfg


def run_sampling(run_dir: Path, sampling: SamplingConfig | None, choose: bool, model, vae, cfg: dict,
                 ref: Reference, device) -> tuple[SamplingConfig, dict | None, torch.nn.Module | None]:
    """The settings a run is measured at → (sampling, how its guidance scales were chosen or None, the run's guide
    where autoguidance needs it or None). sampling None: sample.py's defaults with the run's own w and w_a
    (run_guidance). choose: choose them now (choose_guidance, with autoguidance where the run has its guide), write
    them to RUN/guidance.json and measure at them; else the saved choice is reported where it is what is measured."""
    from tinyldm.loading import has_guide, load_guide

    if sampling is None:
        w, w_a, _ = run_guidance(run_dir)
        sampling = replace(DEFAULT_SAMPLING, cfg_scale=w, ag_scale=w_a)
    # w_a ≠ 1 without a guide is load_guide's one-line error; a choice only tries autoguidance with one.
    guide = load_guide(run_dir, device) if sampling.ag_scale != 1.0 or (choose and has_guide(run_dir)) else None
    if choose:
        choice = choose_guidance(model, vae, cfg, ref, sampling=sampling, device=device, guide=guide)
        save_guidance(run_dir, choice)
        return replace(sampling, cfg_scale=choice["cfg_scale"], ag_scale=choice["ag_scale"]), choice, guide
    choice = guidance_choice(run_dir)
    chosen = choice is not None and (choice["cfg_scale"], choice["ag_scale"]) == (sampling.cfg_scale,
                                                                                  sampling.ag_scale)
    return sampling, choice if chosen else None, guide


def evaluate_run(run_dir, out_dir=None, *, data=None, sampling: SamplingConfig | None = None,
                 n_per_user: int | None = None, seeds: int = 3, with_tstr: bool = True, sweep: bool = False,
                 guidance_scales=GUIDANCE_SCALES, samplers=SWEEP_SAMPLERS, steps_list=SWEEP_STEPS,
                 sweep_n_per_user: int = 4, classifier_dir=None, device="cpu", weights: str = "ema",
                 retrain: bool = False, quiet: bool = False, use_cache: bool = True, choose: bool = False) -> dict:
    """Evaluate a train_ldm.py run (sample n_per_user images of every user with `sampling`, then measure;
    optionally sweep guidance and samplers × steps) or a train_vae.py run (reconstructions); data: the run's data
    where it is now, if it moved (checked to hold the same users). sampling None: as sample.py samples (the run's
    own guidance scale); sampling.seed also seeds the classifiers and KID's subsets. n_per_user None:
    images_per_user (≥ 240 images in all). seeds > 1 repeats the measurement at the next sampling seeds and reports
    the spread (other_seeds); TSTR trains once, on the images of all seeds. choose: first choose the run's guidance
    scale on its training images (run_sampling). Writes to out_dir (default RUN/eval), keeps the classifier in
    classifier_dir (default RUN/classifier, and the shared cache: see above), prints the headline lines, returns the
    report."""
    seed = (sampling or DEFAULT_SAMPLING).seed
    from tinyldm.loading import load_autoencoder, load_ldm, load_run_vae  # the models are only needed for runs

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "eval"
    cache = cache_root() if use_cache and classifier_dir is None else None
    classifier_dir = Path(classifier_dir) if classifier_dir is not None else run_dir / "classifier"
    cfg = evaluable_config(run_dir)
    check_writable(out_dir)

    # 1. The real reference, on the split the run read its data with: its validation images were never trained on.
    ref, split = run_reference(run_dir, cfg, classifier_dir, seed, device, retrain, cache, data)
    report = _header(ref, str(run_dir), cfg["kind"], split["val_fraction"], split["seed"])
    vae = load_run_vae(cfg, device) if cfg["kind"] == "ldm" else load_autoencoder(run_dir, device)[0]
    report["autoencoder"] = reconstruction_metrics(vae, ref)
    if cfg["kind"] == "autoencoder":
        return _finish(report, out_dir, quiet)

    # 2. Sample every user with sample.py's code path, keep the PNGs, measure.
    n_per_user = images_per_user(len(ref.classes), n_per_user)
    if n_per_user < 1 or seeds < 1:
        raise ValueError(f"n_per_user {n_per_user}, seeds {seeds}: at least 1 image per user and 1 seed")
    model, _ = load_ldm(run_dir, device, weights)
    sampling, choice, guide = run_sampling(run_dir, sampling, choose, model, vae, cfg, ref, device)
    if choice is not None:
        report["guidance_choice"] = choice  # how this w was chosen
    x, y, seconds = sample_users(model, vae, cfg, n_per_user, sampling, device, progress=not quiet, guide=guide)
    write_pngs(out_dir / "generated", x, y, ref.classes, ref.channels)
    report["settings"] = {**settings_record(sampling),
                          "n_per_user": n_per_user, "seeds": seeds, "weights": weights, "sample_seconds": seconds,
                          "generated": str(out_dir / "generated")}
    report["generated"] = evaluate_images(ref, x, y, with_tstr=False, seed=seed)

    # 3. The same measurement with other noise: how much of a number is the draw; TSTR on all seeds' images.
    report["seeds"], pooled_tstr = other_seeds(model, vae, cfg, ref, report["generated"], (x, y), n_per_user,
                                               sampling, seeds, with_tstr, device, guide)
    report["generated"].update(pooled_tstr)

    # 4. Quality against cost.
    if sweep:
        report["sweep"] = sweeps(model, vae, cfg, ref, sampling, guidance_scales, samplers, steps_list,
                                 sweep_n_per_user, device, guide)
    return _finish(report, out_dir, quiet, _pairs_picture(ref, x, report["generated"]))

