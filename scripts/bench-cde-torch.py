"""A neural CDE's training step with torchcde, as its example/time_series_classification.py
takes it (the reference for `cargo bench -p node-models --bench cde`): batch 32 of 128 direction
spirals of 100 points (time and two coordinates), hidden state 8, a field of one hidden layer
of 128 (ReLU, final tanh), dopri5 at rtol 1e-3 and atol 1e-6, Adam at lr 1e-2; Hermite cubic
(backward differences), natural cubic and linear paths, by the adjoint (torchcde's default)
(with the seminorm, as ours) and by backprop. Like our `cdeint`, the solve steps to the knots (torchdiffeq's `step_t`, and
`jump_t` for the linear path); the rows marked "no knot steps" leave them out, as torchcde
does unless told. From a seed-0 initialisation: one warm-up step, then `reps` timed steps in a
row on fresh minibatches.
Usage: python3 bench-cde-torch.py [cpu|cuda] [reps]"""
import math
import sys
import time

import torch
import torchcde

dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
RTOL, ATOL = 1e-3, 1e-6


def spirals(n, length, gen):
    t = torch.linspace(0.0, 4 * math.pi, length)
    start = torch.rand(n, generator=gen) * 2 * math.pi
    x = torch.cos(start[:, None] + t[None]) / (1 + 0.5 * t)
    x[: n // 2] *= -1
    y = torch.sin(start[:, None] + t[None]) / (1 + 0.5 * t)
    x = x + 0.01 * torch.randn(x.shape, generator=gen)
    y = y + 0.01 * torch.randn(y.shape, generator=gen)
    X = torch.stack([t[None].repeat(n, 1), x, y], dim=2)
    labels = torch.zeros(n)
    labels[: n // 2] = 1
    perm = torch.randperm(n, generator=gen)
    return X[perm].to(dev), labels[perm].to(dev), t.to(dev)


class Func(torch.nn.Module):
    def __init__(self, channels, hidden):
        super().__init__()
        self.channels, self.hidden = channels, hidden
        self.linear1 = torch.nn.Linear(hidden, 128)
        self.linear2 = torch.nn.Linear(128, channels * hidden)
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        z = self.linear2(self.linear1(z).relu()).tanh()
        return z.view(z.size(0), self.hidden, self.channels)


class NeuralCDE(torch.nn.Module):
    def __init__(self, kind, adjoint, knot_steps):
        super().__init__()
        self.func = Func(3, 8)
        self.initial = torch.nn.Linear(3, 8)
        self.readout = torch.nn.Linear(8, 1)
        self.kind, self.adjoint, self.knot_steps = kind, adjoint, knot_steps

    def forward(self, coeffs, t):
        if self.kind == "linear":
            X = torchcde.LinearInterpolation(coeffs, t=t)
        else:
            X = torchcde.CubicSpline(coeffs, t=t)
        z0 = self.initial(X.evaluate(X.interval[0]))
        options = {}
        if self.knot_steps:
            options["jump_t" if self.kind == "linear" else "step_t"] = X.grid_points[1:-1]
        kwargs = dict(method="dopri5", rtol=RTOL, atol=ATOL, options=options)
        if self.adjoint:
            kwargs["adjoint_params"] = tuple(self.func.parameters())
            # The seminorm, as our adjoint's default: the parameters' gradient integrals do not
            # limit the backward steps.
            kwargs["adjoint_options"] = dict(options, norm="seminorm")
        zT = torchcde.cdeint(X=X, z0=z0, func=self.func, t=X.interval, adjoint=self.adjoint, **kwargs)
        return self.readout(zT[:, 1]).squeeze(-1)


def coefficients(kind, X, t):
    if kind == "hermite":
        return torchcde.hermite_cubic_coefficients_with_backward_differences(X, t=t)
    if kind == "natural":
        return torchcde.natural_cubic_coeffs(X, t=t)
    return torchcde.linear_interpolation_coeffs(X, t=t)


print(f"torchcde {torchcde.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}")
print(f"neural CDE training step, batch 32 of 128 spirals of 100 points, hidden 8, field 8-128-24, "
      f"dopri5 {RTOL:g}/{ATOL:g}; 1 warm-up + {reps} steps")
print("| path | gradient | median ms | min ms | NFE fwd / bwd (mean) | loss after |")
print("|---|---|---:|---:|---|---:|")
X, labels, t = spirals(128, 100, torch.Generator().manual_seed(1))
for kind, knot_steps in [("hermite", True), ("natural", True), ("linear", True), ("hermite", False)]:
    coeffs = coefficients(kind, X, t)
    for adjoint in [True, False]:
        torch.manual_seed(0)
        model = NeuralCDE(kind, adjoint, knot_steps).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(0)
        times, nfe_f, nfe_b = [], 0, 0
        for i in range(reps + 1):
            start = time.perf_counter()
            idx = torch.randperm(128, generator=gen)[:32].to(dev)
            model.func.nfe = 0
            pred = model(coeffs[idx], t)
            f = model.func.nfe
            loss = torch.nn.functional.binary_cross_entropy_with_logits(pred, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            if dev == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                times.append((time.perf_counter() - start) * 1e3)
                nfe_f += f
                nfe_b += model.func.nfe - f
        times.sort()
        name = kind + ("" if knot_steps else ", no knot steps")
        grad = "adjoint" if adjoint else "backprop"
        print(f"| {name} | {grad} | {times[len(times) // 2]:.1f} | {times[0]:.1f} | "
              f"{nfe_f // reps} / {nfe_b // reps} | {value:.4f} |")
