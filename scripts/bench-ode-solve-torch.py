"""torchdiffeq on the `ode_demo` benchmark problem (the node-solvers `ode_demo` bench), on any
device: same weights and initial states (fixtures/torchdiffeq), CUDA synchronized per solve.
Usage: python3 scripts/bench-ode-solve-torch.py [cpu|cuda] [reps]"""
import os
import sys
import time

import numpy as np
import torch
from torchdiffeq import odeint

here = os.path.dirname(os.path.abspath(__file__))
dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 20


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def grid100(func, y0, t):
    return torch.linspace(float(t[0]), float(t[-1]), 101, dtype=t.dtype, device=t.device)


# torchdiffeq's Adams methods raise their order up to 12 (implicit_adams iterates its
# corrector up to four times, checking convergence): not the same method as node-solvers'
# order-4 rows, timed for their cost. Their max |Δ| is against the rk4 solution.
for name, file, kw in [
    ("dopri5 rtol 1e-7 atol 1e-9", "ode_solve_dopri5_rtol1e-7_atol1e-9",
     dict(method="dopri5", rtol=1e-7, atol=1e-9)),
    ("rk4 (3/8 rule) 100 steps", "ode_solve_rk4_100steps",
     dict(method="rk4", options=dict(grid_constructor=grid100))),
    ("implicit_adams 100 steps", "ode_solve_rk4_100steps",
     dict(method="implicit_adams", options=dict(grid_constructor=grid100))),
    ("explicit_adams 100 steps", "ode_solve_rk4_100steps",
     dict(method="explicit_adams", options=dict(grid_constructor=grid100))),
]:
    fx = np.load(os.path.join(here, "..", "fixtures", "torchdiffeq", file + ".npz"))
    t = lambda k: torch.tensor(fx[k], device=dev)
    w1, b1, w2, b2, z0 = t("w1"), t("b1"), t("w2"), t("b2"), t("z0")
    nfe = [0]

    def f(_t, z):
        nfe[0] += 1
        return torch.tanh((z ** 3) @ w1.T + b1) @ w2.T + b2

    ts = torch.tensor([0.0, 1.0], device=dev)
    with torch.no_grad():
        for _ in range(3):
            odeint(f, z0, ts, **kw)
        sync()
        nfe[0] = 0
        z1 = odeint(f, z0, ts, **kw)[-1]
        n = nfe[0]
        diff = (z1 - t("z1")).abs().max().item()
        samples = []
        for _ in range(reps):
            s = time.perf_counter()
            odeint(f, z0, ts, **kw)
            sync()
            samples.append(time.perf_counter() - s)
    samples.sort()
    print(f"| torchdiffeq {name} | {dev} | NFE {n} | median {samples[len(samples) // 2] * 1e3:.3f} ms "
          f"| min {samples[0] * 1e3:.3f} ms | max |Δ| {diff:.1e} |")
