"""One training step of torchdiffeq's examples/cnf.py (two circles, width 64, hypernetwork 32,
batch 512, dopri5 rtol = atol = 1e-5 from t = 10 to 0, exact trace by autograd, Adam 1e-3),
by odeint_adjoint and by odeint: the reference for `cargo bench -p node-models --bench cnf`.
From a seed-0 initialisation, one warm-up step, then `reps` timed steps in a row, on fresh
points each step (numpy's RandomState(step), scikit-learn's make_circles construction).
Usage: python3 bench-cnf-torch.py [cpu|cuda] [reps]"""
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torchdiffeq import odeint, odeint_adjoint

dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
if dev == "cpu":
    torch.set_num_threads(int(torch.get_num_threads()))
WIDTH, HIDDEN, N = 64, 32, 512


def circles(n, seed):
    rng = np.random.RandomState(seed)
    a_out = np.linspace(0, 2 * np.pi, n // 2, endpoint=False)
    a_in = np.linspace(0, 2 * np.pi, n - n // 2, endpoint=False)
    pts = np.vstack([np.c_[np.cos(a_out), np.sin(a_out)], 0.5 * np.c_[np.cos(a_in), np.sin(a_in)]])
    pts = pts[rng.permutation(n)]
    return torch.tensor(pts + rng.normal(scale=0.06, size=pts.shape), dtype=torch.float32, device=dev)


class Hyper(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(1, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = nn.Linear(HIDDEN, 3 * WIDTH * 2 + WIDTH)

    def forward(self, t):
        p = self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(t.reshape(1, 1)))))).reshape(-1)
        b = WIDTH * 2
        w, u, g = p[:b].reshape(WIDTH, 2, 1), p[b:2 * b].reshape(WIDTH, 1, 2), p[2 * b:3 * b].reshape(WIDTH, 1, 2)
        return w, p[3 * b:].reshape(WIDTH, 1, 1), u * torch.sigmoid(g)


class CNF(nn.Module):
    def __init__(self):
        super().__init__()
        self.hyper, self.nfe = Hyper(), 0

    def forward(self, t, states):
        self.nfe += 1
        z = states[0]
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            w, b, u = self.hyper(t)
            h = torch.tanh(torch.matmul(z.unsqueeze(0).repeat(WIDTH, 1, 1), w) + b)
            dz = torch.matmul(h, u).mean(0)
            tr = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(2))
        return dz, -tr.view(-1, 1)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


print(f"torchdiffeq {__import__('torchdiffeq').__version__}, torch {torch.__version__}, {dev}; 1 warm-up + {reps} steps")
print("| gradient | median ms | min ms | NFE fwd / bwd (last step) | NLL after |")
print("|---|---:|---:|---|---:|")
for name, solve in [("adjoint", odeint_adjoint), ("backprop", odeint)]:
    torch.manual_seed(0)
    f = CNF().to(dev)
    opt = torch.optim.Adam(f.parameters(), lr=1e-3)
    var = torch.tensor(0.1, device=dev)
    t = torch.tensor([10.0, 0.0], device=dev)
    times = []
    for i in range(reps + 1):
        sync()
        start = time.perf_counter()
        opt.zero_grad()
        x = circles(N, i)
        f.nfe = 0
        z, dlogp = solve(f, (x, torch.zeros(N, 1, device=dev)), t, atol=1e-5, rtol=1e-5, method="dopri5")
        nfe_f = f.nfe
        logp0 = -0.5 * (z[-1] ** 2).sum(1) / var - torch.log(2 * torch.pi * var)
        loss = -(logp0 - dlogp[-1].view(-1)).mean()
        f.nfe = 0
        loss.backward()
        opt.step()
        nll = loss.item()
        sync()
        if i > 0:
            times.append((time.perf_counter() - start) * 1e3)
        last = (nfe_f, f.nfe, nll)
    print(f"| {name} | {np.median(times):.1f} | {min(times):.1f} | {last[0]} / {last[1]} | {last[2]:.4f} |")
