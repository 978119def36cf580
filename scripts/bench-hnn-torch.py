"""A Hamiltonian neural network's training step in PyTorch, as Greydanus et al.'s `hnn.py`
takes it (the reference for `cargo bench -p node-models --bench hnn`): 750 noisy states of the
spring `H = q² + p²` (25 trajectories of 30 points over t in [0, 3], noise 0.1), an MLP
2-200-200-1 (tanh) for `H` whose input gradient comes from `torch.autograd.grad(...,
create_graph=True)` (2-200-200-2 for the baseline; `T(p) + V(q)` from two MLPs 1-200-200-1
for the separable model), the time derivatives' MSE, full-batch Adam at lr 1e-3 with weight
decay 1e-4. One warm-up step, then `reps` timed steps in a row; and a rollout of 25 states
over t in [0, 20] by torchdiffeq (dopri5 at 1e-6; the separable model by leapfrog with steps
of 0.01, written out, as torchdiffeq has no symplectic method). Then one gradient of a
leapfrog rollout of the separable model (25 states, steps of 0.01, L = sum q(T)^2 + p(T)^2) by
backprop, 100, 1000 and 4000 steps: time, and on the CPU the peak resident memory above the
set-up, each in its own process; on a GPU 100 and 1000 steps, time only (the reference for the
bench's second table).
Usage: python3 bench-hnn-torch.py [cpu|cuda] [reps]"""
import math
import os
import subprocess
import sys
import time

import torch
from torchdiffeq import odeint

CHILD = len(sys.argv) > 2 and sys.argv[1] == "rollout-gradient-child"
dev = "cpu" if CHILD else (sys.argv[1] if len(sys.argv) > 1 else "cpu")
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
torch.manual_seed(0)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def data(n_traj=25, n=30, noise=0.1):
    xs, dxs = [], []
    for _ in range(n_traj):
        d = torch.rand(2) * 2 - 1
        d = d / d.norm() * (0.1 + 0.9 * torch.rand(()))
        t = torch.linspace(0, 3, n)
        q = d[0] * torch.cos(2 * t) + d[1] * torch.sin(2 * t)
        p = d[1] * torch.cos(2 * t) - d[0] * torch.sin(2 * t)
        dxs.append(torch.stack([2 * p, -2 * q], 1))
        xs.append(torch.stack([q, p], 1) + noise * torch.randn(n, 2))
    return torch.cat(xs).to(dev), torch.cat(dxs).to(dev)


def mlp(i, o):
    return torch.nn.Sequential(
        torch.nn.Linear(i, 200), torch.nn.Tanh(), torch.nn.Linear(200, 200), torch.nn.Tanh(),
        torch.nn.Linear(200, o)).to(dev)


class Model(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        if kind == "baseline":
            self.f = mlp(2, 2)
        elif kind == "hnn":
            self.h = mlp(2, 1)
        else:
            self.t, self.v = mlp(1, 1), mlp(1, 1)

    def forward(self, x, graph=True):
        if self.kind == "baseline":
            return self.f(x)
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            if self.kind == "hnn":
                g = torch.autograd.grad(self.h(x).sum(), x, create_graph=graph)[0]
                return torch.cat([g[:, 1:], -g[:, :1]], 1)
            q, p = x[:, :1], x[:, 1:]
            return torch.cat([self.velocity(p, graph), self.force(q, graph)], 1)

    def velocity(self, p, graph=True):
        with torch.enable_grad():
            p = p.detach().requires_grad_(True) if not p.requires_grad else p
            return torch.autograd.grad(self.t(p).sum(), p, create_graph=graph)[0]

    def force(self, q, graph=True):
        with torch.enable_grad():
            q = q.detach().requires_grad_(True) if not q.requires_grad else q
            return -torch.autograd.grad(self.v(q).sum(), q, create_graph=graph)[0]


def rss_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return float(line.split()[1])
    return float("nan")


def rollout_gradient(steps):
    """One gradient of a leapfrog rollout of `steps` steps of 0.01: milliseconds."""
    model = Model("separable")
    x = data(1)[0]
    x0 = torch.cat([x, 0.5 * x])[:25]
    s = time.perf_counter()
    q, p = x0[:, :1], x0[:, 1:]
    h = 0.01
    a = model.force(q)
    for _ in range(steps):
        p = p + 0.5 * h * a
        q = q + h * model.velocity(p)
        a = model.force(q)
        p = p + 0.5 * h * a
    loss = (q ** 2).sum() + (p ** 2).sum()
    loss.backward()
    sync()
    return (time.perf_counter() - s) * 1e3


if CHILD:
    base = rss_kib("VmRSS:")
    ms = rollout_gradient(int(sys.argv[2]))
    print(f"{ms:.1f} {(rss_kib('VmHWM:') - base) / 1024:.1f}")
    sys.exit(0)

x, dx = data()
x0 = x[:25].detach()
ts = torch.linspace(0, 20, 200, device=dev)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}")
print("| model | step median ms | step min ms | rollout ms | rollout NFE |")
print("|---|---:|---:|---:|---:|")
for kind in ["baseline", "hnn", "separable"]:
    model = Model(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x_in = x.clone().requires_grad_(kind != "baseline")
    times = []
    for i in range(reps + 1):
        s = time.perf_counter()
        loss = ((model(x_in) - dx) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if i > 0:
            times.append((time.perf_counter() - s) * 1e3)
    times.sort()
    nfe = [0]
    s = time.perf_counter()
    if kind == "separable":
        q, p = x0[:, :1], x0[:, 1:]
        a = model.force(q, graph=False)
        for k in range(len(ts) - 1):
            n = math.ceil(float(ts[k + 1] - ts[k]) / 0.01 * (1 - 1e-12))
            h = float(ts[k + 1] - ts[k]) / n
            for _ in range(n):
                p = p + 0.5 * h * a
                q = q + h * model.velocity(p, graph=False)
                a = model.force(q, graph=False)
                p = p + 0.5 * h * a
                nfe[0] += 2
        nfe[0] += 1
    else:
        def f(_t, y):
            nfe[0] += 1
            return model(y, graph=False).detach()
        with torch.no_grad():
            odeint(f, x0, ts, rtol=1e-6, atol=1e-6)
    sync()
    rollout = (time.perf_counter() - s) * 1e3
    print(f"| {kind} | {times[len(times) // 2]:.2f} | {times[0]:.2f} | {rollout:.1f} | {nfe[0]} |")

print(f"\nGradient of a leapfrog rollout of the separable HNN, 25 states, steps of 0.01, {dev}")
print("| mode | steps | ms | peak RSS above set-up (MiB) |")
print("|---|---:|---:|---:|")
# On a GPU, time only, and not the longest rollout (as the Rust bench).
for steps in [100, 1000, 4000] if dev == "cpu" else [100, 1000]:
    if dev != "cpu":
        print(f"| backprop | {steps} | {rollout_gradient(steps):.1f} | – |")
        continue
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "rollout-gradient-child",
                          str(steps)], capture_output=True, text=True)
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 2:
        print(f"| backprop | {steps} | failed: {out.stderr.strip().splitlines()[-1:]} | |")
    else:
        print(f"| backprop | {steps} | {fields[0]} | {fields[1]} |")
