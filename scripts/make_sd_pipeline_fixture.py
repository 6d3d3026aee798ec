"""A tiny random-weight Stable Diffusion 1.x pipeline folder and diffusers' images from it, for
tests/test_stable_diffusion.py.

Run it with a Python that has diffusers and transformers (never tinyldm's own environment; tinyldm imports neither):

    /tmp/dvenv/bin/python scripts/make_sd_pipeline_fixture.py      # diffusers 0.42.1, transformers 5.25, CPU, float32

Writes tests/fixtures/sd_tiny/:
    model_index.json, vae/ unet/ text_encoder/ tokenizer/ scheduler/    StableDiffusionPipeline.save_pretrained
    cases.safetensors        the initial latents z (before × init_noise_sigma), the token ids and text embeddings of
                             the prompts, and diffusers' images (B, 3, 32, 32) in [0, 1] for every case; and
                             euler_seed7_n2: 2 images per prompt, latents drawn by a generator seeded with 7
    manifest.json            versions, the prompts, and each case's scheduler, settings, guidance and seed

The parts are SD 1.x's at toy widths: a 3-level VAE (32×32 images ↔ 8×8×4 latents), a 2-level UNet with
cross-attention to the text width, a 2-layer CLIP text model (quick_gelu), and a CLIP tokenizer on a byte-level BPE
vocabulary learnt below from a few sentences, written in CLIP's layout (256 byte symbols, the same with `</w>`,
the merges, then <|startoftext|> and <|endoftext|>): nothing comes from the Hub. The folder's scheduler is
EulerDiscreteScheduler made `from_config` of SD 1.5's PNDMScheduler settings, as diffusers users switch schedulers:
its config keeps PNDM's skip_prk_steps and set_alpha_to_one, unused. The cases switch schedulers the same way, from
the folder's settings, and DDIM and PNDM (SD 1.x's own, PLMS) from SD 1.5's.
"""

import json
from collections import Counter
from pathlib import Path

import regex
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers import __version__ as diffusers_version
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers import __version__ as transformers_version

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sd_tiny"
PROMPTS = ["a red circle on a blue square", "two green dogs, photo"]
NEGATIVE = ["", "blurry drawing"]  # the first is diffusers' default; the second a real negative prompt
CORPUS = PROMPTS + NEGATIVE[1:] + ["a photo of a cat", "a drawing of two red dogs on the grass",
                                   "the green square is on the blue circle"]
NUM_MERGES = 40
STEPS = 10
# SD 1.5's scheduler/scheduler_config.json (runwayml/stable-diffusion-v1-5), from which the others are made.
SD15_PNDM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None,
                 clip_sample=False)  # clip_sample: PNDM takes none, the file has it (DDIM made from it reads it)


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) map from the 256 bytes to printable characters: printable bytes stand for themselves, the
    others are moved to 256 + k."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def learn_merges(texts: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Byte-pair encoding (Sennrich et al. 2016): repeatedly merge the most frequent adjacent pair (ties: the first
    in sorted order), on CLIP's words, whose last symbol carries `</w>`."""
    byte_char = bytes_to_unicode()
    pattern = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                            r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    words = Counter()
    for text in texts:
        for word in pattern.findall(text.lower()):
            symbols = [byte_char[b] for b in word.encode("utf-8")]
            words[tuple(symbols[:-1] + [symbols[-1] + "</w>"])] += 1
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def write_clip_tokenizer(folder: Path) -> None:
    """A tokenizer folder in the layout of SD 1.x's on the Hub: vocab.json and merges.txt in CLIP's layout, the
    special tokens (padded with <|endoftext|>, as SD 1.x is) and a 77-token context."""
    symbols = list(bytes_to_unicode().values())
    merges = learn_merges(CORPUS, NUM_MERGES)
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>",
                                                                                       "<|endoftext|>"]
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "do_lower_case": True}, indent=2)
        + "\n")


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its initial value (norm scales off 1, biases off 0) so that a mapping error shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def save_pipeline() -> None:
    """The tiny random pipeline → OUT (diffusers' save_pretrained; the tokenizer folder written as the Hub's)."""
    write_clip_tokenizer(OUT / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(OUT / "tokenizer")
    torch.manual_seed(70)
    text_encoder = perturb(CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=16,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)), 71)
    torch.manual_seed(80)
    unet = perturb(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=32, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        81)
    torch.manual_seed(90)
    vae = perturb(AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=1,
        norm_num_groups=4, sample_size=32, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3), 91)
    with torch.no_grad():  # a decoder whose images mostly lie inside [−1, 1], so that the clamp hides few pixels
        vae.decoder.conv_out.weight.mul_(0.1)
    scheduler = EulerDiscreteScheduler.from_config(PNDMScheduler.from_config(SD15_PNDM).config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(OUT)
    (OUT / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)  # the Hub's SD 1.x folders have none
    write_clip_tokenizer(OUT / "tokenizer")


def main() -> None:
    save_pipeline()
    pipe = StableDiffusionPipeline.from_pretrained(OUT)  # the images come from the folder as written
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(len(PROMPTS), 4, 8, 8, generator=g)
    ids = pipe.tokenizer(PROMPTS + NEGATIVE, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        embeddings = pipe.text_encoder(ids)[0]
    tensors, cases = {"latents": latents, "input_ids": ids, "text_embeddings": embeddings}, []
    # (name, scheduler class, made from_config of: the folder's or SD 1.5's, guidance w, negative prompts, step-noise
    # seed). PNDM from SD 1.5's settings is what a stock SD 1.x folder samples with. DDIM from the folder's Euler
    # settings would keep timestep_spacing="linspace", on which diffusers' DDIM steps off its own grid (tinyldm
    # refuses that); from SD 1.5's PNDM settings it is "leading" with steps_offset 1.
    folder, sd15 = pipe.scheduler.config, PNDMScheduler.from_config(SD15_PNDM).config
    plan = [("euler_w7.5_negative", EulerDiscreteScheduler, folder, 7.5, NEGATIVE, None),
            ("euler_w1", EulerDiscreteScheduler, folder, 1.0, None, None),
            ("dpmpp_2m_w7.5_negative", DPMSolverMultistepScheduler, folder, 7.5, NEGATIVE, None),
            ("dpmpp_2m_w3", DPMSolverMultistepScheduler, folder, 3.0, None, None),
            ("ddim_w7.5_negative", DDIMScheduler, sd15, 7.5, NEGATIVE, None),
            ("ddim_w3", DDIMScheduler, sd15, 3.0, None, None),
            ("euler_ancestral_w5_seed", EulerAncestralDiscreteScheduler, folder, 5.0, None, 5),
            ("pndm_w7.5_negative", PNDMScheduler, sd15, 7.5, NEGATIVE, None)]
    for name, cls, source, w, negative, seed in plan:
        pipe.scheduler = cls.from_config(source)  # as diffusers users switch schedulers
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            images = pipe(PROMPTS, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=w,
                          latents=latents.clone(), height=32, width=32, generator=generator, output_type="pt").images
        tensors[name] = images.float().contiguous()
        clamped = ((images == 0) | (images == 1)).float().mean().item()
        cases.append({"name": name, "scheduler": cls.__name__, "from_config_of": "folder" if source is folder else
                      "sd15_pndm", "scheduler_config": {k: v for k, v in pipe.scheduler.config.items()
                                                        if k != "_use_default_values"},
                      "guidance_scale": w, "negative_prompt": negative, "steps": STEPS, "step_seed": seed,
                      "clamped_fraction": round(clamped, 4)})
        print(f"{name}: images in [{images.min():.3f}, {images.max():.3f}], {clamped:.1%} clamped")
    # No latents given: diffusers draws them from the generator (CPU), 2 images per prompt, as sample.py --seed 7 --n 2.
    pipe.scheduler = EulerDiscreteScheduler.from_config(folder)
    with torch.no_grad():
        tensors["euler_seed7_n2"] = pipe(PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                                         guidance_scale=7.5, num_images_per_prompt=2, height=32, width=32,
                                         generator=torch.Generator().manual_seed(7), output_type="pt").images.float()
    save_file(tensors, str(OUT / "cases.safetensors"))
    manifest = {"diffusers": diffusers_version, "transformers": transformers_version, "torch": torch.__version__,
                "dtype": "float32", "device": "cpu", "written_by": "scripts/make_sd_pipeline_fixture.py",
                "prompts": PROMPTS, "height": 32, "width": 32, "sd15_pndm": dict(sd15), "cases": cases,
                "files": {str(p.relative_to(OUT)): p.stat().st_size for p in sorted(OUT.rglob("*"))
                          if p.is_file() and p.name != "manifest.json"}}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {sum(manifest['files'].values()) / 1e6:.2f} MB in {len(manifest['files'])} files")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
