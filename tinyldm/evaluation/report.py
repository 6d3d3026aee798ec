"""Writing what was measured: report.json (everything), report.md (tables a person reads), PNG plots, headline."""

import math
from pathlib import Path

from PIL import Image

from tinyldm.evaluation.memorisation import PIXEL_SIZE
from tinyldm.evaluation.plots import plot_bars, plot_confusion
from tinyldm.runs import atomic_write_json
from tinyldm.viz import plot_curves

PLOT_TITLES = {"top1": "condition accuracy (top-1)", "fd": "Frechet distance (FD)"}  # ASCII: PIL's font lacks "é"
HOW_TO_READ = """\
## How to read these numbers
- Everything is measured by a user-ID classifier trained on the real training split and early-stopped on the
  real validation split. Its validation accuracy is the **ceiling**: what unseen real recordings score.
  Generated images near it are as recognisable as real ones; above it (strong guidance) usually means
  exaggerated, too-typical images: check recall and FD.
- **Condition accuracy**: share of images made for user k that the classifier calls user k. Near the ceiling
  = identities are right; near 1/users = the condition is ignored.
- **Fréchet distance (FD)** and **KID**: distance between the real-validation and the generated feature
  distributions (0 = same). FD grows as the sample shrinks, so compare it only at the same number of images,
  and against the *real floor*: real training images vs real validation images at the same count.
  KID is unbiased (≈ 0 for samples of one distribution, can be slightly negative).
- **Precision / recall** (k-NN manifolds, k = 3): share of generated images that look real (fidelity) /
  share of real images the generated set covers (diversity).
- **Autoencoder reconstructions**: the classifier's accuracy on decoded real images is the practical ceiling
  of a latent diffusion model that decodes through this autoencoder.
- **TSTR / TRTR**: a fresh classifier trained only on generated images (those of all evaluation seeds together),
  tested on real validation images, against the same classifier trained on real images. Close = the generated set
  carries what tells people apart.
- **Near-copies of training images**: share of generated images closer to their nearest training image than
  95 % of real validation images are to theirs, in pixels and in classifier features. Read it against the "fresh
  real images" share (5 % per space by construction, ≤ 5 % in both); a copying generator scores up to 100 %.
  At or below that baseline is no proof of quality: images far from all real data score 0 % too.
"""


def guidance_words(settings: dict) -> str:
    """"guidance w" (and ", autoguidance w_a" where it is on) of a sampling record or a guidance choice."""
    w_a = settings.get("ag_scale", 1.0)  # reports written before autoguidance have none
    return f"guidance {settings['cfg_scale']:g}" + (f", autoguidance {w_a:g}" if w_a != 1.0 else "")


def choice_words(choice: dict) -> str:
    """The settings a guidance choice tried, "w → FD" each ("w + w_a …" where autoguidance was tried)."""
    return ", ".join(f"{p['cfg_scale']:g}" + (f" + w_a {p['ag_scale']:g}" if p.get("ag_scale", 1.0) != 1.0 else "")
                     + f" → {num(p['fd_train'])}" for p in choice["points"])


def pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def num(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def headline_lines(report: dict) -> list[str]:
    """The few lines `make demo` prints: ceiling, condition accuracy, FD, TSTR, near-copies and where the report is."""
    c, lines = report["classifier"], []
    lines.append(f"classifier ceiling (real val top-1)   {pct(c['val_acc'])}  ({report['real']['n_val']} images, "
                 f"{len(report['classes'])} users; trained in {c['train_seconds']:.0f} s)")
    g = report.get("generated")
    if g is not None:
        s = report.get("settings", {})
        how = f"{s['sampler']}, {s['steps']} steps, {guidance_words(s)}, " if s else ""
        lines.append(f"condition accuracy (generated)       {pct(g['condition_accuracy']['top1'])} top-1, "
                     f"{pct(g['condition_accuracy']['top5'])} top-5  ({how}{g['n']} images)")
        lines.append(f"Fréchet distance (classifier feats)  {num(g['fd'])}  (real floor at the same count: "
                     f"{num(g['fd_real_floor'])}); precision {num(g['precision'], 2)}, recall {num(g['recall'], 2)}")
        lines.append(f"TSTR / TRTR                          {pct(g['tstr'])} / {pct(g['trtr'])}" + tstr_count(report))
        m = g["memorisation"]
        lines.append(f"near-copies of training images       {pct(m['near_copies'])}  (pixels "
                     f"{pct(m['pixels']['near_copies'])}, features {pct(m['features']['near_copies'])}; fresh real "
                     f"images {pct(m['near_copies_real'])}, ≈ 5 % per space by construction)")
        sp = (report.get("seeds") or {}).get("spread")
        if sp and len(report["seeds"]["seeds"]) > 1:
            label = f"over {len(report['seeds']['seeds'])} seeds: mean (min–max)"
            lines.append(f"{label:37s}{spread_words(sp)}")
    a = report.get("autoencoder")
    if a is not None:
        lines.append(f"autoencoder reconstructions (val)    PSNR {a['psnr']:.2f} dB, SSIM {a['ssim']:.3f}, "
                     f"FD {num(a['fd'])}, classifier top-1 {pct(a['condition_top1'])}")
    sw = report.get("sweep")
    if sw and sw.get("guidance"):
        b = sw["best_guidance"]
        lines.append(f"best guidance scale                  {b['by_accuracy']:g} by accuracy, {num(b['by_fd'])} by FD")
    lines.append(f"report                               {report['files']['report.md']}")
    return lines


def tstr_count(report: dict) -> str:
    """'  (744 images: 3 seeds' together)': what the TSTR classifier trained on; '' where TSTR was not measured."""
    g, seeds = report["generated"], (report.get("seeds") or {}).get("seeds", [])
    if g.get("tstr") is None or not g.get("tstr_images"):
        return ""
    return f"  ({g['tstr_images']} images" + (f": {len(seeds)} seeds' together)" if len(seeds) > 1 else ")")


def spread_words(sp: dict) -> str:
    """'top-1 93.2 % (92.1–94.0), FD 2.9× floor (2.6–3.3)' from seed_spread's dict, and 'TSTR 78 % of TRTR (75–80)'
    where TSTR was measured at each seed (reports from before TSTR pooled the seeds' images)."""
    words = [f"top-1 {100 * sp['top1']['mean']:.1f} % ({100 * sp['top1']['min']:.1f}–{100 * sp['top1']['max']:.1f})",
             f"FD {sp['fd_ratio']['mean']:.2f}× floor ({sp['fd_ratio']['min']:.2f}–{sp['fd_ratio']['max']:.2f})"]
    if "tstr_ratio" in sp:
        t = sp["tstr_ratio"]
        words.append(f"TSTR {100 * t['mean']:.0f} % of TRTR ({100 * t['min']:.0f}–{100 * t['max']:.0f})")
    return ", ".join(words)


def _seeds_markdown(seeds: dict) -> list[str]:
    """The headline numbers at every evaluation seed, and their spread."""
    out = [f"### The same measurement at {len(seeds['seeds'])} seeds", "",
           "New sampling noise and a new draw of the real floor at each seed; the reference classifier stays. Read a "
           "single number as ± the spread. TSTR is measured once, on the images of all seeds together (above).", "",
           "| seed | top-1 | FD | FD / floor | near-copies |", "|---|---|---|---|---|"]
    out += [f"| {s} | {pct(h['top1'])} | {num(h['fd'])} | {num(h['fd_ratio'])} | {pct(h['near_copies'])} |"
            for s, h in zip(seeds["seeds"], seeds["per_seed"])]
    return out + ["", f"Mean (min–max): {spread_words(seeds['spread'])}.", ""]


def _near_copies_markdown(m: dict, with_picture: bool) -> list[str]:
    """memorisation()'s numbers: the share of near-copies in each space, the thresholds, the median ratios."""
    h, w = m["pixel_size"]
    px, ft = m["pixels"], m["features"]
    out = ["### Near-copies of training images", "",
           "A generated image is a near-copy when it is closer to its nearest training image than 95 % of the real "
           "validation images are to theirs: the threshold is the 5th percentile of their nearest-training distances "
           f"(Euclidean; Alaa et al. 2022, Carlini et al. 2023), in pixels (images larger than {PIXEL_SIZE}×"
           f"{PIXEL_SIZE} area-downscaled to it) and in the classifier's features; the headline counts an image "
           "flagged in both (close in pixels, and the classifier agrees it is that image). Fresh real images are "
           "near-copies ≈ 5 % of the time per space by construction (exactly: the column below); a generator that "
           "copies its training images scores up to 100 %. Median ratio: median nearest-training distance of the "
           "generated images over that of the validation images (< 1: closer to the training images than new real "
           "data is).",
           "",
           "| space | near-copies | fresh real images | threshold | median ratio |", "|---|---|---|---|---|",
           f"| pixels, compared at {h}×{w} | {pct(px['near_copies'])} | {pct(px['near_copies_real'])} | "
           f"{num(px['threshold'])} | {num(px['median_ratio'])} |",
           f"| classifier features | {pct(ft['near_copies'])} | {pct(ft['near_copies_real'])} | "
           f"{num(ft['threshold'])} | {num(ft['median_ratio'])} |",
           f"| both spaces | **{pct(m['near_copies'])}** | {pct(m['near_copies_real'])} | | |", ""]
    if with_picture:
        out += ["The closest generated/training pairs in pixels, generated above training:", "",
                "![closest generated/training pairs](near_copies.png)", ""]
    return out


def _generated_markdown(report: dict) -> list[str]:
    """The generated images' section: the metrics table, near-copies, how w was chosen, the seeds, per user."""
    g, c = report["generated"], report["classifier"]
    s = report.get("settings")
    how = (f" — {s['sampler']}, {s['steps']} steps (NFE {s['nfe']}), {guidance_words(s)}, seed "
           f"{s['seed']}, {s['sample_seconds']:.0f} s to sample") if s else ""
    acc = g["condition_accuracy"]
    out = [f"## Generated images ({g['n']}{how})", "", "| metric | value | read against |", "|---|---|---|",
           f"| condition accuracy, top-1 | **{pct(acc['top1'])}** | ceiling {pct(c['val_acc'])}; chance "
           f"{pct(1 / len(report['classes']))} |",
           f"| condition accuracy, top-5 | {pct(acc['top5'])} | ceiling {pct(c['val_top5'])} |",
           f"| Fréchet distance | **{num(g['fd'])}** | real floor {num(g['fd_real_floor'])} at the same count |",
           f"| KID | {num(g['kid'])} ± {num(g['kid_std'], 2)} | 0 |",
           f"| precision / recall | {num(g['precision'], 3)} / {num(g['recall'], 3)} | 1 / 1 |",
           f"| TSTR{tstr_count(report)} | **{pct(g['tstr'])}** | TRTR {pct(g['trtr'])} |",
           f"| near-copies of training images | **{pct(g['memorisation']['near_copies'])}** | fresh real images "
           f"{pct(g['memorisation']['near_copies_real'])}; copying 100 % |", ""]
    out += _near_copies_markdown(g["memorisation"], "near_copies.png" in report["files"])
    if report.get("guidance_choice"):
        ch = report["guidance_choice"]
        scales = (f"Guidance w = {ch['cfg_scale']:g} and autoguidance w_a = {ch['ag_scale']:g} are"
                  if ch.get("ag_scale", 1.0) != 1.0 else f"Guidance w = {ch['cfg_scale']:g} is")
        out += [f"{scales} the run's own, chosen after its training: the "
                f"{ch['chosen_by']}, {ch['n_per_user']} images per user, sampling seed {ch['seed']}; w → FD: "
                f"{choice_words(ch)}.", ""]
    if report.get("seeds") and len(report["seeds"]["seeds"]) > 1:
        out += _seeds_markdown(report["seeds"])
    out += ["### Per user", "", "| user | top-1 | most often taken for | Fréchet distance |", "|---|---|---|---|"]
    for k, name in enumerate(report["classes"]):
        row = acc["confusion"][k]
        others = [(n, j) for j, n in enumerate(row) if j != k and n > 0]
        taken = f"{report['classes'][max(others)[1]]} ({max(others)[0]}×)" if others else "–"
        out.append(f"| {name} | {pct(acc['per_user'][k])} | {taken} | {num(g['per_user_fd'][k])} |")
    out += ["", "![confusion matrix](confusion.png)", "![per-user accuracy](per_user_accuracy.png)", ""]
    return out


def _markdown(report: dict) -> str:
    r, c = report["real"], report["classifier"]
    out = [f"# Evaluation: {report['source']}", "",
           f"Real data `{r['root']}`: {len(report['classes'])} users, {r['n_train']} training and {r['n_val']} "
           f"validation images ({r['image_size']}×{r['image_size']}, {r['channels']} channel(s); split "
           f"val_fraction {r['val_fraction']}, seed {r['split_seed']}).",
           f"Classifier `{c['folder']}`: real-validation accuracy (ceiling) **{pct(c['val_acc'])}**, top-5 "
           f"{pct(c['val_top5'])}; best epoch {c['best_epoch']} ({c['best_step']} steps), "
           f"{c['train_seconds']:.0f} s to train, {c['feature_dim']}-dimensional features.", ""]
    if report.get("generated") is not None:
        out += _generated_markdown(report)
    a = report.get("autoencoder")
    if a is not None:
        out += [f"## Autoencoder reconstructions ({a['n']} real validation images)", "",
                "| PSNR | SSIM | Fréchet distance | classifier top-1 |", "|---|---|---|---|",
                f"| {a['psnr']:.2f} dB | {a['ssim']:.3f} | {num(a['fd'])} | {pct(a['condition_top1'])} |", ""]
    sw = report.get("sweep") or {}
    if sw.get("guidance"):
        p0 = sw["guidance"][0]
        out += [f"## Guidance sweep ({p0['sampler']}, {p0['steps']} steps, {sw['n_per_user']} images per user)", "",
                "| guidance w | top-1 | top-5 | FD | KID | precision | recall | s / image |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {p['cfg_scale']:g} | {pct(p['top1'])} | {pct(p['top5'])} | {num(p['fd'])} | {num(p['kid'])} | "
                f"{num(p['precision'], 2)} | {num(p['recall'], 2)} | {p['seconds_per_image']:.3f} |"
                for p in sw["guidance"]]
        b = sw["best_guidance"]
        out += ["", f"Best guidance: w = {b['by_accuracy']:g} by condition accuracy, w = {num(b['by_fd'])} by "
                f"Fréchet distance.", "", "![](guidance_accuracy.png) ![](guidance_fd.png)", ""]
    if sw.get("samplers"):
        out += [f"## Samplers × steps (guidance {sw['samplers'][0]['cfg_scale']:g}, {sw['n_per_user']} images per "
                "user)", "", "| sampler | steps | NFE | top-1 | FD | KID | s / image |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {p['sampler']} | {p['steps']} | {p['nfe']} | {pct(p['top1'])} | {num(p['fd'])} | {num(p['kid'])} | "
                f"{p['seconds_per_image']:.3f} |" for p in sw["samplers"]]
        out += ["", "![](nfe_accuracy.png) ![](nfe_fd.png)", ""]
    return "\n".join(out + [HOW_TO_READ])


def write_report(out_dir: Path, report: dict, near_copies: Image.Image | None = None) -> dict:
    """report.json, report.md and the plots into out_dir, and the picture of the closest generated/training pairs
    (memorisation.near_copies_picture) as near_copies.png when given; → report with "files" filled in."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report.json": out_dir / "report.json", "report.md": out_dir / "report.md"}
    g, classes = report.get("generated"), report["classes"]
    if g is not None:
        acc = g["condition_accuracy"]
        files["confusion.png"] = out_dir / "confusion.png"
        plot_confusion(acc["confusion"], classes, files["confusion.png"],
                       f"condition accuracy {pct(acc['top1'])} (ceiling {pct(report['classifier']['val_acc'])})")
        files["per_user_accuracy.png"] = out_dir / "per_user_accuracy.png"
        plot_bars(acc["per_user"], classes, files["per_user_accuracy.png"], "top-1 accuracy on images made for "
                  "each user", ceiling=report["classifier"]["val_acc"])
    if near_copies is not None:
        files["near_copies.png"] = out_dir / "near_copies.png"
        near_copies.save(files["near_copies.png"])
    sw = report.get("sweep") or {}
    if sw.get("guidance"):
        ws = [p["cfg_scale"] for p in sw["guidance"]]
        for key, name, log_y in (("top1", "accuracy", False), ("fd", "fd", True)):
            files[f"guidance_{name}.png"] = out_dir / f"guidance_{name}.png"
            plot_curves({key: (ws, [p[key] for p in sw["guidance"]])}, files[f"guidance_{name}.png"],
                        title=f"{PLOT_TITLES[key]} against guidance scale", xlabel="guidance scale w", log_y=log_y)
    if sw.get("samplers"):
        for key, name, log_y in (("top1", "accuracy", False), ("fd", "fd", True)):
            series = {}
            for p in sw["samplers"]:
                xs, ys = series.setdefault(p["sampler"], ([], []))
                xs.append(p["nfe"])
                ys.append(p[key])
            files[f"nfe_{name}.png"] = out_dir / f"nfe_{name}.png"
            plot_curves(series, files[f"nfe_{name}.png"], xlabel="network evaluations (NFE)", log_y=log_y,
                        title=f"{PLOT_TITLES[key]} against NFE")
    report = {**report, "files": {k: str(v) for k, v in files.items()}}
    (out_dir / "report.md").write_text(_markdown(report) + "\n")
    atomic_write_json(files["report.json"], json_safe(report))
    return report


def json_safe(obj):
    """NaN and ±inf (a user without images, identical images' PSNR) → null, so report.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
