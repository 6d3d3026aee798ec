"""Encode a data split once with the frozen autoencoder and keep the result while nothing it depends on changes.

Stage 2 never needs pixels: it trains on z = (μ + σ·ε − shift_factor)·scaling_factor with a fresh ε each time, so
the cache keeps the posterior's mean μ and std σ per image (VQ: the pre-quantisation encoding, σ = 0; the diffusion
model works on continuous latents and the decoder quantises, Rombach et al. 2022, Sec. 3).

The cache file is `<cache folder>/<key>.safetensors`, where the key hashes the autoencoder's weights (the sha256 of
its weights file), its config, the data files (names, sizes, modification times) and the split. Change any of these
and a new cache is built; the stale one is left for other runs that may still use it. The cache folder is the
autoencoder run's `latent_cache/` for a train_vae.py run, and `$TINYLDM_CACHE/latents/` (default
`~/.cache/tinyldm/latents/`) for a diffusers autoencoder, whose folder may be a read-only download.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from tinyldm.data.datasets import UserImageFolder
from tinyldm.runs import atomic_save_weights, inference_autocast, inference_dtype


def shared_cache_dir() -> Path:
    """Where latents of diffusers autoencoders are cached: $TINYLDM_CACHE/latents, else ~/.cache/tinyldm/latents."""
    return Path(os.environ.get("TINYLDM_CACHE") or Path.home() / ".cache" / "tinyldm") / "latents"


def cache_key(weights_sha256: str, model: dict, dataset: UserImageFolder, split: dict, device="cpu") -> str:
    """sha256 over everything the latents depend on (weights, model config, data files, split settings, and bf16
    where `device` encodes in it: inference_autocast)."""
    h = hashlib.sha256()
    if inference_dtype(device) is not None:  # float32 adds nothing: older caches keep their key
        h.update(b"bf16 autocast\n")
    h.update(weights_sha256.encode())
    h.update(json.dumps(model, sort_keys=True).encode())
    for path, user, _ in dataset.samples:  # a line per window: square files hash as before, windowed ones differ
        st = Path(path).stat()
        h.update(f"{path}|{user}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    # The aspect shows in the lines above (one per window); left out here so that caches from before it stay valid.
    h.update(json.dumps({k: v for k, v in split.items() if k != "aspect"}, sort_keys=True).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_split(vae, dataset: UserImageFolder, device, batch_size: int = 64, desc: str = "encode"
                 ) -> dict[str, torch.Tensor]:
    """→ {"mean": (N, c, h, w), "std": (N, c, h, w), "y": (N,)} on the CPU, in dataset order."""
    means, stds, ys = [], [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch", leave=False):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([it[0] for it in items]).to(device)  # (B, C, H, W)
        with inference_autocast(device):  # bf16 where the hardware has it (tinyldm/runs.py)
            mean, std = vae.latent_moments(x)  # (B, c, h, w) each; VQ: pre-quantisation, σ = 0
        means.append(mean.float().contiguous().cpu())  # as the cache file holds them, whatever the encoder's layout
        stds.append(std.float().contiguous().cpu())
        ys.append(torch.tensor([it[1] for it in items], dtype=torch.long))
    return {"mean": torch.cat(means), "std": torch.cat(stds), "y": torch.cat(ys)}


def cached_latents(vae, cache_dir: Path, weights_sha256: str, model: dict, dataset: UserImageFolder, split: dict,
                   device) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """Latents of `dataset`, from cache_dir when a valid cache is there → (tensors, cache path, built_now).
    `model` describes the autoencoder ({"model_type": …, "model": its config}) for the key."""
    path = Path(cache_dir) / f"{cache_key(weights_sha256, model, dataset, split, device)}.safetensors"
    if path.is_file():
        return load_file(str(path)), path, False
    latents = encode_split(vae, dataset, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_weights(path, latents, {"n": len(dataset), **{k: str(v) for k, v in split.items()}})
    return latents, path, True
