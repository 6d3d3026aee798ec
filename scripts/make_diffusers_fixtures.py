"""Tiny random-weight diffusers model folders, fixed inputs and diffusers' outputs, for tests/test_interop_models.py.

Run it with a Python that has diffusers (never tinyldm's own environment; tinyldm does not import diffusers):

    /work/dvenv/bin/python scripts/make_diffusers_fixtures.py      # diffusers 0.42.1, torch 2.13, CPU, float32

Writes tests/fixtures/diffusers/:
    kl/ kl16/ vq/ unet/ unet_users/ dit/        diffusers model folders (config.json, the safetensors weights)
    <name>_io.safetensors                       the inputs and diffusers' outputs for each folder
    dit_original.pt                             dit/'s weights in the original DiT code's layout (a plain state dict)
    manifest.json                               versions and what each file holds

kl is Stable-Diffusion-like; kl16 is SD3/FLUX-like (16 latent channels, no quant convs, a shift factor), here also
without mid-block attention. unet is an SD UNet (no class conditioning; called with a raw encoder_hidden_states);
unet_users carries tinyldm's user encoder in the form tinyldm writes it (class_embed_type="simple_projection" +
encoder_hid_dim_type="text_proj" on one-hot ids). dit is a DiTTransformer2DModel whose per-block timestep and label
embedders are equal, as in every DiT converted from the original code. This script does not import tinyldm: the
original-layout state dict is written by its own few lines below, from the original DiT's module names.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel, VQModel
from diffusers import __version__ as diffusers_version
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "diffusers"


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its initial value (norm scales off 1, biases off 0) so that a mapping error shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def save(name: str, model, io: dict[str, torch.Tensor]) -> None:
    model.save_pretrained(OUT / name)
    save_file({k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous() for k, v in io.items()},
              str(OUT / f"{name}_io.safetensors"))


def autoencoders() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    layout = dict(in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=2,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=16)
    torch.manual_seed(10)
    kl = perturb(AutoencoderKL(**layout, latent_channels=4), 11)
    torch.manual_seed(20)
    kl16 = perturb(AutoencoderKL(**layout, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                                 mid_block_add_attention=False, scaling_factor=1.5305, shift_factor=0.0609,
                                 latents_mean=[0.01 * i for i in range(16)], latents_std=[1.0 + 0.02 * i for i in
                                                                                          range(16)]), 21)
    for name, model in (("kl", kl), ("kl16", kl16)):
        c = model.config.latent_channels
        z = torch.randn(2, c, 8, 8, generator=g)
        with torch.no_grad():
            posterior = model.encode(x).latent_dist
            io = dict(x=x, mean=posterior.mean, std=posterior.std, z=z, decoded=model.decode(z).sample)
        save(name, model, io)

    torch.manual_seed(30)
    vq = perturb(VQModel(**layout, latent_channels=3, num_vq_embeddings=16, vq_embed_dim=4), 31)
    with torch.no_grad():
        h = vq.encode(x).latents  # (B, D, h, w), before quantisation
        _, _, (_, _, indices) = vq.quantize(h)
        io = dict(x=x, latents=h, indices=indices.reshape(2, 8, 8), decoded=vq.decode(h).sample)
    save("vq", vq, io)


def unets() -> None:
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3.0, 981.0])
    torch.manual_seed(40)
    sd = perturb(UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                      block_out_channels=(4, 8), norm_num_groups=2, cross_attention_dim=8,
                                      attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")), 41)
    ctx = torch.randn(2, 5, 8, generator=g)
    with torch.no_grad():
        save("unet", sd, dict(x=x, t=t, encoder_hidden_states=ctx, out=sd(x, t, encoder_hidden_states=ctx).sample))

    # 3 users + the null id (id 3), as tinyldm writes its user encoder: the user table is encoder_hid_proj on one-hot
    # ids (bias 0), the user vector's projection onto the time embedding is class_embedding ("simple_projection").
    torch.manual_seed(50)
    users = perturb(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(4, 8),
        norm_num_groups=2, cross_attention_dim=8, attention_head_dim=(2, 4), use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=8, encoder_hid_dim=4,
        encoder_hid_dim_type="text_proj"), 51)
    with torch.no_grad():
        users.encoder_hid_proj.bias.zero_()
        y = torch.tensor([0, 3])
        one_hot = F.one_hot(y, 4).float()[:, None]  # (B, 1, N + 1)
        vector = users.encoder_hid_proj(one_hot)[:, 0]  # (B, D): the user's row of the table
        out = users(x, t, encoder_hidden_states=one_hot, class_labels=vector).sample
    save("unet_users", users, dict(x=x, t=t, y=y, out=out))


def original_dit_layout(model: DiTTransformer2DModel) -> dict[str, torch.Tensor]:
    """diffusers' DiT → the state dict the original DiT code (facebookresearch/DiT, models.py) saves."""
    sd, c = model.state_dict(), model.config
    emb = "transformer_blocks.0.norm1.emb."
    out = {"x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"]}
    for i, j in ((0, 1), (2, 2)):  # t_embedder.mlp = [Linear, SiLU, Linear]
        for p in ("weight", "bias"):
            out[f"t_embedder.mlp.{i}.{p}"] = sd[f"{emb}timestep_embedder.linear_{j}.{p}"]
    out["y_embedder.embedding_table.weight"] = sd[f"{emb}class_embedder.embedding_table.weight"]
    for b in range(c.num_layers):
        d, o = f"transformer_blocks.{b}.", f"blocks.{b}."
        for p in ("weight", "bias"):
            out[f"{o}attn.qkv.{p}"] = torch.cat([sd[f"{d}attn1.to_{n}.{p}"] for n in "qkv"])
            out[f"{o}attn.proj.{p}"] = sd[f"{d}attn1.to_out.0.{p}"]
            out[f"{o}mlp.fc1.{p}"] = sd[f"{d}ff.net.0.proj.{p}"]
            out[f"{o}mlp.fc2.{p}"] = sd[f"{d}ff.net.2.{p}"]
            out[f"{o}adaLN_modulation.1.{p}"] = sd[f"{d}norm1.linear.{p}"]
    for p in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{p}"] = sd[f"proj_out_1.{p}"]
        out[f"final_layer.linear.{p}"] = sd[f"proj_out_2.{p}"]
    # The original keeps its fixed positions as a (frozen) parameter: MAE's numpy sin-cos, float64 → float32.
    dim, grid = c.num_attention_heads * c.attention_head_dim, c.sample_size // c.patch_size
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    w, h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))  # w first, as in MAE

    def one_axis(pos):
        angles = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    pos = np.concatenate([one_axis(w), one_axis(h)], axis=1)
    out["pos_embed"] = torch.from_numpy(pos).float()[None]
    return {k: v.clone().contiguous() for k, v in out.items()}


def dit() -> None:
    torch.manual_seed(60)
    model = perturb(DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=5), 61)
    with torch.no_grad():  # tie the per-block embedders, as every DiT converted from the original code has them
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    g = torch.Generator().manual_seed(3)
    x, t, y = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([7.0, 640.0]), torch.tensor([1, 5])  # 5: null id
    with torch.no_grad():
        save("dit", model, dict(x=x, t=t, y=y, out=model(x, t, y).sample))
    torch.save(original_dit_layout(model), OUT / "dit_original.pt")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    autoencoders()
    unets()
    dit()
    manifest = {"diffusers": diffusers_version, "torch": torch.__version__, "dtype": "float32", "device": "cpu",
                "written_by": "scripts/make_diffusers_fixtures.py",
                "files": {str(p.relative_to(OUT)): p.stat().st_size for p in sorted(OUT.rglob("*"))
                          if p.is_file() and p.name != "manifest.json"}}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {OUT}: {sum(manifest['files'].values()) / 1e6:.2f} MB in {len(manifest['files'])} files")
