"""One training iteration of torchdiffeq's examples/latent_ode.py (1000 spirals of 100 noisy
points cut from a 500-point grid, noise 0.3, latent 4, hidden 20, RNN 25 read backwards,
odeint's defaults dopri5 rtol 1e-7 atol 1e-9, negative ELBO, Adam 0.01), by odeint (the
example's default) and by odeint_adjoint: the reference for
`cargo bench -p node-models --bench latent_ode`. From a seed-0 initialisation and data, one
warm-up iteration, then `reps` timed ones in a row.
Usage: python3 bench-latent-ode-torch.py [cpu|cuda] [reps]"""
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torchdiffeq import odeint, odeint_adjoint

dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
LATENT, HIDDEN, RNN, N, NTOTAL, NSAMPLE, NOISE = 4, 20, 25, 1000, 500, 100, 0.3


def spirals(rng):
    ts = np.linspace(0, 6 * np.pi, NTOTAL)
    zs_cw = 6 * np.pi + 1 - ts
    cw = np.stack((0.3 * 50 / zs_cw * np.cos(zs_cw) - 5, 0.3 * 50 / zs_cw * np.sin(zs_cw)), 1)
    cc = np.stack((0.3 * ts * np.cos(ts) + 5, 0.3 * ts * np.sin(ts)), 1)
    out = []
    for _ in range(N):
        start = rng.randint(NSAMPLE, NTOTAL - NSAMPLE)
        traj = (cc if rng.rand() > 0.5 else cw)[start:start + NSAMPLE]
        out.append(traj + rng.randn(*traj.shape) * NOISE)
    return (torch.tensor(np.stack(out), dtype=torch.float32, device=dev),
            torch.tensor(ts[:NSAMPLE], dtype=torch.float32, device=dev))


class Func(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, HIDDEN), nn.ELU(),
                                 nn.Linear(HIDDEN, LATENT))
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        return self.net(x)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


x, ts = spirals(np.random.RandomState(0))
print(f"torchdiffeq {__import__('torchdiffeq').__version__}, torch {torch.__version__}, {dev}; 1 warm-up + {reps} iterations")
print("| gradient | median ms | min ms | NFE fwd / bwd (last iteration) | loss after |")
print("|---|---:|---:|---|---:|")
for name, solve in [("backprop", odeint), ("adjoint", odeint_adjoint)]:
    torch.manual_seed(0)
    func = Func().to(dev)
    i2h, h2o = nn.Linear(2 + RNN, RNN).to(dev), nn.Linear(RNN, 2 * LATENT).to(dev)
    dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2)).to(dev)
    params = [p for m in (func, i2h, h2o, dec) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=0.01)
    times = []
    for i in range(reps + 1):
        sync()
        start = time.perf_counter()
        opt.zero_grad()
        h = torch.zeros(N, RNN, device=dev)
        for t in reversed(range(NSAMPLE)):
            h = torch.tanh(i2h(torch.cat((x[:, t], h), 1)))
        out = h2o(h)
        mean, logvar = out[:, :LATENT], out[:, LATENT:]
        z0 = torch.randn_like(mean) * torch.exp(0.5 * logvar) + mean
        func.nfe = 0
        pred = dec(solve(func, z0, ts).permute(1, 0, 2))
        nfe_f = func.nfe
        logpx = (-0.5 * (np.log(2 * np.pi * NOISE ** 2) + (x - pred) ** 2 / NOISE ** 2)).sum((1, 2))
        kl = 0.5 * (logvar.exp() + mean ** 2 - 1 - logvar).sum(1)
        loss = (kl - logpx).mean()
        func.nfe = 0
        loss.backward()
        opt.step()
        l = loss.item()
        sync()
        if i > 0:
            times.append((time.perf_counter() - start) * 1e3)
        last = (nfe_f, func.nfe, l)
    print(f"| {name} | {np.median(times):.1f} | {min(times):.1f} | {last[0]} / {last[1]} | {last[2]:.1f} |")
