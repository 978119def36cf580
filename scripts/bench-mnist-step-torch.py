"""One MNIST training step (batch 128, random images and labels, SGD 0.1 momentum 0.9) of the
Table 1 models in PyTorch + torchdiffeq, on any device: the reference for `mnist-step`.
Models as in torchdiffeq's examples/odenet_mnist.py (see fixtures/mnist_models_reference.py).
Usage: python3 bench-mnist-step-torch.py [cuda|cpu] [reps] [variants, comma-separated]"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

here = os.path.dirname(os.path.abspath(__file__))
ref = open(os.path.join(here, "fixtures", "mnist_models_reference.py")).read().split("out = sys.argv[1]")[0]
exec(ref)  # defines Model, ODEfunc, ...
from torchdiffeq import odeint, odeint_adjoint  # noqa: E402

dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
ALL = ["odenet-adjoint", "odenet-direct", "rknet", "resnet", "odenet-galerkin"]
variants = sys.argv[3].split(",") if len(sys.argv) > 3 else ALL
if any(v not in ALL for v in variants):
    sys.exit(f"unknown variant in {variants}; known: {ALL}")
torch.set_default_dtype(torch.float32)
torch.manual_seed(0)


class GalConv2d(torch.nn.Module):
    """3x3 convolution whose kernel and bias are expanded on Legendre polynomials to degree 2
    over t in [0, 1] (torchdyn's GalConv2d; `GalerkinConv2d` with `legendre:2`)."""

    def __init__(self, cin, cout, k=3):
        super().__init__()
        bound = 1.0 / (cin * 9 * k) ** 0.5
        self.weight = torch.nn.Parameter(torch.empty(cout, cin, 3, 3, k).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.zeros(cout, k))

    def forward(self, t, x):
        s = 2.0 * float(t.detach() if torch.is_tensor(t) else t) - 1.0
        phi = torch.tensor([1.0, s, 1.5 * s * s - 0.5], device=x.device, dtype=x.dtype)
        return F.conv2d(x, self.weight @ phi, self.bias @ phi, padding=1)


class Counted(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f, self.nfe = f, 0

    def forward(self, t, x):
        self.nfe += 1
        return self.f(t, x)


def make(variant):
    kind = "resnet" if variant == "resnet" else "odenet"
    m = Model(kind)
    if variant == "odenet-galerkin":
        m.odefunc.conv1, m.odefunc.conv2 = GalConv2d(64, 64), GalConv2d(64, 64)
    m = m.float().to(dev)
    if kind == "odenet":
        func = Counted(m.odefunc)
        t = torch.tensor([0.0, 1.0], device=dev)

        def block(h):
            if variant in ("odenet-adjoint", "odenet-galerkin"):
                return odeint_adjoint(func, h, t, rtol=1e-3, atol=1e-3, method="dopri5")[1]
            if variant == "odenet-direct":
                return odeint(func, h, t, rtol=1e-3, atol=1e-3, method="dopri5")[1]
            return odeint(func, h, t, method="rk4", options=dict(step_size=0.05))[1]  # rknet: 20 steps

        m.block, m.func = block, func
    return m


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


print(f"torch {torch.__version__}, device {dev}" + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else ""))
print("| variant | NFE fwd | NFE bwd | median ms | min ms |")
print("|---|---:|---:|---:|---:|")
for variant in variants:
    m = make(variant)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(128, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (128,), device=dev)
    times, nf, nb = [], 0, 0
    for i in range(2 + reps):
        sync()
        s = time.perf_counter()
        if hasattr(m, "func"):
            m.func.nfe = 0
        loss = F.cross_entropy(m(x), y)
        nf = m.func.nfe if hasattr(m, "func") else 0
        opt.zero_grad()
        loss.backward()
        nb = (m.func.nfe - nf) if hasattr(m, "func") else 0
        opt.step()
        sync()
        if i >= 2:
            times.append((time.perf_counter() - s) * 1e3)
    print(f"| {variant} | {nf} | {nb} | {np.median(times):.1f} | {min(times):.1f} |")
