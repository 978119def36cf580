#!/usr/bin/env python3
"""SciPy's stiff solvers on Robertson's kinetics, t 0 -> 1e5, beside
`cargo bench -p node-solvers --bench stiff` (its first table). Needs numpy and scipy.

Two rows per method: with the analytic Jacobian, and without (finite differences, as
node-solvers does).
"""
import time

import numpy as np
from scipy.integrate import solve_ivp

K1, K2, K3 = 0.04, 3e7, 1e4
REF = {
    40.0: [0.7158270687194165, 9.185534764558227e-06, 0.2841637457458203],
    1e5: [0.017865921142322477, 7.274751468528753e-08, 0.9821340061101634],
}


def f(t, y):
    return [-K1 * y[0] + K3 * y[1] * y[2], K1 * y[0] - K3 * y[1] * y[2] - K2 * y[1] ** 2, K2 * y[1] ** 2]


def jac(t, y):
    return [[-K1, K3 * y[2], K3 * y[1]], [K1, -K3 * y[2] - 2 * K2 * y[1], -K3 * y[1]], [0, 2 * K2 * y[1], 0]]


print("| method | Jacobian | rtol | atol | LU factorizations | NFE (Jacobians) | time | worst relative error |")
print("|---|---|---|---|---|---|---|---|")
for method in ["Radau", "BDF"]:
    for analytic in [True, False]:
        for rtol in [1e-4, 1e-6, 1e-8]:
            atol = rtol * 1e-6
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                s = solve_ivp(f, (0, 1e5), [1, 0, 0], method=method, rtol=rtol, atol=atol,
                              t_eval=[40.0, 1e5], jac=jac if analytic else None)
                times.append(time.perf_counter() - t0)
            err = max(abs(s.y[k, i] - REF[t][k]) / REF[t][k] for i, t in enumerate([40.0, 1e5]) for k in range(3))
            print(f"| {method} | {'analytic' if analytic else 'differences'} | {rtol:g} | {atol:g} | "
                  f"{s.nlu} | {s.nfev} ({s.njev}) | {1e3 * sorted(times)[1]:.1f} ms | {err:.1e} |")


# The Brusselator with diffusion on N points (the bench's fourth table): state u then v.
def bruss(n, alpha=0.02):
    c = alpha * (n + 1) ** 2

    def f(t, y):
        u, v = y[:n], y[n:]
        up = np.concatenate([[1.0], u, [1.0]])
        vp = np.concatenate([[3.0], v, [3.0]])
        u2v = u * u * v
        du = 1 + u2v - 4 * u + c * (up[:-2] - 2 * u + up[2:])
        dv = 3 * u - u2v + c * (vp[:-2] - 2 * v + vp[2:])
        return np.concatenate([du, dv])

    def jac(t, y):
        u, v = y[:n], y[n:]
        j = np.zeros((2 * n, 2 * n))
        i = np.arange(n)
        j[i, i] = 2 * u * v - 4 - 2 * c
        j[i, n + i] = u * u
        j[n + i, i] = 3 - 2 * u * v
        j[n + i, n + i] = -u * u - 2 * c
        for a, b in [(i[1:], i[:-1]), (i[:-1], i[1:])]:
            j[a, b] = c
            j[n + a, n + b] = c
        return j

    x = np.arange(1, n + 1) / (n + 1)
    y0 = np.concatenate([1 + np.sin(2 * np.pi * x), np.full(n, 3.0)])
    return f, jac, y0


print()
print("Brusselator, t 0 -> 10, rtol = atol = 1e-6 (error: max abs against Radau at 1e-10)")
print("| N | method | Jacobian | NFE (Jacobians) | LU factorizations | time | error |")
print("|---|---|---|---|---|---|---|")
for n in [32, 64, 128]:
    f, jac, y0 = bruss(n)
    ref = solve_ivp(f, (0, 10), y0, method="Radau", rtol=1e-10, atol=1e-10, jac=jac).y[:, -1]
    for method in ["Radau", "BDF"]:
        for analytic in [True, False]:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                s = solve_ivp(f, (0, 10), y0, method=method, rtol=1e-6, atol=1e-6,
                              jac=jac if analytic else None)
                times.append(time.perf_counter() - t0)
            err = np.abs(s.y[:, -1] - ref).max()
            print(f"| {n} | {method} | {'closed form' if analytic else 'differences'} | "
                  f"{s.nfev} ({s.njev}) | {s.nlu} | {1e3 * sorted(times)[1]:.1f} ms | {err:.1e} |")
