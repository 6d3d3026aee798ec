"""The README and the tour against the code: every default they quote is the code's, every path they name exists,
and the README stays short with its map of the code near the top (issue 31). A failure names the quoted text."""

import re
from pathlib import Path

import pytest

import tinyldm.latents
import train_ldm
import train_vae
from tinyldm.diffusion import SamplingConfig
from tinyldm.losses import AutoencoderLossWeights

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOUR = (ROOT / "docs" / "tour.md").read_text(encoding="utf-8")
LINKED_DOCS = ["README.md", "docs/tour.md", "docs/benchmarks.md", "docs/speedrun.md"]
NUMBER = r"(\d[\d,]*(?:\.\d+)?(?:e-?\d+)?)"  # 1.25, 2,210, 1e-6


def quoted(pattern: str, text: str = README, where: str = "README.md") -> tuple[str, ...]:
    """The groups of the one line of `text` that matches `pattern` (commas in numbers dropped)."""
    found = re.search(pattern, text)
    assert found, f"{where} no longer quotes {pattern!r}; update the doc or this test"
    return tuple(g.replace(",", "") if g is not None else g for g in found.groups())


def test_readme_is_short_and_maps_the_code_in_its_first_80_lines():
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move measurements to docs/benchmarks.md"
    head = "\n".join(lines[:80])
    assert "## Map of the code" in head
    # The whole map table (every row, up to the blank line after it) sits within the first 80 lines.
    start = lines.index("## Map of the code")
    end = next(i for i in range(start + 3, len(lines)) if not lines[i].startswith("|"))
    assert end <= 80, f"the code map ends at line {end}; it must end within the first 80 lines"
    for name in ("train_vae.py", "train_ldm.py", "sample.py", "evaluate.py", "tinyldm/latents.py",
                 "tinyldm/loading.py", "tinyldm/interop/", "tinyldm/models/", "tinyldm/diffusion/sampling.py"):
        assert f"`{name}" in head, f"the code map does not name {name}"
    for command in ("make demo", "make test", "make demo-256", "make test-all"):
        assert f"{command} " in head


def test_sampling_defaults_quoted_in_the_readme_are_samplingconfigs():
    sampler, steps, spacing, w, phi, w_a, seed = quoted(
        r"Defaults \(`SamplingConfig`\): sampler `(\w+)`, (\d+) steps, `(\w+)` spacing, guidance w = " + NUMBER
        + r", rescale φ = " + NUMBER + r",\s+autoguidance w_a = " + NUMBER + r" \(off\), seed (\d+)")
    d = SamplingConfig()
    assert (sampler, int(steps), spacing) == (d.sampler, d.steps, d.spacing)
    assert (float(w), float(phi), float(w_a), int(seed)) == (d.cfg_scale, d.cfg_rescale, d.ag_scale, d.seed)
    # Every "guidance 1.25" / "guidance w = 1.25" the README states for the demos is the default too.
    for value in re.findall(r"\(guidance (?:w = )?" + NUMBER + r"\)", README):
        assert float(value) == d.cfg_scale, f"README.md quotes (guidance {value}); the default is {d.cfg_scale}"


def test_the_tour_quotes_the_current_default_guidance():
    (now,) = quoted(r"\(now " + NUMBER + r": the best FD", TOUR, "docs/tour.md")
    assert float(now) == SamplingConfig().cfg_scale


def test_autoencoder_loss_weights_quoted_in_the_readme_are_the_codes():
    kl, lpips, fft = quoted(r"Loss = L1 \+ " + NUMBER + r"·KL \+ " + NUMBER + r"·LPIPS \+ " + NUMBER + r"·FFT")
    _, script = train_vae.parse_args([])  # what a user gets from the command line
    library = AutoencoderLossWeights()
    assert (float(kl), float(lpips), float(fft)) == (script.kl_weight, script.perceptual_weight, script.freq_weight)
    assert (float(kl), float(lpips), float(fft)) == (library.kl, library.perceptual, library.freq)


@pytest.mark.parametrize("preset", ["tiny", "compact", "seed"])
def test_train_vae_recipes_in_the_readme_table_are_recipes(preset):
    length, unit, batch, crops, lr, warmup, decay = quoted(
        rf"\| `{preset}` \| [^|]+ \| {NUMBER} (steps|epochs) \| (\d+) \| (\d+×\d+|whole images) \| "
        + NUMBER + r", (\d+ steps|none), (\w+) \|")
    r = train_vae.RECIPES[preset]
    assert int(length) == r["max_steps" if unit == "steps" else "epochs"]
    assert int(batch) == r["batch_size"]
    assert (0 if crops == "whole images" else int(crops.split("×")[0])) == r["crop_size"]
    assert float(lr) == r["lr"]
    assert (0 if warmup == "none" else int(warmup.split()[0])) == r["warmup"]
    assert decay == r["lr_schedule"]


def test_train_ldm_recipe_and_condition_dropout_in_the_readme_are_the_codes():
    shift, steps, batch, lr, warmup, decay, ema = quoted(
        r"rectified flow with\s+timestep shift " + NUMBER + r", " + NUMBER + r" optimizer steps of batch (\d+), AdamW "
        + r"lr " + NUMBER + r" with (\d+) warmup steps and (\w+) decay to 0,\s+EMA " + NUMBER)
    r = train_ldm.FAST_RECIPE
    assert r["prediction"] == "flow"
    assert (float(shift), int(steps), int(batch)) == (r["flow_shift"], r["max_steps"], r["batch_size"])
    assert (float(lr), int(warmup), decay, float(ema)) == (r["lr"], r["warmup"], r["lr_schedule"], r["ema_decay"])
    assert all(train_ldm.RECIPES[name] is r for name in ("tiny", "small"))
    compact_steps, compact_batch = quoted(r"\*\*compact\*\* the same with " + NUMBER + r" steps of batch (\d+)")
    assert train_ldm.RECIPES["compact"] == r | {"max_steps": int(compact_steps), "batch_size": int(compact_batch)}
    (dropout,) = quoted(r"condition dropout " + NUMBER)
    _, script = train_ldm.parse_args([])
    assert float(dropout) == script.cond_dropout


def test_latent_transform_named_in_the_readme_exists():
    names = set(re.findall(r"`(\w+)\(z0?, scale, shift\)`|`(measure_scale)\(z\)`", README))
    names = {n for pair in names for n in pair if n}
    assert names, "README.md no longer names the latent transform's functions"
    for name in names:
        assert callable(getattr(tinyldm.latents, name, None)), f"README.md names tinyldm.latents.{name}: missing"


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_relative_links_and_named_paths_exist(doc):
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    missing = []
    # Markdown links and images: [text](target), relative to the document; anchors and web addresses skipped.
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        target = target.split("#")[0]
        if target and not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
            missing.append(target)
    # Paths in backticks that name the repository's own files (relative to its root), and bare script names (a bare
    # `report.md` is an output, not one of ours).
    for name in re.findall(r"`((?:tinyldm|docs|tests|benchmarks|scripts)/[\w./-]*|[\w-]+\.(?:py|sh))", text):
        name = name.rstrip("/.")
        if "/" in name:
            exists = (ROOT / name).exists()
        else:  # a bare file name (`dpm_solver.py` in the map): somewhere in the repository's own folders
            exists = any(ROOT.glob(name)) or any(
                any((ROOT / top).rglob(name)) for top in ("tinyldm", "docs", "tests", "benchmarks", "scripts"))
        if not exists:
            missing.append(name)
    assert not missing, f"{doc} names paths that do not exist: {sorted(set(missing))}"
