"""diffrax on the Fisher-KPP rows of `cargo bench -p node-solvers --bench stiff`:
u' = D (u_xx + u_yy) + u (1 - u) on the interior points of an n x n grid of [0, 1]^2, zero on
the boundary, D = 0.1, t 0 -> 0.5, from the bump exp(-40 |x - (0.4, 0.5)|^2), float64.
diffrax has no Runge-Kutta-Chebyshev method; its explicit methods (Tsit5, Dopri5) at
rtol = atol = 1e-5 and 1e-7, and Kvaerno5 where its dense Jacobian fits (n = 32: 1024^2), are
the alternatives. Error: max abs at t = 0.5 against Dopri5 at 1e-10. Times are medians over
`reps` calls of the compiled solve (compilation not counted), on the CPU. The controller is
the integral one (PIDController's defaults), as ours.

Usage: python3 bench-rkc-diffrax.py [reps]   (needs jax, diffrax)"""
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platform_name", "cpu")

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
D = 0.1


def problem(n):
    h = 1.0 / (n + 1)
    x = jnp.arange(1, n + 1) * h
    xx, yy = jnp.meshgrid(x, x, indexing="ij")
    u0 = jnp.exp(-40.0 * ((xx - 0.4) ** 2 + (yy - 0.5) ** 2))
    c = D * (n + 1) ** 2

    def field(t, u, args):
        p = jnp.pad(u, 1)
        lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * u
        return c * lap + u * (1.0 - u)

    return u0, field


def solve(field, u0, solver, tol, max_steps=1_000_000):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        t0=0.0,
        t1=0.5,
        dt0=None,
        y0=u0,
        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
        max_steps=max_steps,
    )


def timed(fn):
    out = jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


print(f"## diffrax {diffrax.__version__}, jax {jax.__version__}: Fisher-KPP on an n x n grid, "
      f"D = {D}, t 0 -> 0.5 (median of {reps})")
print("| n | method | rtol = atol | steps (rejected) | time | error |")
print("|---|---|---|---|---|---|")
for n in [32, 64, 128]:
    u0, field = problem(n)
    reference = jax.jit(lambda: solve(field, u0, diffrax.Dopri5(), 1e-10).ys[-1])()
    runs = [("tsit5", diffrax.Tsit5(), 1e-5), ("dopri5", diffrax.Dopri5(), 1e-5),
            ("tsit5", diffrax.Tsit5(), 1e-7)]
    if n == 32:
        runs.append(("kvaerno5", diffrax.Kvaerno5(), 1e-5))
    for name, solver, tol in runs:
        fn = jax.jit(lambda solver=solver, tol=tol: solve(field, u0, solver, tol))
        secs, sol = timed(fn)
        err = float(jnp.max(jnp.abs(sol.ys[-1] - reference)))
        acc = int(sol.stats["num_accepted_steps"])
        rej = int(sol.stats["num_rejected_steps"])
        print(f"| {n} | {name} | {tol:g} | {acc} ({rej}) | {secs * 1e3:.1f} ms | {err:.1e} |",
              flush=True)
