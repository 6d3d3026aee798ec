"""Optional parity with diffusers' schedulers (skipped when diffusers is absent; tinyldm never imports it)."""

import pytest
import torch

from tinyldm.diffusion import Schedule

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("ours,theirs", [("linear", "linear"), ("scaled_linear", "scaled_linear"),
                                         ("cosine", "squaredcos_cap_v2")])
@pytest.mark.parametrize("zero", [False, True])
def test_alphas_cumprod_match_diffusers(ours, theirs, zero):
    kwargs = {} if ours == "cosine" else dict(zip(("beta_start", "beta_end"),
                                                  {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}[ours]))
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, rescale_betas_zero_snr=zero,
                                  **kwargs)
    sched = Schedule.vp(ours, zero_terminal_snr=zero, **kwargs)
    # diffusers computes in float32; agreement to float32 precision.
    torch.testing.assert_close(sched.alphas_cumprod.float(), ref.alphas_cumprod.float(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_integer_spacings_match_diffusers(spacing):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    ref.set_timesteps(10)
    assert Schedule.vp("linear").timesteps(10, spacing).long().tolist() == ref.timesteps.tolist()
