"""Accuracy of every deterministic sampler on Gaussian data, whose exact denoiser and ODE solution are known.

    python benchmarks/bench_samplers.py            # markdown tables for docs/samplers_guide.md (~10 s on CPU)

Table 1: measured convergence order over a fixed interval that ends at σ > 0 (uniform in t, N = 16, 32, 64).
Table 2: max |x0 − exact x0| of the final sample at 10 / 20 / 50 trailing steps (down to σ = 0), with NFE.
Data x0 ~ N(0.5, 0.7²), 256 elements from one fixed x_T; float64; prediction ε (VP) or flow velocity (flow).
"""

import argparse

import numpy as np
import torch

from tinyldm.diffusion import SamplingConfig, Schedule, nfe, sample
from tinyldm.diffusion.analytic import gaussian_flow_map, gaussian_network

MU, S = 0.5, 0.7
VP_SAMPLERS = ["ddim", "euler", "dpm_solver_1", "heun", "dpm_solver_2", "dpmpp_2m", "lms", "plms", "dpm_solver_3",
               "dpmpp_3m"]
FLOW_SAMPLERS = ["flow_euler", "euler", "flow_heun", "heun", "ddim", "dpmpp_2m", "dpmpp_3m"]  # others need t < 1


def order_on_interval(sched, sampler, prediction, t0, t1, x, Ns=(16, 32, 64)):
    errors = []
    for N in Ns:
        ts = torch.linspace(t0, t1, N + 1, dtype=torch.float64)
        out = sample(gaussian_network(sched, prediction, MU, S), x, sched, SamplingConfig(sampler, cfg_scale=1.0),
                     timesteps=ts, prediction=prediction, denoise_to_zero=False)
        errors.append((out - gaussian_flow_map(sched, x, t0, t1, MU, S)).abs().max().item())
    return -np.polyfit(np.log(Ns), np.log(errors), 1)[0]


def end_to_end_errors(sched, sampler, prediction, x, Ns=(10, 20, 50)):
    exact_x0 = gaussian_flow_map(sched, x, sched.t_max, sched.t_min, MU, S)
    errors = []
    for N in Ns:
        out = sample(gaussian_network(sched, prediction, MU, S), x, sched,
                     SamplingConfig(sampler, N, "trailing", cfg_scale=1.0), prediction=prediction)
        errors.append((out - exact_x0).abs().max().item())
    return errors


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    x = torch.randn(256, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    schedules = {"linear": Schedule.vp("linear"), "scaled_linear": Schedule.vp("scaled_linear"),
                 "cosine": Schedule.vp("cosine")}
    intervals = {"linear": (999.0, 200.0), "scaled_linear": (999.0, 200.0), "cosine": (900.0, 200.0)}
    flow = Schedule.flow()

    print("Measured order (slope of log error vs log N, N = 16, 32, 64; VP t 999→200 (cosine 900→200), "
          "flow t 0.95→0.2)\n")
    print("| sampler | " + " | ".join(schedules) + " | flow |")
    print("|---" * (len(schedules) + 2) + "|")
    for sampler in VP_SAMPLERS:
        row = [order_on_interval(schedules[k], sampler, "eps", *intervals[k], x) for k in schedules]
        row.append(order_on_interval(flow, sampler, "flow", 0.95, 0.2, x))
        print(f"| {sampler} | " + " | ".join(f"{v:.2f}" for v in row) + " |")

    for name, sched, samplers, prediction in [("scaled_linear (Stable Diffusion)", schedules["scaled_linear"],
                                               VP_SAMPLERS, "eps"), ("linear (DDPM)", schedules["linear"],
                                                                     VP_SAMPLERS, "eps"),
                                              ("flow (shift 1)", flow, FLOW_SAMPLERS, "flow")]:
        print(f"\nFinal-sample max error vs the exact x0, trailing spacing, {name}\n")
        print("| sampler | NFE at 10/20/50 | 10 steps | 20 steps | 50 steps |")
        print("|---|---|---|---|---|")
        for sampler in samplers:
            errors = end_to_end_errors(sched, sampler, prediction, x)
            calls = "/".join(str(nfe(sampler, n)) for n in (10, 20, 50))
            print(f"| {sampler} | {calls} | " + " | ".join(f"{e:.2e}" for e in errors) + " |")


if __name__ == "__main__":
    main()
