"""One timing rule for every benchmark: two warm-up calls, then the median of `repeats` timed calls; the CPU's
name, which every timing is quoted with; and the training scripts' step around a loss, which the training
benchmarks time."""

import platform
import statistics
import time
from pathlib import Path

import torch


def median_seconds(step, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Median wall time of `step()` (synchronising CUDA around each call) after two untimed warm-ups."""
    cuda = torch.device(device).type == "cuda"
    times = []
    for i in range(repeats + 2):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def training_step(model, opt, loss_of, bf16: bool, device_type: str = "cpu"):
    """The scripts' step around a loss: the forward under autocast, the gradient clipped to norm 1, AdamW."""
    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, as `lscpu` prints it), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
