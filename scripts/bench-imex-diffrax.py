"""diffrax on the IMEX rows of `cargo bench -p node-solvers --bench stiff`: the Brusselator
with diffusion on N points (Hairer & Wanner's BRUSS, alpha = 1/50, t 0 -> 10,
rtol = atol = 1e-6, float64), split into the reaction (explicit) and the diffusion
(implicit), solved by KenCarp3/4/5 (`MultiTerm`); the whole field by Kvaerno5 and Dopri5
beside them. Error: max abs at t = 10 against Dopri5 at 1e-10. Times are medians over
`reps` calls of the compiled solve (compilation not counted), on the CPU. diffrax's
Jacobians come from JAX's autodiff (there is no closed form to give it); its controller is
the integral one (PIDController's defaults), as ours. Each implicit method runs twice: with
diffrax's default root finder (VeryChord at the controller's tolerances) and with
optimistix's Newton at the same tolerances (a fresh Jacobian every iteration).

Usage: python3 bench-imex-diffrax.py [reps]   (needs jax, diffrax, optimistix)"""
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platform_name", "cpu")

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optimistix as optx  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
ALPHA = 0.02


def problem(n):
    c = ALPHA * (n + 1) ** 2
    x = jnp.arange(1, n + 1) / (n + 1)
    y0 = jnp.stack([1.0 + jnp.sin(2 * jnp.pi * x), jnp.full(n, 3.0)])

    def reaction(t, y, args):
        u, v = y[0], y[1]
        u2v = u * u * v
        return jnp.stack([1.0 + u2v - 4.0 * u, 3.0 * u - u2v])

    def diffusion(t, y, args):
        ends = jnp.array([[1.0], [3.0]])
        padded = jnp.concatenate([ends, y, ends], axis=1)
        return c * (padded[:, :-2] - 2.0 * y + padded[:, 2:])

    def whole(t, y, args):
        return reaction(t, y, args) + diffusion(t, y, args)

    return y0, reaction, diffusion, whole


def solve(terms, solver, y0, rtol, atol):
    return diffrax.diffeqsolve(
        terms,
        solver,
        t0=0.0,
        t1=10.0,
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=100_000,
    )


print(f"## diffrax {diffrax.__version__}, jax {jax.__version__}: the Brusselator on N points, "
      f"t 0 -> 10, rtol = atol = 1e-6 (median of {reps})")
print("| N | method | terms | root finder | steps (rejected) | time | max abs error |")
print("|---|---|---|---|---|---|---|")
for n in [32, 64, 128]:
    y0, reaction, diffusion, whole = problem(n)
    ref = solve(diffrax.ODETerm(whole), diffrax.Dopri5(), y0, 1e-10, 1e-10).ys[-1]
    split = diffrax.MultiTerm(diffrax.ODETerm(reaction), diffrax.ODETerm(diffusion))
    newton = optx.Newton(rtol=1e-6, atol=1e-6)
    runs = [("dopri5", "whole field", diffrax.ODETerm(whole), diffrax.Dopri5(), "–")]
    for name, kind, terms, cls in [
        ("kvaerno5", "whole field", diffrax.ODETerm(whole), diffrax.Kvaerno5),
        ("kencarp3", "split", split, diffrax.KenCarp3),
        ("kencarp4", "split", split, diffrax.KenCarp4),
        ("kencarp5", "split", split, diffrax.KenCarp5),
    ]:
        runs.append((name, kind, terms, cls(), "VeryChord"))
        runs.append((name, kind, terms, cls(root_finder=newton), "Newton"))
    for name, kind, terms, solver, root in runs:
        f = jax.jit(lambda y, terms=terms, solver=solver: solve(terms, solver, y, 1e-6, 1e-6))
        sol = f(y0)
        jax.block_until_ready(sol.ys)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            sol = f(y0)
            jax.block_until_ready(sol.ys)
            times.append(time.perf_counter() - t)
        err = float(jnp.max(jnp.abs(sol.ys[-1] - ref)))
        acc = int(sol.stats["num_accepted_steps"])
        rej = int(sol.stats["num_rejected_steps"])
        print(f"| {n} | {name} | {kind} | {root} | {acc} ({rej}) | "
              f"{1e3 * statistics.median(times):.1f} ms | {err:.1e} |")
