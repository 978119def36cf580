"""diffrax on the problem of `cargo bench -p node-solvers --bench sde_additive`: the
methods for additive noise (SEA, SRA1, ShARK, which take the space-time Levy area) beside
Euler and Heun, fixed and adaptive steps; strong error against time.

dy = (sin y - y/2 + cos 3t) dt + 0.6 (1 + t) dW on [0, 1], y0 = 1, 1000 paths, float64,
diffrax's VirtualBrownianTree with space-time Levy area (tol 2^-12, key 0), against ShARK
with 4096 steps along the same paths. The paths are diffrax's, not ours: compare errors,
not values. Times are medians over `reps` calls of the compiled solve (compilation not
counted), on the CPU.

Then general noise that does not commute, GeneralShARK against Heun: y in R^2, two
motions, dy = -1/2 sin y dt + g(y) o dW, g(y) = [[0.8 y1, 0.3], [0.2, 0.8 cos y0]],
y0 = (1, 1), 1000 paths (one tree each, the solve vmapped over them), against
GeneralShARK with 4096 steps.

Usage: python3 bench-sde-additive-diffrax.py [reps]   (needs jax, diffrax, lineax)"""
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platform_name", "cpu")

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
N = 1000


def drift(t, y, args):
    return jnp.sin(y) - 0.5 * y + jnp.cos(3.0 * t)


def diffusion(t, y, args):
    return lx.DiagonalLinearOperator(0.6 * (1.0 + t) * jnp.ones(N))


bm = diffrax.VirtualBrownianTree(
    0.0, 1.0, tol=2.0**-12, shape=(N,), key=jax.random.PRNGKey(0),
    levy_area=diffrax.SpaceTimeLevyArea,
)
terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
y0 = jnp.ones(N)


def solver_fn(solver, controller, dt0, max_steps):
    @jax.jit
    def run():
        sol = diffrax.diffeqsolve(
            terms, solver, 0.0, 1.0, dt0, y0,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=controller,
            max_steps=max_steps,
        )
        return sol.ys[-1], sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]

    return run


def timed(run):
    out = run()
    jax.block_until_ready(out)
    ts = []
    for _ in range(reps):
        s = time.perf_counter()
        out = run()
        jax.block_until_ready(out)
        ts.append(time.perf_counter() - s)
    return statistics.median(ts), out


reference, _, _ = solver_fn(diffrax.ShARK(), diffrax.ConstantStepSize(), 2.0**-12, 5000)()


def err(y):
    return float(jnp.mean(jnp.abs(y - reference)))


print(f"# diffrax {diffrax.__version__}, jax {jax.__version__}: SDE methods for additive "
      f"noise ({N} paths, f64, median of {reps})")
print("\n## Fixed steps")
print("| method | steps | time | mean error |")
print("|---|---|---|---|")
for name, solver in [
    ("euler", diffrax.Euler()),
    ("heun", diffrax.Heun()),
    ("sea", diffrax.SEA()),
    ("sra1", diffrax.SRA1()),
    ("shark", diffrax.ShARK()),
]:
    for steps in [8, 32, 128, 512]:
        run = solver_fn(solver, diffrax.ConstantStepSize(), 1.0 / steps, steps + 10)
        secs, (y, _, _) = timed(run)
        print(f"| {name} | {steps} | {secs * 1e3:.1f} ms | {err(y):.2e} |")

print("\n## Adaptive steps (first step 0.01, rtol = atol = tol, PID controller)")
print("| method | tol | steps (rejected) | time | mean error |")
print("|---|---|---|---|---|")
for name, solver in [("shark", diffrax.ShARK())]:
    for tol in [1e-3, 1e-4, 1e-5]:
        ctrl = diffrax.PIDController(rtol=tol, atol=tol, dtmin=1e-6)
        run = solver_fn(solver, ctrl, 0.01, 100_000)
        secs, (y, acc, rej) = timed(run)
        print(f"| {name} | {tol:.0e} | {int(acc)} ({int(rej)}) | {secs * 1e3:.1f} ms | {err(y):.2e} |")


def g_general(t, y, args):
    return jnp.array([[0.8 * y[1], 0.3], [0.2, 0.8 * jnp.cos(y[0])]])


def general_fn(solver, steps):
    def one(key):
        bm1 = diffrax.VirtualBrownianTree(
            0.0, 1.0, tol=2.0**-12, shape=(2,), key=key, levy_area=diffrax.SpaceTimeLevyArea,
        )
        terms1 = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, y, args: -0.5 * jnp.sin(y)),
            diffrax.ControlTerm(g_general, bm1),
        )
        sol = diffrax.diffeqsolve(
            terms1, solver, 0.0, 1.0, 1.0 / steps, jnp.ones(2),
            saveat=diffrax.SaveAt(t1=True), max_steps=steps + 10,
        )
        return sol.ys[-1]

    keys = jax.random.split(jax.random.PRNGKey(1), N)
    return jax.jit(lambda: jax.vmap(one)(keys))


general_ref = general_fn(diffrax.GeneralShARK(), 4096)()
print("\n## General noise (not commuting), Stratonovich")
print("| method | steps | time | mean error |")
print("|---|---|---|---|")
for name, solver, steps_list in [
    ("heun", diffrax.Heun(), [24, 96, 384]),
    ("general_shark", diffrax.GeneralShARK(), [8, 32, 128]),
]:
    for steps in steps_list:
        secs, y = timed(general_fn(solver, steps))
        e = float(jnp.mean(jnp.abs(y - general_ref)))
        print(f"| {name} | {steps} | {secs * 1e3:.1f} ms | {e:.2e} |")
