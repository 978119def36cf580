#!/usr/bin/env python3
"""The reference for `cargo bench -p node-models --bench shooting`: one training step of a
universal differential equation (Lotka-Volterra's field plus 0.1 x an MLP 2-64-64-2, tanh) on
a series of 201 observations over [0, 20], by single shooting and by multiple shooting (20
segments of 10 intervals, solved side by side in one batched solve or one by one), in PyTorch
with torchdiffeq: dopri5 at rtol 1e-5, atol 1e-6, f32; backprop through the solver
(`odeint`) and the adjoint (`odeint_adjoint`). The loss is the data's mean square error plus
10 x the mean square gap between segments; its gradient goes to the network and the start
states. One warm-up step, then REPS timed steps.

usage: bench-shooting-torch.py [cpu|cuda] [REPS]
"""
import statistics
import sys
import time

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint


def lotka_volterra(y):
    x, p = y[:, :1], y[:, 1:]
    return torch.cat([1.5 * x - x * p, x * p - 3.0 * p], 1)


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
        )
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return lotka_volterra(y) + 0.1 * self.net(y)


def segments(n, k):
    return [range(s, min(s + k + 1, n)) for s in range(0, n - 1, k)]


def step(field, starts, ts, series, k, batched, adjoint):
    """The loss and its gradient; returns the forward evaluations."""
    solve = odeint_adjoint if adjoint else odeint
    kw = dict(rtol=1e-5, atol=1e-6, method="dopri5")
    if adjoint:
        kw["adjoint_params"] = tuple(field.parameters())
    segs = segments(len(ts), k)
    field.nfe = 0
    if batched and len(segs) > 1:
        # [S, 1, 2] -> [S, 2]: the segments side by side, on the first one's times.
        ys = solve(field, starts.reshape(-1, 2), ts[: k + 1], **kw)  # [k+1, S, 2]
        preds = [ys[:, i : i + 1] for i in range(len(segs))]
    else:
        preds = [solve(field, starts[i], ts[list(r)], **kw) for i, r in enumerate(segs)]
    nfe = field.nfe
    targets = torch.cat([series[list(r)] for r in segs])
    data = ((torch.cat(preds) - targets) ** 2).mean()
    if len(segs) > 1:
        ends = torch.stack([p[-1] for p in preds[:-1]])
        gaps = ((ends - starts[1:]) ** 2).mean()
    else:
        gaps = torch.zeros((), device=starts.device)
    loss = data + 10.0 * gaps
    loss.backward()
    return nfe


def main():
    dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    torch.manual_seed(0)
    n = 201
    ts = torch.linspace(0.0, 20.0, n, device=dev)
    with torch.no_grad():
        series = odeint(
            lambda t, y: lotka_volterra(y),
            torch.tensor([[1.0, 1.0]], device=dev),
            ts,
            rtol=1e-7,
            atol=1e-8,
            method="dopri8",
        )  # [n, 1, 2]
    print(
        f"A universal differential equation's training step on a series of {n} observations "
        f"(Lotka-Volterra + MLP 2-64-64-2, dopri5, f32), PyTorch {torch.__version__} + "
        f"torchdiffeq on {dev}; 1 warm-up + {reps} steps"
    )
    print("| shooting | gradient | solves | step median ms | step min ms | forward NFE |")
    print("|---|---|---:|---:|---:|---:|")
    for name, k, batched in [
        ("single", n - 1, False),
        ("20 segments, batched", 10, True),
        ("20 segments, one by one", 10, False),
    ]:
        for gname, adjoint in [("backprop", False), ("adjoint", True)]:
            field = Field().to(dev)
            segs = segments(n, k)
            starts = series[[r.start for r in segs]].clone().requires_grad_(True)
            times = []
            for i in range(reps + 1):
                field.zero_grad()
                starts.grad = None
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                nfe = step(field, starts, ts, series, k, batched, adjoint)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if i > 0:
                    times.append((time.perf_counter() - t0) * 1e3)
            solves = 1 if (batched or len(segs) == 1) else len(segs)
            print(
                f"| {name} | {gname} | {solves} | {statistics.median(times):.1f} | "
                f"{min(times):.1f} | {nfe} |"
            )


if __name__ == "__main__":
    main()
