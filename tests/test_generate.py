"""tinyldm.generate: the trajectory keeps (and decodes) the x̂0 of only the users it is asked for."""

import torch

from tinyldm.diffusion import SamplingConfig
from tinyldm.diffusion.schedules import Schedule
from tinyldm.generate import generate
from tinyldm.loading import autoencoder_config, backbone_config, build_autoencoder, build_backbone


def tiny_run():
    """A random tiny DiT on 4×8×8 latents of 3 users and the tiny autoencoder (16×16 images): generate's inputs."""
    torch.manual_seed(0)
    cfg = {"latent_shape": [4, 8, 8], "scaling_factor": 0.5, "shift_factor": 0.1, "num_classes": 3,
           "schedule": Schedule.flow(shift=3.0).to_config(), "prediction": "flow",
           "backbone_config": backbone_config("dit", "tiny", 4, 8, 3, patch_size=2)}
    model = build_backbone("dit", cfg["backbone_config"]).eval()
    vae = build_autoencoder("kl", autoencoder_config("kl", "tiny")).eval()
    return model, vae, cfg


def test_the_trajectory_holds_the_first_users_first_image_and_decodes_only_those():
    model, vae, cfg = tiny_run()
    decoded = []  # images per decoder call
    decode = vae.decode_latent
    vae.decode_latent = lambda z: decoded.append(len(z)) or decode(z)
    sampling = SamplingConfig(sampler="flow_euler", steps=3, cfg_scale=1.5)

    x, traj = generate(model, vae, cfg, [2, 0, 1], 2, sampling, trajectory_users=2)
    assert x.shape == (3, 2, 3, 16, 16)
    assert len(traj) == 3 and traj[0].shape == (2, 3, 16, 16)  # 3 steps × the first 2 users
    assert sum(decoded) == 3 * 2 + 3 * 2  # the 6 images, then 3 steps × 2 users: not 3 steps × all 3 users
    # Flow Euler's last x̂0 is the sample itself (t_next = 0: x_next = x̂0), so the last frame is each user's image 0.
    assert torch.allclose(traj[-1], x[:2, 0], atol=1e-5)

    decoded.clear()
    x_plain, none = generate(model, vae, cfg, [2, 0, 1], 2, sampling)
    assert none is None and sum(decoded) == 6
    assert torch.equal(x_plain, x)  # keeping the trajectory does not change the images
