"""Write a train_ldm.py run as diffusers-format folders (no diffusers import: this writes files).

    python -m tinyldm.interop.export --run runs/ldm-unet-tiny --out exported/unet-tiny
    python -m tinyldm.interop.export --run runs/ldm-dit-tiny --out exported/dit-tiny --approximate-timestep
    python -m tinyldm.interop.export --run runs/ldm-unet-tiny --out exported/unet-ddim --scheduler DDIMScheduler

OUT/ then holds folders that diffusers' from_pretrained of each class loads:
  vae/                             AutoencoderKL (VQModel) with the scaling_factor and shift_factor the run trained
                                   with: latents decode as vae.decode(z / scaling_factor + shift_factor)
  unet/ or transformer/            UNet2DConditionModel or DiTTransformer2DModel, EMA weights (--weights model: the
                                   raw ones); user k is class label k, the null user (unconditional) is label N
  scheduler/scheduler_config.json  the diffusers scheduler of the run's schedule and prediction: a VP run's β schedule,
                                   T, zero terminal SNR and prediction_type (epsilon, v_prediction, sample), trailing
                                   spacing as tinyldm samples; a rectified-flow run's FlowMatchEulerDiscreteScheduler
                                   with its shift
  model_index.json                 the components. A DiT run is a DiTPipeline (id2label: the user names), which
                                   runs VP schedulers without guidance (it hard-codes ImageNet's null class 1000);
                                   diffusers has no pipeline for tinyldm's user-conditioned UNet, so a UNet run's
                                   index names DiffusionPipeline and its components load by subfolder

What diffusers has no equivalent for is refused in one line before anything is written: an MMDiT run, a user
encoder other than `embedding` (tokens, onehot_mlp), a VQ autoencoder with l2_normalize. diffusers' DiT hard-codes
the time features' frequency shift 1, and tinyldm's DiT defaults to the original DiT's 0; such a run is written only
with --approximate-timestep, and the log then says how much that changes the prediction. docs/interop.md shows how
to run the folders in diffusers.
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from tinyldm.interop.diffusers_grids import BETA_SCHEDULES, PREDICTIONS
from tinyldm.interop.diffusers_names import DIFFUSERS_VERSION
from tinyldm.interop.pretrained import diffusers_config, save_pretrained
from tinyldm.loading import load_ldm, load_run_vae
from tinyldm.models.dit import DiT
from tinyldm.runs import RunError, atomic_write_json, check_writable, run_cli

# The backbone → (its folder, diffusers' class). MMDiT has none: tinyldm's is neither SD3's nor FLUX's transformer.
BACKBONES = {"unet": ("unet", "UNet2DConditionModel"), "dit": ("transformer", "DiTTransformer2DModel")}
# diffusers' settings that make each VP scheduler take tinyldm's steps (docs/coming_from_diffusers.md: reproduced);
# the first is the default, the sampler tinyldm itself defaults to (DPM-Solver++(2M)).
VP_SCHEDULERS = {
    "DPMSolverMultistepScheduler": {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                                    "lower_order_final": True, "final_sigmas_type": "zero",
                                    "use_karras_sigmas": False},
    "DDIMScheduler": {"clip_sample": False, "set_alpha_to_one": True},
    "DDPMScheduler": {"clip_sample": False, "variance_type": "fixed_small"},
    "EulerDiscreteScheduler": {"use_karras_sigmas": False},
}
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
DIFFUSERS_BETAS = {ours: theirs for theirs, ours in BETA_SCHEDULES.items()}  # tinyldm's β schedule → diffusers' name
DIFFUSERS_PREDICTIONS = {ours: theirs for theirs, ours in PREDICTIONS.items()}  # "eps" → "epsilon", …


def scheduler_config(run: dict, name: str | None = None) -> dict:
    """The run's schedule and prediction as diffusers' scheduler_config.json for scheduler `name` (None: the
    default for the run, DPMSolverMultistepScheduler for VP (DDIMScheduler with zero terminal SNR, which the σ̃
    schedulers change), FlowMatchEulerDiscreteScheduler for rectified flow)."""
    sched, prediction = run["schedule"], run["prediction"]
    head = {"_diffusers_version": DIFFUSERS_VERSION, "num_train_timesteps": sched["num_train_timesteps"]}
    if sched["kind"] == "flow":
        if name not in (None, FLOW_SCHEDULER):
            raise ValueError(f"--scheduler {name}: a rectified-flow run samples with {FLOW_SCHEDULER} (x_t = "
                             "(1 − σ) x0 + σ ε, the network predicting ε − x0); choose it or leave --scheduler out")
        # x_t = (1 − σ) x0 + σ ε with σ shifted as σ' = s·σ / (1 + (s − 1)·σ) and the network told σ'·T: as here.
        return {"_class_name": FLOW_SCHEDULER, **head, "shift": sched["shift"], "use_dynamic_shifting": False}
    name = name or ("DDIMScheduler" if sched["zero_terminal_snr"] else "DPMSolverMultistepScheduler")
    if name not in VP_SCHEDULERS:
        raise ValueError(f"--scheduler {name}: a VP run is written for one of {', '.join(VP_SCHEDULERS)}")
    cosine = sched["beta_schedule"] == "cosine"  # squaredcos_cap_v2 ignores β_start, β_end: diffusers' defaults
    return {"_class_name": name, **head, "beta_schedule": DIFFUSERS_BETAS[sched["beta_schedule"]],
            "beta_start": 1e-4 if cosine else sched["beta_start"], "beta_end": 0.02 if cosine else sched["beta_end"],
            "rescale_betas_zero_snr": sched["zero_terminal_snr"], "prediction_type": DIFFUSERS_PREDICTIONS[prediction],
            "timestep_spacing": "trailing", "steps_offset": 0, **VP_SCHEDULERS[name]}


@torch.no_grad()
def timestep_shift_change(dit: DiT, latent_shape, schedule: dict) -> float:
    """How much diffusers' time features (frequency shift 1) change this DiT's prediction: max |Δ| / max |out| over
    four random latents at times spread over the schedule, user 0."""
    g = torch.Generator().manual_seed(0)
    as_diffusers = DiT(replace(dit.config, timestep_freq_shift=1.0))
    as_diffusers.load_state_dict(dit.state_dict())
    x = torch.randn(4, *latent_shape, generator=g)  # (4, c, h, w)
    T = schedule["num_train_timesteps"]
    t = torch.linspace(0.0, T - 1.0, 4)  # the network's time, VP index or flow t·T alike
    y = torch.zeros(4, dtype=torch.long)
    ours, theirs = dit(x, t, y), as_diffusers.eval()(x, t, y)
    return ((theirs - ours).abs().max() / ours.abs().max()).item()


def check_out(out: Path) -> None:
    """OUT must be new, empty, or an earlier export (a model_index.json): never another folder's files."""
    if out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise RunError(f"--out {out} holds other files and no model_index.json; choose a new or empty folder")
    check_writable(out)


def export_run(run_dir, out_dir, weights: str = "ema", scheduler: str | None = None,
               approximate_timestep: bool = False) -> Path:
    """A train_ldm.py run → diffusers component folders in out_dir (see the module docstring); → out_dir."""
    run_dir, out = Path(run_dir), Path(out_dir)
    model, run = load_ldm(run_dir, "cpu", weights)
    if run["backbone"] not in BACKBONES:
        raise RunError(f"{run_dir} is a {run['backbone']} run; diffusers has no equivalent of tinyldm's MMDiT (it is "
                       f"neither SD3's nor FLUX's transformer), so only {' and '.join(BACKBONES)} runs are exported")
    folder, backbone_class = BACKBONES[run["backbone"]]
    vae = load_run_vae(run)
    shift = run.get("shift_factor", 0.0)
    changes = {"scaling_factor": run["scaling_factor"]}  # what the run trained with (measured, if the VAE had none)
    if hasattr(vae.config, "shift_factor"):
        changes["shift_factor"] = shift or vae.config.shift_factor  # 0 stays as the VAE wrote it (None or 0)
    vae.config = replace(vae.config, **changes)

    # Everything is checked before anything is written: what diffusers cannot represent raises here.
    approximate = isinstance(model, DiT) and model.config.timestep_freq_shift != 1
    if approximate and not approximate_timestep:
        raise RunError(f"{run_dir}: its DiT was trained with timestep_freq_shift {model.config.timestep_freq_shift:g} "
                       "(the original DiT's time features), but diffusers' DiT always uses 1, so it cannot be written "
                       "exactly; pass --approximate-timestep to write it anyway (the log says how much that changes "
                       "its prediction)")
    try:
        diffusers_config(model, approximate_timestep=approximate)
        diffusers_config(vae)
    except ValueError as e:
        raise RunError(f"{run_dir} cannot be exported: {e}") from None
    sched = scheduler_config(run, scheduler)
    check_out(out)

    # Write the components, then the index that names them.
    save_pretrained(vae, out / "vae")
    save_pretrained(model, out / folder, approximate_timestep=approximate)
    (out / "scheduler").mkdir(exist_ok=True)
    atomic_write_json(out / "scheduler" / "scheduler_config.json", sched)
    vae_class = type(vae).__name__
    index = {"_class_name": "DiTPipeline" if folder == "transformer" else "DiffusionPipeline",
             "_diffusers_version": DIFFUSERS_VERSION, folder: ["diffusers", backbone_class],
             "scheduler": ["diffusers", sched["_class_name"]], "vae": ["diffusers", vae_class]}
    if folder == "transformer":
        index["id2label"] = {str(k): name for k, name in enumerate(run["classes"])}
    atomic_write_json(out / "model_index.json", index)

    # Say what was written.
    print(f"vae/: {vae_class} from {run['vae']} (scaling_factor {run['scaling_factor']:.6g}, shift_factor "
          f"{shift:g})")
    print(f"{folder}/: {backbone_class}, the {weights} weights of {run_dir}; users 0…{run['num_classes'] - 1} "
          f"({', '.join(run['classes'][:3])}{', …' if run['num_classes'] > 3 else ''}), null user {run['num_classes']}")
    detail = {k: sched[k] for k in ("shift", "beta_schedule", "prediction_type", "rescale_betas_zero_snr",
                                    "timestep_spacing") if k in sched}
    print(f"scheduler/: {sched['_class_name']} {json.dumps(detail)}")
    if approximate:
        change = timestep_shift_change(model, run["latent_shape"], run["schedule"])
        print(f"notice: --approximate-timestep: {folder}/ was trained with timestep_freq_shift "
              f"{model.config.timestep_freq_shift:g} but diffusers' DiT runs it with 1; on random latents that "
              f"changes its prediction by {change:.2g} relative")
    print(f"wrote {out}: model_index.json, vae/, {folder}/, scheduler/; in diffusers, load each component with "
          f"from_pretrained({str(out)!r}, subfolder=...) and sample as docs/interop.md shows")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tinyldm.interop.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a train_ldm.py run folder (unet or dit backbone)")
    p.add_argument("--out", type=Path, required=True,
                   help="the folder to write (new, empty, or an earlier export, which is overwritten)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA (default) or raw weights")
    p.add_argument("--scheduler", default=None, metavar="NAME",
                   help=f"diffusers scheduler for scheduler/: a VP run one of {', '.join(VP_SCHEDULERS)} "
                        f"(default: the first; DDIMScheduler with zero terminal SNR), a flow run {FLOW_SCHEDULER}")
    p.add_argument("--approximate-timestep", action="store_true",
                   help="write a DiT trained with timestep_freq_shift ≠ 1 (tinyldm's default is the original DiT's "
                        "0) although diffusers' DiT always uses 1; its outputs then differ from tinyldm's, by an "
                        "amount the log states")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli("tinyldm.interop.export", export_run, args.run, args.out, args.weights, args.scheduler,
                   args.approximate_timestep)


if __name__ == "__main__":
    sys.exit(main())
