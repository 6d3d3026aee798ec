"""The GPU paths: the same models, samplers and scripts on CUDA agree with the CPU. Skipped without a GPU.

CI has no GPU, so these run only where one is present (`bash benchmarks/gpu_check.sh` runs them with the GPU
benchmarks). Tolerances: float32 on the GPU differs from the CPU by summation order only (~1e-5 relative);
bf16 autocast keeps 8 mantissa bits, so a tiny network's output moves by about 1 % of its scale.
"""

import json

import pytest
import torch
from test_backbones import no_sdpa, perturb, tiny
from test_stage2 import LDM, vae_run  # noqa: F401  (fixture)

import sample as sample_script
import train_ldm
from tinyldm.diffusion import SamplingConfig, Schedule, sample
from tinyldm.diffusion.analytic import gaussian_network

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
def test_backbone_on_gpu_matches_cpu_in_float32_and_bf16(kind, monkeypatch):
    # cuDNN convolutions default to TF32 (10 mantissa bits, ~1e-3 relative); compare true float32 here.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = perturb(tiny(kind)).eval()
    x, t, y = torch.randn(4, 4, 16, 16), torch.tensor([10.0, 300.0, 600.0, 990.0]), torch.tensor([0, 1, 2, 4])
    if kind == "mmdit":
        t = t / 1000  # flow time in [0, 1]
    with torch.no_grad():
        cpu = model(x, t, y)
        model.cuda()
        gpu = model(x.cuda(), t.cuda(), y.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x.cuda(), t.cuda(), y.cuda())
    assert rel_err(gpu, cpu) < 1e-4
    assert rel_err(bf16, cpu) < 3e-2


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
def test_fused_attention_kernels_match_the_reference_path_on_gpu(kind, monkeypatch):
    model = perturb(tiny(kind)).eval().cuda()
    reference = tiny(kind, reference_attention=True).eval().cuda()
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(2, 4, 16, 16, device="cuda"), torch.tensor([1, 2], device="cuda")
    t = torch.tensor([0.1, 0.9], device="cuda") * (1 if kind == "mmdit" else 1000)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        fast = model(x, t, y)  # flash / memory-efficient SDPA kernels
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_sdpa)
        slow = reference(x, t, y)  # explicit softmax(QKᵀ/√d)V
    assert rel_err(fast, slow) < 3e-2


@pytest.mark.parametrize("name", ["ddim", "heun", "dpmpp_2m", "dpm_solver_3"])
def test_samplers_on_gpu_match_cpu_on_the_analytic_denoiser(name):
    sched = Schedule.vp("scaled_linear")
    model = gaussian_network(sched, "eps", mu=0.5, s=0.7)  # exact ε-network of N(0.5, 0.7²) data
    x_T = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    config = SamplingConfig(name, steps=20, cfg_scale=1.0)
    cpu = sample(model, x_T, sched, config, prediction="eps")
    gpu = sample(model, x_T.cuda(), sched, config, prediction="eps")
    assert gpu.device.type == "cuda"
    assert rel_err(gpu, cpu) < 1e-9


def test_train_ldm_and_sample_on_gpu(vae_run, tmp_path):  # noqa: F811
    run = tmp_path / "ldm"
    rc = train_ldm.main(["--backbone", "dit", "--vae", str(vae_run), "--out", str(run), "--max-steps", "4",
                         "--device", "cuda", *LDM])
    assert rc == 0
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    out = tmp_path / "samples"
    assert sample_script.main(["--run", str(run), "--users", "0,1", "--n-per-user", "2", "--steps", "4",
                               "--out", str(out), "--device", "cuda"]) == 0
    assert (out / "grid.png").is_file() and (out / "user_01" / "001.png").is_file()
