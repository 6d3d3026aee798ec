"""From a trained latent-diffusion run to images: noise → sampler (with CFG) → latents → autoencoder decode.

Used by sample.py, by train_ldm.py for its progress grids, and by the evaluation. The initial noise of image
(user k, index i) is drawn from its own seeded generator, so the same seed gives the same picture whatever the
batch size or the set of users asked for (stochastic samplers draw their step noise per batch).
"""

import torch
from tqdm import tqdm

from tinyldm.diffusion import Schedule, sample


def schedule_of(run_config: dict) -> Schedule:
    """The run's noise schedule, rebuilt from config.json["schedule"]."""
    s = run_config["schedule"]
    if s["kind"] == "flow":
        return Schedule.flow(shift=s["shift"], num_train_timesteps=s["num_train_timesteps"])
    return Schedule.vp(s["beta_schedule"], num_train_timesteps=s["num_train_timesteps"],
                       zero_terminal_snr=s["zero_terminal_snr"])


def initial_noise(seed: int, user: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """x_T for image `index` of `user`: unit Gaussian from a generator seeded by (seed, user, index)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + user * 10_007 + index)
    return torch.randn(shape, generator=g)


@torch.no_grad()
def decode_latents(vae, model_type: str, z: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Diffusion latents (B, c, h, w) → images (B, C, H, W) in [−1, 1]: undo the scale, decode (VQ: quantise)."""
    z = z / scaling_factor
    x = vae.decode(z) if model_type == "kl" else vae.decode(z, quantize=True)
    return x.clamp(-1, 1)


@torch.no_grad()
def generate(model, vae, run_config: dict, users: list[int], n_per_user: int, sampler: str = "dpmpp_2m",
             steps: int = 20, spacing: str = "trailing", cfg_scale: float | None = 4.0, cfg_rescale: float = 0.0,
             seed: int = 0, batch_size: int = 64, device="cpu", eta: float = 0.0, progress: bool = False,
             trajectory: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Images for each (user, index) → (images (U, n, C, H, W) in [−1, 1], trajectory or None).

    trajectory: with `trajectory=True`, the decoded x̂0 predictions after every step for the first image of each
    user, a list over steps of (U, C, H, W): the teaching view of denoising.
    """
    c, h, w = run_config["latent_shape"]
    num_classes, scale = run_config["num_classes"], run_config["scaling_factor"]
    sched, prediction = schedule_of(run_config), run_config["prediction"]
    for u in users:
        if not 0 <= u < num_classes:
            raise ValueError(f"user id {u} is outside 0…{num_classes - 1} (this run has {num_classes} users)")
    jobs = [(u, i) for u in users for i in range(n_per_user)]
    images, first_x0s = [], {}
    bar = tqdm(total=len(jobs), desc="sampling", unit="img", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        noise = torch.stack([initial_noise(seed, u, i, (c, h, w)) for u, i in batch]).to(device)  # (B, c, h, w)
        y = torch.tensor([u for u, _ in batch], device=device)
        guided = cfg_scale is not None and cfg_scale != 1.0
        steps_x0 = []
        callback = (lambda i, t, x, x0_hat, acc=steps_x0: acc.append(x0_hat)) if trajectory else None
        z = sample(model, noise, sched, sampler=sampler, steps=steps, spacing=spacing, prediction=prediction,
                   eta=eta, guidance_scale=cfg_scale if guided else None, guidance_rescale=cfg_rescale,
                   cond=y, null_cond=torch.full_like(y, num_classes) if guided else None,
                   generator=torch.Generator().manual_seed(seed + start), callback=callback)
        images.append(decode_latents(vae, run_config["vae_model_type"], z, scale).cpu())
        for k, (u, i) in enumerate(batch):
            if trajectory and i == 0:
                first_x0s[u] = torch.stack([x0[k] for x0 in steps_x0])  # (S, c, h, w)
        bar.update(len(batch))
    bar.close()
    x = torch.cat(images).reshape(len(users), n_per_user, *images[0].shape[1:])  # (U, n, C, H, W)
    traj = None
    if trajectory:
        stacked = torch.stack([first_x0s[u] for u in users], dim=1)  # (S, U, c, h, w)
        traj = [decode_latents(vae, run_config["vae_model_type"], s.to(device), scale).cpu() for s in stacked]
    return x, traj
