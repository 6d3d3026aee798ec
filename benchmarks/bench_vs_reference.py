"""tinyldm against diffusers 0.42.1: the same samplers and the same networks (same weights), float32 on the CPU.

    python benchmarks/bench_vs_reference.py                              # everything (~13 min on 2 cores)
    python benchmarks/bench_vs_reference.py --only samplers,tiny         # the quick parts (~1 min)
    python benchmarks/bench_vs_reference.py --only sd1-unet --big-rounds 5 --threads 1 --json sd1.json
    python benchmarks/bench_vs_reference.py --only models --kernels      # + where each network's time goes

diffusers is no dependency of tinyldm. Install it in a scratch virtualenv that shares the project's packages:

    python -m venv --system-site-packages /tmp/dvenv && /tmp/dvenv/bin/pip install diffusers==0.42.1
    /tmp/dvenv/bin/python benchmarks/bench_vs_reference.py

Without diffusers the script says so and prints tinyldm's own timings (no ratios).

What is timed
- samplers: a trivial network model(x, t, cond) = 0.5·x (the same cost on both sides, so what is timed is the
  sampler), x 1×4×32×32, 50 steps on the scaled-linear VP schedule, trailing grid, ε prediction (flow Euler and
  flow Heun: rectified flow with shift 3 and flow prediction, against diffusers' FlowMatch schedulers); each sampler
  without and with classifier-free guidance (w = 4). tinyldm: one call of `sample`. diffusers: the usual pipeline
  loop, timed in full: set_timesteps(50), x = noise·init_noise_sigma, then per timestep scale_model_input, the
  network (on the doubled batch with guidance: u + w(c − u)), step(...).prev_sample. µs per step = time / steps
  (--steps, default 50). Each round times 10 sampling runs (one run is a few ms).
- models: the tinyldm model is built with seed 0, written with `save_pretrained` to a temporary folder and that
  folder is loaded by the diffusers class its config.json names. One forward on the same input checks that the
  two are the same network (max |difference| printed; the row is aborted when the difference relative to the
  output's scale exceeds 1e-3). "forward" is one call under no_grad in eval mode; "fwd+bwd" is forward,
  loss = mean(out²), backward, zero_grad in train mode. The autoencoders run encode → posterior mean → decode;
  the UNets and DiTs take (x, t, user id): the UNet's user table is exported as a one-hot text projection plus a
  class projection (one context token), the DiT's as class labels.
- peak RSS (SD-1.x UNet and DiT-XL/2): one fwd+bwd in a fresh subprocess per library, so the two never share a
  peak. The child notes its RSS with only the library imported, builds (tinyldm) or loads (diffusers) the model,
  notes its RSS and its peak so far (VmRSS, VmHWM), resets the kernel's peak counter (/proc/self/clear_refs) and
  reports VmHWM after the step: the resident peak of the step, weights and imports included. Not ru_maxrss: on
  Linux a child starts with its parent's peak (exec keeps the larger of the two), here the main process's several
  GB, for either library. diffusers' weights are pages of the safetensors file, mapped and read in at first use,
  so its RSS after loading is small. A third child runs tinyldm with gradient checkpointing (the config's
  `gradient_checkpointing`), and the row's note gives its peak and what it saves.
- kernels (--kernels, models only, with diffusers): each timed step once more on both sides under torch.profiler
  (3 calls; 1 for the big models), summing self CPU times: all ops, and the compute kernels both libraries call
  with the same shapes (convolution, matmul, attention, group/layer norm, forward and backward). The floor,
  diffusers' share of time in those kernels, is the ratio tinyldm would reach if every other op it runs cost
  nothing: a floor above 0.9 means no rewrite of the model files that keeps the same kernels can be 0.9× diffusers.

Rules: two untimed warm-ups per side, then --rounds rounds (--big-rounds for SD-VAE, SD-1.x UNet and DiT-XL/2,
whose fwd+bwd takes 5–20 s a call) alternating tinyldm, diffusers, tinyldm, diffusers, …
Columns: tinyldm and diffusers are each side's median over the rounds; "tinyldm / diffusers" is the median of the
per-round ratios (< 1: tinyldm is faster or smaller), with their range in brackets; "check" is the parity check.

Parts and rows (--only takes a comma-separated list of either), with the wall time each took on a 2-core AMD
EPYC at --threads 1 --rounds 2 --big-rounds 2 (another job sharing the machine), and the time expected at the
defaults (5 rounds, 3 for the big models) with one thread; two threads take roughly 0.6× that (~13 min in all):
    samplers  ddim, euler, dpmpp_2m, ddpm, euler_ancestral, heun,     0.5 min    expected 1.5 min
              lms, dpmpp_3m, dpmpp_2m_sde, flow_euler, flow_heun      (2 min at --rounds 7 and 2 threads,
              (± guidance)                                             all 11 samplers)
    big       sd-vae                                                 1.8 min             2 min
              sd1-unet (+ peak RSS)                                  5.7 min             6.5 min
              dit-xl2 (+ peak RSS)                                   4.8 min             5.5 min
    medium    dit-s2, small-unet (fwd+bwd at batch 8, 4×32×32)       3.1 min             5 min
    tiny      tiny-ae, tiny-dit, tiny-unet                           0.7 min             1.5 min
    models    big + medium + tiny
The big models need about 10 GB of memory in the main process (two copies of the network and one set of
gradients) and about 8 GB in each peak-RSS child.
"""

import argparse
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import cpu_name

from tinyldm.diffusion import SamplingConfig, Schedule, sample
from tinyldm.models.autoencoder_kl import AutoencoderKL
from tinyldm.models.dit import DiT
from tinyldm.models.unet import UNet2DConditionModel

DIFFUSERS_VERSION = "0.42.1"
INSTALL_HINT = (
    "diffusers is not installed here, so only tinyldm's timings are printed (no ratios). To compare, install it in "
    "a scratch virtualenv without touching the project env:\n"
    f"    python -m venv --system-site-packages /tmp/dvenv && /tmp/dvenv/bin/pip install diffusers=={DIFFUSERS_VERSION}"
    " && /tmp/dvenv/bin/python benchmarks/bench_vs_reference.py"
)
WARMUPS = 2  # untimed calls per side before the rounds
PARITY_TOLERANCE = 1e-3  # max |tinyldm − diffusers| / max |diffusers| above which a model row is aborted
USERS = 31  # user ids are drawn from 0 … 30: valid for every model here (31 users, or DiT's 1000 classes)

# ---- timing ----------------------------------------------------------------------------------------------------------


def seconds_per_call(fn, calls: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def time_alternating(ours, theirs, rounds: int, calls: int = 1) -> tuple[list[float], list[float] | None]:
    """Seconds per call of ours() and theirs() in each round, A/B alternating after WARMUPS untimed calls each;
    theirs=None times ours alone."""
    for _ in range(WARMUPS):
        ours()
        if theirs is not None:
            theirs()
    a, b = [], []
    for _ in range(rounds):
        a.append(seconds_per_call(ours, calls))
        if theirs is not None:
            b.append(seconds_per_call(theirs, calls))
    return a, (b if theirs is not None else None)


@dataclass
class Row:
    """One line of the table: per-round values of each side, already in `unit`."""

    what: str
    unit: str
    ours: list[float]
    theirs: list[float] | None = None
    check: str = ""

    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.theirs)] if self.theirs else []

    def as_dict(self) -> dict:
        ratios = self.ratios()
        return {"what": self.what, "unit": self.unit, "check": self.check, "tinyldm_rounds": self.ours,
                "diffusers_rounds": self.theirs, "tinyldm": median(self.ours), "diffusers": median(self.theirs),
                "ratio": median(ratios), "ratio_min": min(ratios, default=None), "ratio_max": max(ratios, default=None)}


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def number(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:#.3g}"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| what | tinyldm | diffusers | tinyldm / diffusers | check |", "|---|---:|---:|---:|---|"]
    for row in rows:
        ratios = row.ratios()
        ratio = f"{median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "–"
        lines.append(f"| {row.what} ({row.unit}) | {number(median(row.ours))} | {number(median(row.theirs))} | "
                     f"{ratio} | {row.check} |")
    return "\n".join(lines)


def report(row: Row) -> Row:
    """Print a row as soon as it is measured (the table comes at the end)."""
    d = row.as_dict()
    ratio = f", ratio {d['ratio']:.2f}" if d["ratio"] is not None else ""
    print(f"  {row.what}: tinyldm {number(d['tinyldm'])}, diffusers {number(d['diffusers'])} {row.unit}{ratio}",
          flush=True)
    return row


# ---- samplers --------------------------------------------------------------------------------------------------------

STEPS = 50  # the default of --steps (the issue's protocol; `sample`'s own default is 20)
CFG_SCALE = 4.0  # w
NOISE_SHAPE = (1, 4, 32, 32)
SAMPLER_RUNS_PER_ROUND = 10
SCHEDULER_CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        timestep_spacing="trailing", prediction_type="epsilon")
# tinyldm sampler → (name in the table, the diffusers scheduler that takes the same steps, its further settings)
SAMPLERS = {
    "ddim": ("DDIM", "DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False)),
    "euler": ("Euler", "EulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPM++(2M)", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
    "ddpm": ("DDPM", "DDPMScheduler", dict(clip_sample=False)),
    "euler_ancestral": ("Euler ancestral", "EulerAncestralDiscreteScheduler", {}),
    "heun": ("Heun", "HeunDiscreteScheduler", {}),
    "lms": ("LMS", "LMSDiscreteScheduler", {}),
    "dpmpp_3m": ("DPM++(3M)", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=3)),
    "dpmpp_2m_sde": ("DPM++(2M) SDE", "DPMSolverMultistepScheduler",
                     dict(algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="heun")),
}
STOCHASTIC = ("ddpm", "euler_ancestral", "dpmpp_2m_sde")
# The flow-matching samplers (rectified flow with SD3's shift 3, flow-velocity prediction) against diffusers'
# FlowMatch schedulers with the same shift.
FLOW_SHIFT = 3.0
FLOW_SAMPLERS = {
    "flow_euler": ("flow Euler", "FlowMatchEulerDiscreteScheduler", {}),
    "flow_heun": ("flow Heun", "FlowMatchHeunDiscreteScheduler", {}),
}


def trivial_model(x: torch.Tensor, t, cond=None) -> torch.Tensor:
    """ε̂ = 0.5·x: the same cost in both libraries, so the time measured is the sampler's own."""
    return 0.5 * x


def conditions() -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, null_cond), each a (1,) user id; the trivial model ignores them, but they travel as in real use."""
    return torch.tensor([1]), torch.tensor([USERS])


def tinyldm_sampling(sampler: str, noise: torch.Tensor, cfg_scale: float | None, options: dict | None = None,
                     timesteps: list[float] | None = None, steps: int = STEPS):
    flow = sampler in FLOW_SAMPLERS
    sched = Schedule.flow(shift=FLOW_SHIFT) if flow else Schedule.vp("scaled_linear")  # built once, as diffusers'
    cond, null_cond = conditions() if cfg_scale is not None else (None, None)  # scheduler object is
    config = SamplingConfig(sampler, steps, "trailing", cfg_scale=1.0 if cfg_scale is None else cfg_scale)

    def run() -> torch.Tensor:
        return sample(trivial_model, noise, sched, config, prediction="flow" if flow else "eps", cond=cond,
                      null_cond=null_cond, generator=torch.Generator().manual_seed(0), sampler_options=options,
                      timesteps=timesteps)

    return run


def diffusers_sampling(scheduler, noise: torch.Tensor, cfg_scale: float | None, steps: int = STEPS):
    """The loop of diffusers' pipelines, with classifier-free guidance u + w(c − u) on the doubled batch."""
    cond, null_cond = conditions()
    both = torch.cat([null_cond, cond])  # diffusers' order: unconditional first
    stochastic = "generator" in inspect.signature(scheduler.step).parameters  # Heun's and LMS's step take none

    def run() -> torch.Tensor:
        generator = {"generator": torch.Generator().manual_seed(0)} if stochastic else {}
        scheduler.set_timesteps(steps)
        x = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # FlowMatchEuler has none: it starts at noise
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x  # FlowMatch
            if cfg_scale is None:
                out = trivial_model(inp, t)
            else:
                u, c = trivial_model(torch.cat([inp] * 2), t, both).chunk(2)
                out = u + cfg_scale * (c - u)
            x = scheduler.step(out, t, x, **generator).prev_sample
        return x

    return run


def make_scheduler(diffusers, class_name: str, **settings):
    config = {"shift": FLOW_SHIFT} if class_name.startswith("FlowMatch") else SCHEDULER_CONFIG
    return getattr(diffusers, class_name)(**{**config, **settings})


def sampler_check(diffusers, sampler: str, ours, theirs, noise, cfg_scale, steps: int = STEPS) -> str:
    """The final samples' max |difference|, and for DDIM, Euler, Heun and LMS the difference once the known cause is
    removed.

    DDIM with set_alpha_to_one=False ends its last step at ᾱ_0 (t = 0), tinyldm at the data (t = −1); Euler, Heun and
    LMS on a trailing grid start at init_noise_sigma·z = σ̃_max·z, that is σ_{t0}·z in tinyldm's units, tinyldm at z,
    and diffusers' LMS keeps order 4 on its step to σ̃ = 0 (docs/coming_from_diffusers.md, items 1, 4 and 6).
    DPM++(3M) differs on purpose (D2's factor 2). The flow samplers are compared on diffusers' time grid (linspace
    in t from 1, then shifted; tinyldm's timed grid is its trailing one).
    """
    if sampler in STOCHASTIC:
        return "stochastic: other noise draws, not compared"
    if sampler in FLOW_SAMPLERS:
        scheduler = make_scheduler(diffusers, FLOW_SAMPLERS[sampler][1])
        scheduler.set_timesteps(steps)
        grid = torch.unique_consecutive(scheduler.sigmas.double())[:-1].tolist()  # the listed times, without t = 0
        diff = (tinyldm_sampling(sampler, noise, cfg_scale, timesteps=grid)() - theirs()).abs().max().item()
        return f"final sample max abs diff {diff:.1e} on diffusers' time grid"
    text = f"final sample max abs diff {(ours() - theirs()).abs().max().item():.1e}"
    if sampler == "ddim":
        _, class_name, settings = SAMPLERS["ddim"]
        to_data = make_scheduler(diffusers, class_name, **{**settings, "set_alpha_to_one": True})
        diff = (ours() - diffusers_sampling(to_data, noise, cfg_scale, steps)()).abs().max().item()
        text += f"; {diff:.1e} with set_alpha_to_one=True (diffusers' last step to the data too)"
    if sampler in ("euler", "heun", "lms"):
        sched = Schedule.vp("scaled_linear")
        _, sigma_max = sched.alpha_sigma(torch.tensor(sched.t_max, dtype=torch.float64))
        full_order = {"first_order_final": False} if sampler == "lms" else None  # diffusers' LMS: order 4 to σ = 0
        started_alike = tinyldm_sampling(sampler, noise * float(sigma_max), cfg_scale, full_order, steps=steps)
        diff = (started_alike() - theirs()).abs().max().item()
        text += (f"; {diff:.1e} with tinyldm started at σ_t0·z, as diffusers' init_noise_sigma"
                 f"{' (and first_order_final=False)' if full_order else ''}")
    if sampler == "dpmpp_3m":
        text += " (on purpose: D2's factor 2, docs/coming_from_diffusers.md)"
    return text


def bench_samplers(diffusers, rounds: int, steps: int = STEPS) -> list[Row]:
    noise = torch.randn(NOISE_SHAPE, generator=torch.Generator().manual_seed(0))
    rows = []
    for sampler, (name, class_name, settings) in {**SAMPLERS, **FLOW_SAMPLERS}.items():
        for cfg_scale in (None, CFG_SCALE):
            ours = tinyldm_sampling(sampler, noise, cfg_scale, steps=steps)
            theirs = None
            if diffusers is not None:
                theirs = diffusers_sampling(make_scheduler(diffusers, class_name, **settings), noise, cfg_scale, steps)
            a, b = time_alternating(ours, theirs, rounds, SAMPLER_RUNS_PER_ROUND)
            check = sampler_check(diffusers, sampler, ours, theirs, noise, cfg_scale, steps) if theirs else ""
            what = f"{name}{'' if cfg_scale is None else f' + CFG w={CFG_SCALE:g}'}, per step of {steps}"
            rows.append(report(Row(what, "µs", [s / steps * 1e6 for s in a],
                                   [s / steps * 1e6 for s in b] if b else None, check)))
    return rows


# ---- models ----------------------------------------------------------------------------------------------------------

def sd_vae() -> AutoencoderKL:
    return AutoencoderKL.from_preset("seed")  # Stable Diffusion's VAE


def tiny_autoencoder() -> AutoencoderKL:
    return AutoencoderKL.from_preset("tiny")


def sd1_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel.from_preset("sd1", sample_size=32)


def small_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel.from_preset("small", sample_size=32)


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel.from_preset("tiny", sample_size=16)


def dit(preset: str, **overrides) -> DiT:
    """diffusers' DiT uses time frequencies with shift 1 (pretrained.py); weights moved off the zero init so the
    parity check compares more than zeros."""
    model = DiT.from_preset(preset, timestep_freq_shift=1.0, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def dit_xl2() -> DiT:
    return dit("DiT-XL/2")


def dit_s2() -> DiT:
    return dit("DiT-S/2")


def tiny_dit() -> DiT:
    return dit("tiny", input_size=16)


@dataclass(frozen=True)
class ModelCase:
    key: str  # its name for --only
    group: str  # big | medium | tiny
    name: str  # its name in the table
    family: str  # how it is called: "vae" (encode → mean → decode), "unet" or "dit" (x, t, user id)
    build: object  # () → the tinyldm model (called after torch.manual_seed(0))
    forward_shape: tuple | None  # input of the timed forward (None: not timed)
    train_shape: tuple | None  # input of the timed forward + backward (None: not timed)
    peak_rss: bool = False  # also measure fwd+bwd peak RSS in a fresh process per library


CASES = {c.key: c for c in [
    ModelCase("sd-vae", "big", "SD-VAE", "vae", sd_vae, (1, 3, 128, 128), (1, 3, 64, 64)),
    ModelCase("sd1-unet", "big", "SD-1.x UNet", "unet", sd1_unet, (1, 4, 32, 32), (1, 4, 32, 32), peak_rss=True),
    ModelCase("dit-xl2", "big", "DiT-XL/2", "dit", dit_xl2, (1, 4, 32, 32), (1, 4, 32, 32), peak_rss=True),
    ModelCase("dit-s2", "medium", "DiT-S/2", "dit", dit_s2, None, (8, 4, 32, 32)),
    ModelCase("small-unet", "medium", "UNet 'small'", "unet", small_unet, None, (8, 4, 32, 32)),
    ModelCase("tiny-ae", "tiny", "autoencoder 'tiny'", "vae", tiny_autoencoder, (16, 3, 64, 64), (16, 3, 64, 64)),
    ModelCase("tiny-dit", "tiny", "DiT 'tiny'", "dit", tiny_dit, None, (32, 4, 16, 16)),
    ModelCase("tiny-unet", "tiny", "UNet 'tiny'", "unet", tiny_unet, None, (32, 4, 16, 16)),
]}


def build_tinyldm(case: ModelCase):
    torch.manual_seed(0)
    return case.build()


def load_diffusers_model(diffusers, folder: Path):
    """The diffusers class that the folder's config.json names (AutoencoderKL, UNet2DConditionModel, …)."""
    class_name = json.loads((Path(folder) / "config.json").read_text())["_class_name"]
    # low_cpu_mem_usage=False: the same loading with or without `accelerate` installed, and no warning about it.
    return getattr(diffusers, class_name).from_pretrained(folder, low_cpu_mem_usage=False)


def make_inputs(shape: tuple) -> dict:
    g = torch.Generator().manual_seed(1)
    B = shape[0]
    return {"x": torch.randn(shape, generator=g), "t": torch.rand(B, generator=g) * 999,  # (B, C, H, W), (B,)
            "y": torch.randint(0, USERS, (B,), generator=g)}  # (B,)


def call_tinyldm(family: str, model, inputs: dict) -> torch.Tensor:
    if family == "vae":
        return model.decode(model.encode(inputs["x"]).mean)
    return model(inputs["x"], inputs["t"], inputs["y"])


def call_diffusers(family: str, model, inputs: dict) -> torch.Tensor:
    x, t, y = inputs["x"], inputs["t"], inputs["y"]
    if family == "vae":
        return model.decode(model.encode(x).latent_dist.mean).sample
    if family == "dit":
        return model(x, t, y).sample
    # tinyldm's user table, as save_pretrained writes it: a text projection of the one-hot id (one context token)
    # and a class projection of the same row added to the time embedding.
    one_hot = F.one_hot(y, model.config.encoder_hid_dim).float()[:, None]  # (B, 1, users + 1)
    user_vector = model.encoder_hid_proj(one_hot)[:, 0]  # (B, D): the user's row of the table
    return model(x, t, encoder_hidden_states=one_hot, class_labels=user_vector).sample


def forward_step(call, family: str, model, inputs: dict):
    def step():
        with torch.no_grad():
            call(family, model, inputs)

    return step


def train_step(call, family: str, model, inputs: dict):
    def step():
        call(family, model, inputs).square().mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def parity(case: ModelCase, ours, theirs) -> tuple[float, float]:
    """(max |difference|, that divided by max |diffusers' output|) of one forward on the same input."""
    inputs = make_inputs(case.forward_shape or case.train_shape)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        a, b = call_tinyldm(case.family, ours, inputs), call_diffusers(case.family, theirs, inputs)
    diff = (a - b).abs().max().item()
    return diff, diff / b.abs().max().item()


def time_model(case: ModelCase, mode: str, ours, theirs, rounds: int, check: str) -> Row:
    shape = case.forward_shape if mode == "forward" else case.train_shape
    make_step = forward_step if mode == "forward" else train_step
    inputs = make_inputs(shape)
    for model in (ours, theirs):
        if model is not None:
            model.train(mode != "forward")
    a, b = time_alternating(make_step(call_tinyldm, case.family, ours, inputs),
                            make_step(call_diffusers, case.family, theirs, inputs) if theirs else None, rounds)
    what = f"{case.name} {mode} {'×'.join(map(str, shape))}"
    return Row(what, "ms", [s * 1e3 for s in a], [s * 1e3 for s in b] if b else None, check)


def bench_model(case: ModelCase, diffusers, rounds: int, kernels: list[str] | None = None) -> list[Row]:
    """The case's timed rows; with a `kernels` list (--kernels) its lines of the kernel table are appended to it."""
    print(f"{case.name}: building", flush=True)
    ours = build_tinyldm(case)
    theirs, rows = None, []
    with tempfile.TemporaryDirectory() as folder:
        check = ""
        if diffusers is not None:
            ours.save_pretrained(folder)
            theirs = load_diffusers_model(diffusers, folder)
            diff, rel = parity(case, ours, theirs)
            check = f"same output: max abs diff {diff:.1e} ({rel:.1e} of max)"
            print(f"  {case.name}: {check}", flush=True)
            if rel > PARITY_TOLERANCE:
                print(f"  {case.name}: ABORTED: tinyldm and diffusers disagree ({rel:.1e} of the output's scale > "
                      f"{PARITY_TOLERANCE:g}); these are not the same network, so the row is not timed", flush=True)
                return [Row(f"{case.name}", "ms", [], None, f"ABORTED: not the same network, {check}")]
        for mode in ("forward", "fwd+bwd"):
            if (case.forward_shape if mode == "forward" else case.train_shape) is not None:
                rows.append(report(time_model(case, mode, ours, theirs, rounds, check)))
                if kernels is not None and theirs is not None:
                    kernels.append(kernel_line(case, mode, ours, theirs, 1 if case.group == "big" else 3))
        del ours, theirs
        gc.collect()
        if case.peak_rss:
            rows.append(report(peak_rss_row(case, folder if diffusers is not None else None)))
    return rows


# ---- where the time goes (--kernels) ---------------------------------------------------------------------------------

# The compute kernels both libraries call, with the same shapes and the same number of times: convolutions, matrix
# products, attention and normalisation, forward and backward.
KERNELS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm", "aten::bmm",
           "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::native_group_norm",
           "aten::native_group_norm_backward", "aten::native_layer_norm", "aten::native_layer_norm_backward")


def kernel_time(step, calls: int) -> tuple[float, float]:
    """(ms per call in all ops, ms per call in KERNELS) of step() under torch.profiler, summing self CPU times."""
    step()
    with torch.profiler.profile() as prof:
        for _ in range(calls):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / calls / 1e3
    return total, sum(e.self_cpu_time_total for e in events if e.key in KERNELS) / calls / 1e3


def kernel_line(case: ModelCase, mode: str, ours, theirs, calls: int) -> str:
    """A line of the --kernels table. Its floor is diffusers' share of time in the kernels: the kernels are the same
    calls on the same shapes in both libraries, so that is the ratio tinyldm would reach if every op outside them
    cost it nothing. (Kernel times of single profiled calls vary by ±10 % from run to run; a share, read from one
    run, does not.) The profiler adds a little to every op, and diffusers runs more ops, so the floor printed is if
    anything below the true one."""
    make_step = forward_step if mode == "forward" else train_step
    inputs = make_inputs(case.forward_shape if mode == "forward" else case.train_shape)
    for model in (ours, theirs):
        model.train(mode != "forward")
    (a, a_kernels), (b, b_kernels) = (kernel_time(make_step(call, case.family, model, inputs), calls)
                                      for call, model in ((call_tinyldm, ours), (call_diffusers, theirs)))
    line = (f"| {case.name} {mode} | {a:,.1f} · {a_kernels:,.1f} ({a_kernels / a:.0%}) | {b:,.1f} · "
            f"{b_kernels:,.1f} ({b_kernels / b:.0%}) | {a / b:.2f} | **{b_kernels / b:.2f}** |")
    print(f"  kernels: {line}", flush=True)
    return line


KERNEL_HEADER = ("| network, mode | tinyldm: ms in all · in kernels (share) | diffusers: the same | ratio under the "
                 "profiler | floor: diffusers' share in the kernels |\n|---|---:|---:|---:|---:|")


# ---- peak memory, in a fresh process per library ---------------------------------------------------------------------

def status_gb(field: str) -> float:
    """A field of /proc/self/status (VmRSS: resident now, VmHWM: resident peak) in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1e6  # kB → GB
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_child(key: str, library: str, folder: str) -> None:
    """Run in a fresh process: build (tinyldm, or tinyldm-checkpointing: with gradient checkpointing) or load
    (diffusers) one model, one fwd+bwd; print the RSS as JSON."""
    case = CASES[key]
    diffusers = import_diffusers() if library == "diffusers" else None
    imported = status_gb("VmRSS")
    if library == "tinyldm":
        model, call = build_tinyldm(case), call_tinyldm
    elif library == "tinyldm-checkpointing":
        model, call = build_tinyldm(case), call_tinyldm
        model.config.gradient_checkpointing = True  # read at every forward (recompute each block in backward)
    else:
        model, call = load_diffusers_model(diffusers, folder), call_diffusers
    step = train_step(call, case.family, model.train(), make_inputs(case.train_shape))
    gc.collect()
    loaded, load_peak = status_gb("VmRSS"), status_gb("VmHWM")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        reset = True
    except OSError:
        reset = False
    step()
    print(json.dumps({"imported_gb": imported, "loaded_gb": loaded, "load_peak_gb": load_peak,
                      "peak_gb": status_gb("VmHWM"), "reset": reset}))


def peak_rss_in_fresh_process(case: ModelCase, library: str, folder) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()),
           "--peak-rss-child", case.key, library, str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"error": f"{library} child failed: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_row(case: ModelCase, folder) -> Row:
    ours = peak_rss_in_fresh_process(case, "tinyldm", folder)
    theirs = peak_rss_in_fresh_process(case, "diffusers", folder) if folder is not None else None
    errors = [r["error"] for r in (ours, theirs) if r is not None and "error" in r]
    what = f"{case.name} peak RSS of fwd+bwd {'×'.join(map(str, case.train_shape))}"
    if errors:
        return Row(what, "GB", [ours["peak_gb"]] if "error" not in ours else [], None, "; ".join(errors))
    sides = [ours] if theirs is None else [ours, theirs]

    def both(field: str) -> str:
        return " / ".join(f"{r[field]:.2f}" for r in sides)

    check = (f"RSS with the library imported {both('imported_gb')} GB, after loading {both('loaded_gb')} GB, "
             f"peak while loading {both('load_peak_gb')} GB")
    if not ours["reset"]:
        check += "; the peak counter could not be reset: the step's peak includes loading"
    checkpointed = peak_rss_in_fresh_process(case, "tinyldm-checkpointing", folder)
    if "error" not in checkpointed:
        saved = ours["peak_gb"] - checkpointed["peak_gb"]
        check += (f"; tinyldm with gradient checkpointing: peak {checkpointed['peak_gb']:.2f} GB ({saved:.2f} GB less"
                  f", {saved / (ours['peak_gb'] - ours['loaded_gb']):.0%} of the step's own memory)")
    return Row(what, "GB", [ours["peak_gb"]], [theirs["peak_gb"]] if theirs else None, check)


# ---- the run ---------------------------------------------------------------------------------------------------------

GROUPS = {"samplers": ["samplers"], "big": ["sd-vae", "sd1-unet", "dit-xl2"], "medium": ["dit-s2", "small-unet"],
          "tiny": ["tiny-ae", "tiny-dit", "tiny-unet"]}
GROUPS["models"] = GROUPS["big"] + GROUPS["medium"] + GROUPS["tiny"]
EVERYTHING = GROUPS["samplers"] + GROUPS["models"]


def selected(only: str | None) -> list[str]:
    """--only "samplers,tiny" → the row keys to run, in the table's order."""
    if only is None:
        return EVERYTHING
    keys = set()
    for name in only.split(","):
        name = name.strip()
        if name not in GROUPS and name not in EVERYTHING:
            raise SystemExit(f"--only: {name!r} is neither a part {sorted(GROUPS)} nor a row {EVERYTHING}")
        keys.update(GROUPS.get(name, [name]))
    return [k for k in EVERYTHING if k in keys]


def import_diffusers():
    """diffusers, or None when it is not installed (imported only here, never by tinyldm)."""
    try:
        import diffusers
    except ImportError:
        return None
    return diffusers


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated parts (samplers, models, big, medium, tiny) or rows "
                                  f"({', '.join(GROUPS['models'])}); default: everything")
    p.add_argument("--rounds", type=int, default=5, help="timed A/B rounds after two warm-ups")
    p.add_argument("--big-rounds", type=int, default=3, help="rounds for SD-VAE, SD-1.x UNet and DiT-XL/2")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--steps", type=int, default=STEPS,
                   help=f"sampling steps of each sampler run (default {STEPS}; fewer steps weigh each side's set-up, "
                        "set_timesteps or sample()'s grid preparation, more per step)")
    p.add_argument("--json", type=Path, help="also write the numbers, every round included, to this file")
    p.add_argument("--kernels", action="store_true",
                   help="also profile each network step on both sides: the time in the shared compute kernels "
                        "(convolution, matmul, attention, norms) and the floor that leaves for the ratio")
    p.add_argument("--peak-rss-child", nargs=3, metavar=("ROW", "LIBRARY", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_rss_child:
        peak_rss_child(*args.peak_rss_child)
        return
    keys = selected(args.only)

    # Say what runs where.
    diffusers = import_diffusers()
    if diffusers is None:
        print(INSTALL_HINT, flush=True)
        if args.kernels:
            print("--kernels compares the two libraries' profiles, so without diffusers it is skipped", flush=True)
    elif diffusers.__version__ != DIFFUSERS_VERSION:
        print(f"note: diffusers {diffusers.__version__}, not the {DIFFUSERS_VERSION} this comparison was written for",
              flush=True)
    env = {"cpu": cpu_name(), "cpus": f"{len(os.sched_getaffinity(0))} of {os.cpu_count()}",
           "torch": torch.__version__, "diffusers": diffusers.__version__ if diffusers else None,
           "threads": torch.get_num_threads(), "rounds": args.rounds, "steps": args.steps,
           "big_rounds": args.big_rounds}
    header = (f"CPU: {env['cpu']} ({env['cpus']} logical CPUs usable) · torch {env['torch']} · diffusers "
              f"{env['diffusers'] or 'not installed'} · threads {env['threads']} · float32 · {args.rounds} rounds "
              f"(big models {args.big_rounds}) A/B after {WARMUPS} warm-ups")
    print(header, flush=True)

    # Measure.
    rows = []
    if "samplers" in keys:
        print("samplers", flush=True)
        rows += bench_samplers(diffusers, args.rounds, args.steps)
    kernels = [] if args.kernels else None
    for key in keys:
        if key in CASES:
            case = CASES[key]
            rows += bench_model(case, diffusers, args.big_rounds if case.group == "big" else args.rounds, kernels)

    # Report.
    print()
    print(header)
    print()
    print(markdown_table(rows))
    if kernels:
        print(f"\nWhere the time goes (torch.profiler, self CPU time per call):\n{KERNEL_HEADER}")
        print("\n".join(kernels))
    if args.json:
        args.json.write_text(json.dumps({**env, "rows": [r.as_dict() for r in rows]}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
