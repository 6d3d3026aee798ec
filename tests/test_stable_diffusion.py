"""Stable Diffusion from a diffusers folder (tinyldm/interop/stable_diffusion.py, sample.py --pipeline) against
diffusers' own images.

tests/fixtures/sd_tiny/ is a tiny random StableDiffusionPipeline saved by diffusers 0.42.1, with diffusers' images for
fixed latents under several schedulers, guidance scales and negative prompts (scripts/make_sd_pipeline_fixture.py
says what each case is). Every part here is tinyldm's own: tokenizer, text encoder, UNet, VAE and sampler.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import sample as sample_script
from tinyldm.interop.pretrained_weights import PretrainedError
from tinyldm.interop.stable_diffusion import (
    load_stable_diffusion,
    scheduler_grid,
    text_to_image,
    with_scheduler,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sd_tiny"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
TENSORS = load_file(str(FIXTURE / "cases.safetensors"))
CASES = {case["name"]: case for case in MANIFEST["cases"]}
PROMPTS, SIZE = MANIFEST["prompts"], dict(height=MANIFEST["height"], width=MANIFEST["width"])
NEGATIVE = CASES["euler_w7.5_negative"]["negative_prompt"]  # ["", a real negative prompt]
# Largest |ours − diffusers'| over the largest pixel value; measured ≤ 3.3e-7 (float32 rounding over 10 steps).
RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: two threads only wait on each other on a busy machine (10× slower, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd(one_thread):
    return load_stable_diffusion(FIXTURE)


def scheduled(sd, case):
    """sd with the case's scheduler, made from_config of the settings the fixture made diffusers' from."""
    source = sd if case["from_config_of"] == "folder" else replace(sd, scheduler="PNDMScheduler",
                                                                   scheduler_config=MANIFEST["sd15_pndm"])
    return with_scheduler(source, case["scheduler"])


def test_fixture_is_small_and_its_cases_differ_from_each_other():
    assert sum(MANIFEST["files"].values()) < 1_000_000 and MANIFEST["diffusers"] == "0.42.1"
    images = [TENSORS[name] for name in CASES]
    # Another scheduler, guidance scale or negative prompt changes the images by far more than RTOL.
    assert min((a - b).abs().max().item() for i, a in enumerate(images) for b in images[i + 1:]) > 50 * RTOL


def test_the_text_side_equals_transformers(sd):
    ids = sd.tokenizer(PROMPTS + NEGATIVE)  # (4, 77)
    assert torch.equal(ids, TENSORS["input_ids"])
    torch.testing.assert_close(sd.text_encoder(ids)[0], TENSORS["text_embeddings"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_images_equal_diffusers(sd, name):
    case = CASES[name]
    generator = None if case["step_seed"] is None else torch.Generator().manual_seed(case["step_seed"])
    images = text_to_image(scheduled(sd, case), PROMPTS, case["negative_prompt"], steps=case["steps"],
                           cfg_scale=case["guidance_scale"], noise=TENSORS["latents"], generator=generator, **SIZE)
    theirs = TENSORS[name]
    assert images.shape == theirs.shape == (2, 3, 32, 32)
    assert ((images - theirs).abs().max() / theirs.abs().max()).item() <= RTOL


def test_switching_schedulers_keeps_the_settings_diffusers_keeps(sd):
    # with_scheduler's settings give the grid of the config diffusers' from_config resolved (recorded per case).
    for case in CASES.values():
        ours = scheduler_grid(scheduled(sd, case), case["steps"])
        theirs = scheduler_grid(replace(sd, scheduler=case["scheduler"], scheduler_config=case["scheduler_config"]),
                                case["steps"])
        assert (ours.sampler, ours.noise_scale, ours.clip_x0) == (theirs.sampler, theirs.noise_scale, theirs.clip_x0)
        assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.model_times, theirs.model_times)


def test_a_stock_sd1_folder_samples_with_its_own_pndm_as_diffusers(sd):
    # SD 1.x folders ship PNDMScheduler with skip_prk_steps (PLMS); no --scheduler needed.
    stock = replace(sd, scheduler="PNDMScheduler", scheduler_config=MANIFEST["sd15_pndm"])
    assert scheduler_grid(stock, 10).sampler == "plms"
    case = CASES["pndm_w7.5_negative"]
    images = text_to_image(stock, PROMPTS, case["negative_prompt"], steps=case["steps"],
                           cfg_scale=case["guidance_scale"], noise=TENSORS["latents"], **SIZE)
    theirs = TENSORS["pndm_w7.5_negative"]
    assert ((images - theirs).abs().max() / theirs.abs().max()).item() <= RTOL


def test_schedulers_tinyldm_does_not_reproduce_are_refused_naming_the_file(sd):
    unipc = replace(sd, scheduler="UniPCMultistepScheduler", scheduler_config=MANIFEST["sd15_pndm"])
    with pytest.raises(ValueError, match=r"scheduler_config.json: _class_name 'UniPCMultistepScheduler' is not a "
                                         r"scheduler tinyldm reproduces.*--scheduler"):
        text_to_image(unipc, PROMPTS, steps=2, **SIZE)
    with pytest.raises(ValueError, match="'UniPCMultistepScheduler' is not one tinyldm reproduces"):
        with_scheduler(sd, "UniPCMultistepScheduler")
    # PNDM's Runge–Kutta start (skip_prk_steps=False, diffusers' default; not SD's) is refused, naming the file.
    prk = replace(sd, scheduler="PNDMScheduler", scheduler_config=MANIFEST["sd15_pndm"] | {"skip_prk_steps": False})
    with pytest.raises(ValueError, match=r"scheduler_config.json \(as PNDMScheduler\).*skip_prk_steps=False"):
        text_to_image(prk, PROMPTS, steps=2, **SIZE)
    # DDIM on the folder's (Euler's) linspace grid steps off its own grid in diffusers: refused, naming the file.
    with pytest.raises(ValueError, match=r"sd_tiny/scheduler/scheduler_config.json \(as DDIMScheduler\).*off its own "
                                         "grid"):
        text_to_image(with_scheduler(sd, "DDIMScheduler"), PROMPTS, steps=10, **SIZE)
    with pytest.raises(ValueError, match="eta = 0.5 is DDIM's η; EulerDiscreteScheduler has none"):
        text_to_image(sd, PROMPTS, steps=2, eta=0.5, **SIZE)
    with pytest.raises(ValueError, match="each must be a multiple of 8"):
        text_to_image(sd, PROMPTS, steps=2, height=36, width=32)


def edited_copy(tmp_path: Path, edit) -> Path:
    """A copy of the fixture folder with model_index.json changed by `edit` (a function of the dict)."""
    folder = tmp_path / "sd"
    shutil.copytree(FIXTURE, folder)
    index = json.loads((folder / "model_index.json").read_text())
    edit(index)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


BAD_FOLDERS = {
    "no unet/": (lambda index: None, "unet/ is missing, but"),
    "no vae entry": (lambda index: index.pop("vae"), "lists no vae"),
    "another pipeline": (lambda index: index.update(_class_name="StableDiffusionXLPipeline"),
                         "'StableDiffusionXLPipeline' is not implemented"),
    "another text encoder": (lambda index: index.update(text_encoder=["transformers", "CLIPTextModelWithProjection"]),
                             "text_encoder is a CLIPTextModelWithProjection; tinyldm reads CLIPTextModel there"),
    "an extra part": (lambda index: index.update(controlnet=["diffusers", "ControlNetModel"]),
                      "part controlnet=.* is not one tinyldm implements"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_folder_tinyldm_cannot_run_is_refused_naming_file_and_key(case, tmp_path):
    edit, message = BAD_FOLDERS[case]
    folder = edited_copy(tmp_path, edit)
    if case == "no unet/":
        shutil.rmtree(folder / "unet")
    with pytest.raises(PretrainedError, match=message):
        load_stable_diffusion(folder)
    with pytest.raises(PretrainedError, match="has no model_index.json"):
        load_stable_diffusion(folder / "unet" if case != "no unet/" else folder / "vae")


def test_a_safety_checker_is_not_run_and_a_note_says_so(tmp_path, capsys):
    folder = edited_copy(tmp_path, lambda index: index.update(
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"], requires_safety_checker=True))
    load_stable_diffusion(folder)
    assert "safety_checker not run; tinyldm has no safety checker" in capsys.readouterr().out


# ---- sample.py --pipeline ---------------------------------------------------------------------------------------

def test_sample_py_writes_diffusers_images_for_a_seed_whatever_the_batch_size(tmp_path):
    out = tmp_path / "out"
    argv = ["--pipeline", str(FIXTURE), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--negative-prompt",
            NEGATIVE[0], "--negative-prompt", NEGATIVE[1], "--n", "2", "--seed", "7", "--steps", "10",
            "--batch-size", "3", "--out", str(out)]
    assert sample_script.main(argv) == 0
    # diffusers' pipe(prompts, num_images_per_prompt=2, generator=seed 7): each prompt's 2 images in a row.
    theirs = (TENSORS["euler_seed7_n2"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for j, (k, i) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        ours = np.asarray(Image.open(out / f"prompt_{k}" / f"{i:03d}.png"))
        assert np.abs(ours.astype(int) - theirs[j]).max() <= 1  # one level: rounding of pixels at a half
    assert (out / "grid.png").is_file() and not (out / ".lock").exists()
    settings = json.loads((out / "samples.json").read_text())
    assert settings["prompts"] == PROMPTS and settings["negative_prompts"] == NEGATIVE
    assert (settings["scheduler"], settings["steps"], settings["cfg_scale"]) == ("EulerDiscreteScheduler", 10, 7.5)

    # Other settings into the same --out: refused, then with --overwrite the old prompt folders go.
    again = ["--pipeline", str(FIXTURE), "--prompt", "a cat", "--steps", "2", "--scheduler",
             "DPMSolverMultistepScheduler", "--out", str(out)]
    assert sample_script.main(again) == 2
    assert sample_script.main([*again, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "prompt_0", "samples.json"]
    assert len(list((out / "prompt_0").iterdir())) == 1


@pytest.mark.parametrize("argv, message", [
    (["--pipeline", "x", "--run", "y", "--prompt", "p", "--out", "o"], "not allowed with argument"),
    (["--pipeline", "x", "--out", "o"], "--pipeline needs --prompt"),
    (["--pipeline", "x", "--prompt", "p"], "--pipeline needs --out"),
    (["--pipeline", "x", "--prompt", "p", "--out", "o", "--users", "0", "--sampler", "heun"],
     "--users, --sampler go with --run, not --pipeline"),
    (["--run", "y", "--scheduler", "DDIMScheduler"], "--scheduler goes with --pipeline, not --run"),
    (["--pipeline", "x", "--prompt", "p", "--out", "o", "--scheduler", "UniPCMultistepScheduler"], "invalid choice"),
])
def test_sample_py_refuses_mixed_sources_and_options(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        sample_script.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_sample_py_samples_a_stock_sd1_folder_with_its_pndm(tmp_path):
    folder = tmp_path / "sd15"
    shutil.copytree(FIXTURE, folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "PNDMScheduler", "_diffusers_version": "0.42.1", **MANIFEST["sd15_pndm"]}))
    out = tmp_path / "out"
    assert sample_script.main(["--pipeline", str(folder), "--prompt", PROMPTS[0], "--steps", "3", "--out",
                               str(out)]) == 0
    assert json.loads((out / "samples.json").read_text())["scheduler"] == "PNDMScheduler"
    assert (out / "prompt_0" / "000.png").is_file()


def test_sample_py_names_what_the_folder_lacks(tmp_path, capsys):
    assert sample_script.main(["--pipeline", str(tmp_path), "--prompt", "p", "--out", str(tmp_path / "o")]) == 2
    assert "has no model_index.json" in capsys.readouterr().err
