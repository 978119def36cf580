"""One FFJORD training step as FFJORD's train_toy.py takes it on two circles (ConcatSquash
layers 2-64-64-64-2, tanh, t1 = 0.5, standard normal base, batch 512, dopri5 rtol = atol =
1e-5, torchdiffeq's odeint_adjoint, Adam 1e-3), with FFJORD's divergences: the exact one by
one autograd pass per dimension (`divergence_bf`) and Hutchinson's (`divergence_approx`,
Rademacher and Gaussian noise, one autograd pass). The reference for the second table of
`cargo bench -p node-models --bench ffjord`. From a seed-0 initialisation, one warm-up step,
then `reps` timed steps in a row, on fresh points each step.
Usage: python3 bench-ffjord-torch.py [cpu|cuda] [reps]"""
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torchdiffeq import odeint_adjoint

dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
N, DIMS = 512, [2, 64, 64, 64, 2]


def circles(n, seed):
    rng = np.random.RandomState(seed)
    a_out = np.linspace(0, 2 * np.pi, n // 2, endpoint=False)
    a_in = np.linspace(0, 2 * np.pi, n - n // 2, endpoint=False)
    pts = np.vstack([np.c_[np.cos(a_out), np.sin(a_out)], 0.5 * np.c_[np.cos(a_in), np.sin(a_in)]])
    pts = pts[rng.permutation(n)]
    return torch.tensor(pts + rng.normal(scale=0.06, size=pts.shape), dtype=torch.float32, device=dev)


class ConcatSquashLinear(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self._layer = nn.Linear(dim_in, dim_out)
        self._hyper_bias = nn.Linear(1, dim_out, bias=False)
        self._hyper_gate = nn.Linear(1, dim_out)

    def forward(self, t, x):
        t = t.view(1, 1)
        return self._layer(x) * torch.sigmoid(self._hyper_gate(t)) + self._hyper_bias(t)


class OdeFunc(nn.Module):
    def __init__(self, noise):
        super().__init__()
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b) for a, b in zip(DIMS[:-1], DIMS[1:]))
        self.noise, self.e, self.nfe = noise, None, 0

    def forward(self, t, states):
        self.nfe += 1
        z = states[0]
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            dz = z
            for i, layer in enumerate(self.layers):
                dz = layer(t, dz)
                if i < len(self.layers) - 1:
                    dz = torch.tanh(dz)
            if self.noise is None:  # divergence_bf
                div = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(2))
            else:  # divergence_approx
                e_dzdx = torch.autograd.grad(dz, z, self.e, create_graph=True)[0]
                div = (e_dzdx * self.e).sum(1)
        return dz, -div.view(-1, 1)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


print(f"torchdiffeq {__import__('torchdiffeq').__version__}, torch {torch.__version__}, {dev}, "
      f"{torch.get_num_threads()} threads; 1 warm-up + {reps} steps")
print("| trace | median ms | min ms | NFE fwd / bwd (last step) | NLL after |")
print("|---|---:|---:|---|---:|")
for name, noise in [("exact", None), ("Hutchinson, Rademacher", "rademacher"), ("Hutchinson, Gaussian", "gaussian")]:
    torch.manual_seed(0)
    f = OdeFunc(noise).to(dev)
    opt = torch.optim.Adam(f.parameters(), lr=1e-3)
    t = torch.tensor([0.5, 0.0], device=dev)
    times = []
    for i in range(reps + 1):
        sync()
        start = time.perf_counter()
        opt.zero_grad()
        x = circles(N, i)
        if noise == "rademacher":
            f.e = torch.randint(0, 2, x.shape, device=dev).to(x) * 2 - 1
        elif noise == "gaussian":
            f.e = torch.randn_like(x)
        f.nfe = 0
        z, dlogp = odeint_adjoint(f, (x, torch.zeros(N, 1, device=dev)), t, atol=1e-5, rtol=1e-5, method="dopri5")
        nfe_f = f.nfe
        logp0 = -0.5 * (z[-1] ** 2).sum(1) - np.log(2 * np.pi)
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
