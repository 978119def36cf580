"""PyTorch's time for the ops of node-kernels' `kernels` bench (same shapes, f32, medians).

Prints `name<TAB>milliseconds` lines; the Rust bench runs it when PEER_PYTHON is set.
"""
import time

import torch
import torch.nn.functional as F


def median_time(f):
    for _ in range(3):
        f()
    samples, start = [], time.perf_counter()
    while len(samples) < 7 or (time.perf_counter() - start < 1.0 and len(samples) < 500):
        t = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return samples[len(samples) // 2]


def fwd(op):
    def f():
        with torch.no_grad():
            op().sum().item()
    return f


def fwd_bwd(op, r):
    def f():
        (op() * r).sum().backward()
    return f


def main():
    torch.manual_seed(0)
    rows = {}
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    rows["sgemm 2048x2048x2048"] = median_time(lambda: a @ b)
    x = torch.randn(128, 65, 6, 6, requires_grad=True)
    k = (0.1 * torch.randn(64, 65, 3, 3)).requires_grad_()
    r = torch.randn(128, 64, 6, 6)
    conv = lambda: F.conv2d(x, k, padding=1)
    rows["conv2d 128x65x6x6 -> 64, 3x3 pad 1"] = median_time(fwd(conv))
    rows["conv2d forward + backward (same)"] = median_time(fwd_bwd(conv, r))
    x1 = torch.rand(128, 1, 28, 28)
    k1 = (0.3 * torch.randn(64, 1, 3, 3)).requires_grad_()
    r1 = torch.randn(128, 64, 26, 26)
    rows["conv2d fwd+bwd 128x1x28x28 -> 64, 3x3 (no input grad)"] = median_time(
        fwd_bwd(lambda: F.conv2d(x1, k1), r1))
    x2 = torch.randn(128, 64, 26, 26, requires_grad=True)
    k2 = (0.03 * torch.randn(64, 64, 4, 4)).requires_grad_()
    r2 = torch.randn(128, 64, 13, 13)
    rows["conv2d fwd+bwd 128x64x26x26 -> 64, 4x4 s2 p1"] = median_time(
        fwd_bwd(lambda: F.conv2d(x2, k2, stride=2, padding=1), r2))
    x = torch.randn(128, 64, 6, 6, requires_grad=True)
    w, bias = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    gn = lambda: F.group_norm(x, 32, w, bias, 1e-5)
    rows["group_norm 128x64x6x6, 32 groups"] = median_time(fwd(gn))
    rows["group_norm forward + backward (same)"] = median_time(fwd_bwd(gn, r))
    r2 = x2.detach().clone()
    rows["group_norm fwd+bwd 128x64x26x26, 32 groups"] = median_time(
        fwd_bwd(lambda: F.group_norm(x2, 32, w, bias, 1e-5), r2))
    x = torch.randn(1024, 50)
    rows["tanh 1024x50"] = median_time(fwd(lambda: torch.tanh(x)))
    rows["relu 1024x50"] = median_time(fwd(lambda: torch.relu(x)))
    rows["sigmoid 1024x50"] = median_time(fwd(lambda: torch.sigmoid(x)))
    rows["softplus 1024x50"] = median_time(fwd(lambda: F.softplus(x)))
    rows["elu 1024x50"] = median_time(fwd(lambda: F.elu(x)))
    rows["exp 1024x50"] = median_time(fwd(lambda: torch.exp(x)))
    rows["relu fwd+bwd 128x64x26x26"] = median_time(fwd_bwd(lambda: torch.relu(x2), r1))
    x = torch.randn(128, 64, 6, 6, requires_grad=True)
    rows["harness: sum(r*x) fwd+bwd 128x64x6x6"] = median_time(fwd_bwd(lambda: x, r))
    rows["harness: sum(r*x) fwd+bwd 128x64x26x26"] = median_time(fwd_bwd(lambda: x2, r1))
    for k, n in [(2, 50), (50, 2)]:
        x = torch.randn(1024, k, requires_grad=True)
        w = (0.3 * torch.randn(n, k)).requires_grad_()
        b = (0.3 * torch.randn(n)).requires_grad_()
        r = torch.randn(1024, n)
        rows[f"linear fwd+bwd 1024x{k} -> {n}"] = median_time(fwd_bwd(lambda: F.linear(x, w, b), r))
    for name, s in rows.items():
        print(f"{name}\t{s * 1e3:.6f}")


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
