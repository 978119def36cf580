"""torchsde's adaptive steps (`adaptive=True`) on the problems of
`cargo bench -p node-solvers --bench sde_adaptive`: steps, rejections, drift evaluations,
time and the mean error at t = 1 against the exact solution along each path, 1000 paths,
float64, rtol = atol = tol, first step 0.01, dt_min 1e-7, and fixed steps with as many drift
evaluations as the tightest adaptive solve. torchsde's own Brownian motion
(`BrownianInterval`, seed 0), so the paths are not ours: compare errors, not paths.

1. Geometric Brownian motion dy = 0.4 y dt + 0.9 y dW (Itô for euler and milstein,
   Stratonovich for heun and midpoint).
2. dy = -y/2 dt + sigma(t) y o dW with sigma(t) = 0.05 + 2 exp(-((t - 0.55)/0.03)^2).

Usage: python3 bench-sde-adaptive-torch.py [reps]"""
import math
import statistics
import sys
import time
import warnings

import torch
import torchsde

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
N = 1000
TOLS = [1e-2, 1e-3, 1e-4]
torch.set_default_dtype(torch.float64)


def sigma_bump(t):
    return 0.05 + 2.0 * math.exp(-(((t - 0.55) / 0.03) ** 2))


class Sde(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, sde_type, drift, diffusion):
        super().__init__()
        self.sde_type = sde_type
        self.drift, self.diffusion = drift, diffusion
        self.nfe = 0

    def f(self, t, y):
        self.nfe += 1
        return self.drift(float(t), y)

    def g(self, t, y):
        return self.diffusion(float(t), y)


def run(sde, method, bm, y0, **kw):
    sde.nfe = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys = torchsde.sdeint(sde, y0, torch.tensor([0.0, 1.0]), bm=bm, method=method, **kw)
    hit_min = any("minimum" in str(w.message) for w in caught)
    return ys[-1], sde.nfe, hit_min


def timed(f):
    times, out = [], None
    for _ in range(reps):
        s = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - s)
    return statistics.median(times), out


def compare(sde, method, bm, y0, exact, options=None):
    evals = 0
    for tol in TOLS:
        kw = dict(dt=0.01, adaptive=True, rtol=tol, atol=tol, dt_min=1e-7)
        if options:
            kw["options"] = options
        secs, (y1, nfe, hit_min) = timed(lambda: run(sde, method, bm, y0, **kw))
        evals = nfe
        err = (y1 - exact).abs().mean().item()
        note = " (hit dt_min)" if hit_min else ""
        print(f"| {method}, tol {tol:.0e}{note} | {nfe} | {secs * 1e3:.1f} ms | {err:.2e} |")
    per_step = 2 if method in ("heun", "midpoint") else 1
    n = max(evals // per_step, 1)
    kw = dict(dt=1.0 / n)
    if options:
        kw["options"] = options
    secs, (y1, nfe, _) = timed(lambda: run(sde, method, bm, y0, **kw))
    err = (y1 - exact).abs().mean().item()
    print(f"| {method}, {n} fixed steps | {nfe} | {secs * 1e3:.1f} ms | {err:.2e} |")


def header(title):
    print(f"\n## {title}")
    print("| method, steps | drift evaluations | time | mean error |")
    print("|---|---|---|---|")


torch.manual_seed(0)
y0 = torch.ones(N, 1)
bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(N, 1), entropy=0, levy_area_approximation="none")
w1 = bm(0.0, 1.0)

header(f"Geometric Brownian motion, {N} paths, t 0 -> 1 (torchsde {torchsde.__version__}, median of {reps})")
for method, sde_type, options in [
    ("euler", "ito", None),
    ("milstein", "ito", {"grad_free": True}),
    ("heun", "stratonovich", None),
    ("midpoint", "stratonovich", None),
]:
    drift = 0.4 - 0.81 / 2 if sde_type == "ito" else 0.4
    exact = y0 * torch.exp(0.9 * w1 + drift)
    sde = Sde(sde_type, lambda t, y: 0.4 * y, lambda t, y: 0.9 * y)
    compare(sde, method, bm, y0, exact, options)

header(f"Noise around t = 0.55 only, {N} paths, t 0 -> 1 (median of {reps})")
k = 1 << 16
integral = torch.zeros(N, 1)
for i in range(k):
    a, b = i / k, (i + 1) / k
    integral += sigma_bump(0.5 * (a + b)) * bm(a, b)
exact = y0 * torch.exp(integral - 0.5)
for method in ["heun", "midpoint"]:
    sde = Sde("stratonovich", lambda t, y: -0.5 * y, lambda t, y: sigma_bump(t) * y)
    compare(sde, method, bm, y0, exact)
