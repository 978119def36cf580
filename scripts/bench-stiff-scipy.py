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
