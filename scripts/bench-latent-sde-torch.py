"""The latent SDE's training step with torchsde, as its examples/latent_sde.py takes it (the
reference for `cargo bench -p node-models --bench latent_sde`): the segmented cosine's 20
observations (solved from 0 to 2 through them), a drift network 3-200-200-1 (tanh), the
midpoint method at dt 0.01 on the augmented state [y, logqp] (Stratonovich, as the adjoint
needs; the noise is additive), the Laplace likelihood at scale 0.05 and the KL term, Adam at
lr 1e-2; by torchsde's adjoint (midpoint backwards too) and by backprop, and with the
reversible Heun method (its `adjoint_reversible_heun`, or backprop), at batch 512 (the
example's) and 128. From a seed-0 initialisation: one warm-up step, then `reps` timed steps
in a row, each with fresh noise and a fresh Brownian path (torchsde's default
BrownianInterval).
Usage: python3 bench-latent-sde-torch.py [cpu|cuda] [reps]"""
import math
import sys
import time

import torch
import torchsde
from torch import distributions, nn

dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5


class LatentSDE(nn.Module):
    sde_type = "stratonovich"
    noise_type = "diagonal"

    def __init__(self, theta=1.0, mu=0.0, sigma=0.5):
        super().__init__()
        logvar = math.log(sigma**2 / (2.0 * theta))
        self.register_buffer("theta", torch.tensor([[theta]]))
        self.register_buffer("mu", torch.tensor([[mu]]))
        self.register_buffer("sigma", torch.tensor([[sigma]]))
        self.register_buffer("py0_mean", torch.tensor([[mu]]))
        self.register_buffer("py0_logvar", torch.tensor([[logvar]]))
        self.net = nn.Sequential(
            nn.Linear(3, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 1)
        )
        self.net[-1].weight.data.fill_(0.0)
        self.net[-1].bias.data.fill_(0.0)
        self.qy0_mean = nn.Parameter(torch.tensor([[mu]]))
        self.qy0_logvar = nn.Parameter(torch.tensor([[logvar]]))
        self.nfe = 0

    def f(self, t, y):
        t = torch.full_like(y, fill_value=float(t))
        return self.net(torch.cat((torch.sin(t), torch.cos(t), y), dim=-1))

    def f_aug(self, t, y):
        self.nfe += 1
        y = y[:, 0:1]
        f = self.f(t, y)
        h = self.theta * (self.mu - y)
        u = (f - h) / self.sigma
        return torch.cat([f, 0.5 * u.pow(2).sum(dim=1, keepdim=True)], dim=1)

    def g_aug(self, t, y):
        y = y[:, 0:1]
        return torch.cat([self.sigma.repeat(y.size(0), 1), torch.zeros_like(y)], dim=1)

    def forward(self, ts, batch, adjoint, method="midpoint"):
        qstd = torch.exp(0.5 * self.qy0_logvar)
        pstd = torch.exp(0.5 * self.py0_logvar)
        y0 = self.qy0_mean + torch.randn(batch, 1, device=ts.device) * qstd
        kl0 = distributions.kl_divergence(
            distributions.Normal(self.qy0_mean, qstd), distributions.Normal(self.py0_mean, pstd)
        ).sum(dim=1)
        aug = torch.cat([y0, torch.zeros(batch, 1, device=ts.device)], dim=1)
        names = {"drift": "f_aug", "diffusion": "g_aug"}
        if adjoint:
            back = "adjoint_reversible_heun" if method == "reversible_heun" else method
            ys = torchsde.sdeint_adjoint(
                self, aug, ts, method=method, adjoint_method=back, dt=1e-2, names=names
            )
        else:
            ys = torchsde.sdeint(self, aug, ts, method=method, dt=1e-2, names=names)
        return ys[:, :, 0], (kl0 + ys[-1, :, 1]).mean(dim=0)


obs = torch.cat([torch.linspace(0.3, 0.8, 10), torch.linspace(1.2, 1.5, 10)])
ys = torch.cos(obs * 2 * math.pi).to(dev)
ts = torch.cat([torch.tensor([0.0]), obs, torch.tensor([2.0])]).to(dev)
print(f"torchsde {torchsde.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}")
print("| batch | gradient | median ms | min ms | NFE fwd+bwd | loss after |")
print("|---:|---|---:|---:|---|---:|")
for batch in [512, 128]:
    for name, method, adjoint in [
        ("adjoint", "midpoint", True),
        ("backprop", "midpoint", False),
        ("reversible Heun, walked back", "reversible_heun", True),
        ("reversible Heun, backprop", "reversible_heun", False),
    ]:
        torch.manual_seed(0)
        model = LatentSDE().to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        times = []
        for i in range(reps + 1):
            start = time.perf_counter()
            model.nfe = 0
            opt.zero_grad()
            zs, kl = model(ts, batch, adjoint, method)
            logpy = distributions.Laplace(loc=zs[1:-1], scale=0.05).log_prob(ys[:, None]).sum(0).mean(0)
            loss = kl - logpy
            loss.backward()
            opt.step()
            if dev == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        print(f"| {batch} | {name} | {times[len(times) // 2]:.1f} | {times[0]:.1f} | {model.nfe} | {loss.item():.2f} |")
