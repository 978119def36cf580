"""The SDE-GAN's training step with torchsde and torchcde, as torchsde's examples/sde_gan.py
takes it (the reference for `cargo bench -p node-models --bench sde_gan`): 64 observation
times, the generator's SDE (hidden 16, noise 3, MLPs 16 wide with one hidden layer, LipSwish,
final tanh) by reversible Heun at dt 1 with its gradient by `adjoint_reversible_heun` or by
backprop, the discriminator's CDE on the linear interpolation (midpoint, step 1, backprop, as
ours; the example's own choice, reversible Heun with its adjoint, in a last row), the
Wasserstein loss, one Adam step for both networks and the discriminator's clipping; at batch
1024 (the example's) and 256. From a seed-0 initialisation: one warm-up step, then `reps`
timed steps in a row, each with fresh noise, a fresh Brownian path (torchsde's default
BrownianInterval) and a fresh batch of real paths.
Usage: python3 bench-sde-gan-torch.py [cpu|cuda] [reps]"""
import sys
import time

import torch
import torchcde
import torchsde

dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5


class LipSwish(torch.nn.Module):
    def forward(self, x):
        return 0.909 * torch.nn.functional.silu(x)


def mlp(n_in, n_out, width, depth, tanh):
    layers = [torch.nn.Linear(n_in, width), LipSwish()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(width, width), LipSwish()]
    layers.append(torch.nn.Linear(width, n_out))
    if tanh:
        layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


class GeneratorFunc(torch.nn.Module):
    sde_type = "stratonovich"
    noise_type = "general"

    def __init__(self, noise, hidden, width, depth):
        super().__init__()
        self.noise, self.hidden, self.nfe = noise, hidden, 0
        self.drift = mlp(1 + hidden, hidden, width, depth, True)
        self.diffusion = mlp(1 + hidden, hidden * noise, width, depth, True)

    def f_and_g(self, t, x):
        self.nfe += 1
        tx = torch.cat([t.expand(x.size(0), 1), x], dim=1)
        return self.drift(tx), self.diffusion(tx).view(x.size(0), self.hidden, self.noise)


class Generator(torch.nn.Module):
    def __init__(self, data=1, initial_noise=5, noise=3, hidden=16, width=16, depth=1):
        super().__init__()
        self.initial_noise = initial_noise
        self.initial = mlp(initial_noise, hidden, width, depth, False)
        self.func = GeneratorFunc(noise, hidden, width, depth)
        self.readout = torch.nn.Linear(hidden, data)

    def forward(self, ts, batch, adjoint):
        x0 = self.initial(torch.randn(batch, self.initial_noise, device=ts.device))
        if adjoint:
            xs = torchsde.sdeint_adjoint(self.func, x0, ts, method="reversible_heun", dt=1.0,
                                         adjoint_method="adjoint_reversible_heun")
        else:
            xs = torchsde.sdeint(self.func, x0, ts, method="reversible_heun", dt=1.0)
        ys = self.readout(xs.transpose(0, 1))
        t = ts.unsqueeze(0).unsqueeze(-1).expand(batch, ts.size(0), 1)
        return torchcde.linear_interpolation_coeffs(torch.cat([t, ys], dim=2))


class DiscriminatorFunc(torch.nn.Module):
    def __init__(self, data, hidden, width, depth):
        super().__init__()
        self.data, self.hidden = data, hidden
        self.module = mlp(1 + hidden, hidden * (1 + data), width, depth, True)

    def forward(self, t, h):
        th = torch.cat([t.expand(h.size(0), 1), h], dim=1)
        return self.module(th).view(h.size(0), self.hidden, 1 + self.data)


class Discriminator(torch.nn.Module):
    def __init__(self, data=1, hidden=16, width=16, depth=1):
        super().__init__()
        self.initial = mlp(1 + data, hidden, width, depth, False)
        self.func = DiscriminatorFunc(data, hidden, width, depth)
        self.readout = torch.nn.Linear(hidden, 1)

    def forward(self, coeffs, example):
        path = torchcde.LinearInterpolation(coeffs)
        h0 = self.initial(path.evaluate(path.interval[0]))
        if example:
            hs = torchcde.cdeint(path, self.func, h0, path.interval, method="reversible_heun",
                                 backend="torchsde", dt=1.0, adjoint_method="adjoint_reversible_heun",
                                 adjoint_params=(coeffs,) + tuple(self.func.parameters()))
        else:
            hs = torchcde.cdeint(path, self.func, h0, path.interval, adjoint=False,
                                 method="midpoint", options=dict(step_size=1.0))
        return self.readout(hs[:, -1]).mean()


def ou_data(n, size):
    class Ou(torch.nn.Module):
        sde_type, noise_type = "ito", "scalar"

        def f(self, t, y):
            return 0.02 * t - 0.1 * y

        def g(self, t, y):
            return torch.full((y.size(0), 1, 1), 0.4 * 2 * float(t) / size, device=y.device)

    y0 = torch.rand(n, 1, device=dev) * 2 - 1
    ts = torch.linspace(0, size - 1, size, device=dev)
    ys = torchsde.sdeint(Ou(), y0, ts, dt=1e-1)
    ys = (ys - ys[0].mean()) / ys[0].std()
    t = ts.unsqueeze(0).unsqueeze(-1).expand(n, size, 1)
    return ts, torchcde.linear_interpolation_coeffs(torch.cat([t, ys.transpose(0, 1)], dim=2))


torch.manual_seed(1)
ts, data = ou_data(8192, 64)
print(f"torchsde {torchsde.__version__}, torchcde {torchcde.__version__}, torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads, {dev}")
print("| batch | generator gradient | median ms | min ms | NFE fwd+bwd | loss after |")
print("|---:|---|---:|---:|---|---:|")
for batch in [1024, 256]:
    for name, adjoint, example in [
        ("adjoint (walked back)", True, False),
        ("backprop", False, False),
        ("adjoint (walked back), the example's CDE", True, True),
    ]:
        torch.manual_seed(0)
        gen, disc = Generator().to(dev), Discriminator().to(dev)
        with torch.no_grad():
            for p in gen.initial.parameters():
                p *= 3
            for p in gen.func.parameters():
                p *= 0.5
        opt = torch.optim.Adam(list(gen.parameters()) + list(disc.parameters()), lr=1e-3)
        times = []
        for i in range(reps + 1):
            start = time.perf_counter()
            gen.func.nfe = 0
            real = data[torch.randint(0, data.size(0), (batch,), device=dev)]
            fake = gen(ts, batch, adjoint)
            loss = disc(fake, example) - disc(real, example)
            loss.backward()
            for p in gen.parameters():
                p.grad *= -1
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                for m in disc.modules():
                    if isinstance(m, torch.nn.Linear):
                        lim = 1 / m.out_features
                        m.weight.clamp_(-lim, lim)
            if dev == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        print(f"| {batch} | {name} | {times[len(times) // 2]:.1f} | {times[0]:.1f} | {gen.func.nfe} | {loss.item():.2f} |")
