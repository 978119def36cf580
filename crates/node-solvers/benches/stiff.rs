//! The implicit methods on stiff problems: steps, evaluations, host reads, time and error.
//!
//! `cargo bench -p node-solvers --bench stiff [-- --reps N]` (CPU).
//!
//! 1. Robertson's kinetics from `(1, 0, 0)` to `t = 10⁵` (outputs at 40 and 10⁵), against
//!    the reference values in `node_solvers::problems::Robertson::REFERENCE`.
//! 2. A batch of `B` Robertson reactions, the dense Jacobian against the batched one.
//! 3. `y' = −λ (y − cos t)` on `[0, 2]` for growing λ: an explicit method's steps grow with λ,
//!    an implicit method's do not.
//! 4. The Brusselator with diffusion on `N` points (`2N` components) over `[0, 10]`: the
//!    finite-difference Jacobian against the closed-form one (`WithJacobian`), dopri5, and
//!    the IMEX methods on the field split (the reaction explicit, the diffusion implicit
//!    with its Jacobian in closed form), the W-method ros34pw2 keeping its Jacobian by
//!    differences for up to 10 steps, and the explicit Runge–Kutta–Chebyshev method rkc.
//! 5. Fisher–KPP reaction–diffusion `u' = D Δu + u (1 − u)` on an `n × n` grid (`n²`
//!    components, too many for a dense Jacobian's LU): rkc (spectral radius estimated, or
//!    given as `8D(n+1)² + 1`) against dopri5 and tsit5, whose steps the diffusion holds.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{reps_arg, time};
use node_solvers::problems::{Brusselator, Robertson};
use node_solvers::{
    odeint, Jacobian, Method, Solution, SolveOptions, SolverError, VectorField, WithJacobian,
};

/// `max |a − b|`.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// Largest relative error of the outputs after the first against the reference.
fn robertson_error(sol: &Solution) -> Result<f64> {
    let mut worst: f64 = 0.0;
    for (i, (_, want)) in Robertson::REFERENCE.iter().enumerate() {
        let y = sol
            .ys
            .get(i + 1)?
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        for (k, v) in y.iter().enumerate() {
            worst = worst.max((v - want[k % 3]).abs() / want[k % 3]);
        }
    }
    Ok(worst)
}

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let reps = reps_arg(5);
    let dev = Device::Cpu;
    let p = Robertson::default();
    let ts = [0.0, Robertson::REFERENCE[0].0, Robertson::REFERENCE[1].0];

    println!("## Robertson's kinetics, t 0 → 1e5 (median of {reps})");
    println!("| method | Jacobian | rtol | atol | steps (rejected) | NFE (Jacobians) | host reads | time | worst relative error |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], &dev)?;
    let field = p.field();
    let exact = WithJacobian::new(p.field(), p.jacobian());
    for m in [
        Method::Kvaerno3,
        Method::Kvaerno5,
        Method::Rodas4,
        Method::Rodas4P,
        Method::Rodas5P,
        Method::Ros34pw2,
    ] {
        for (jac, f) in [
            ("differences", &field as &dyn VectorField),
            ("closed form", &exact),
            ("differences, kept ≤ 20 steps", &field),
        ] {
            if jac.contains("kept") && !m.is_w_method() {
                continue;
            }
            for rtol in [1e-3, 1e-4, 1e-6, 1e-8] {
                let atol = rtol * 1e-6;
                let opts = SolveOptions::default().method(m).tolerances(rtol, atol);
                let opts = if m.is_w_method() && jac == "differences, kept ≤ 20 steps" {
                    opts.jacobian_reuse(20)
                } else {
                    opts
                };
                let (secs, sol) = time(reps, || odeint(f, &y0, &ts, &opts))?;
                let s = sol.stats;
                println!(
                    "| {m} | {jac} | {rtol:e} | {atol:e} | {} ({}) | {} ({}) | {} | {:.1} ms | {:.1e} |",
                    s.accepted_steps,
                    s.rejected_steps,
                    s.nfe,
                    s.jacobians,
                    s.host_reads,
                    secs * 1e3,
                    robertson_error(&sol)?
                );
            }
        }
    }

    println!("\n## A batch of B Robertson reactions, kvaerno3, rtol 1e-6, atol 1e-12, t 0 → 1e5");
    println!("| B | Jacobian | steps | NFE | time | time per reaction |");
    println!("|---|---|---|---|---|---|");
    for b in [1usize, 16, 256, 4096] {
        let yb = y0.unsqueeze(0)?.repeat((b, 1))?;
        for jac in [Jacobian::Dense, Jacobian::Batched] {
            // A dense 3B × 3B Jacobian is refactored every step: past B = 16 it dominates.
            if jac == Jacobian::Dense && b > 16 {
                continue;
            }
            let opts = SolveOptions::default()
                .method(Method::Kvaerno3)
                .tolerances(1e-6, 1e-12)
                .jacobian(jac);
            let (secs, sol) = time(reps, || odeint(&p.field(), &yb, &ts, &opts))?;
            println!(
                "| {b} | {jac:?} | {} | {} | {:.1} ms | {:.3} ms |",
                sol.stats.accepted_steps,
                sol.stats.nfe,
                secs * 1e3,
                secs * 1e3 / b as f64
            );
        }
    }

    println!("\n## y' = −λ (y − cos t), y(0) = 1, t 0 → 2, rtol 1e-6, atol 1e-8");
    println!("| λ | method | steps | NFE | time |");
    println!("|---|---|---|---|---|");
    let y0 = Tensor::new(&[1.0f64], &dev)?;
    for lambda in [1e1, 1e3, 1e5] {
        let f = move |t: f64, y: &Tensor| y.affine(-lambda, lambda * t.cos());
        for m in [
            Method::Dopri5,
            Method::Kvaerno3,
            Method::Kvaerno5,
            Method::Rodas4,
            Method::Rodas4P,
            Method::Rodas5P,
            Method::Ros34pw2,
            Method::Rkc,
        ] {
            let opts = SolveOptions::default()
                .method(m)
                .tolerances(1e-6, 1e-8)
                .max_steps(100_000);
            match time(reps.min(3), || odeint(&f, &y0, &[0.0, 2.0], &opts)) {
                Ok((secs, sol)) => println!(
                    "| {lambda:e} | {m} | {} | {} | {:.1} ms |",
                    sol.stats.accepted_steps,
                    sol.stats.nfe,
                    secs * 1e3
                ),
                Err(e) if SolverError::find(&e).is_some() => {
                    println!("| {lambda:e} | {m} | {e} | | |")
                }
                Err(e) => return Err(e),
            }
        }
    }

    println!("\n## The Brusselator on N points, t 0 → 10, rtol = atol = 1e-6 (error: max abs against dopri5 at 1e-10)");
    println!("| N | method | Jacobian | steps (rejected) | NFE (Jacobians) | explicit NFE | LU factorizations | time | error |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in [32usize, 64, 128] {
        let b = Brusselator::new(n);
        let y0 = b.initial(DType::F64, &dev)?;
        let ts = [0.0, 10.0];
        let tight = SolveOptions::default().tolerances(1e-10, 1e-10);
        let reference = odeint(&b.field(), &y0, &ts, &tight)?.last()?;
        let field = b.field();
        let exact = WithJacobian::new(b.field(), b.jacobian());
        let split = b.split();
        // (method, Jacobian, field, steps a W-method keeps a Jacobian for)
        let runs: [(Method, &str, &dyn VectorField, usize); 15] = [
            (Method::Kvaerno5, "differences", &field, 1),
            (Method::Kvaerno5, "closed form", &exact, 1),
            (Method::Kvaerno3, "closed form", &exact, 1),
            (Method::KenCarp4, "closed form", &exact, 1),
            (Method::KenCarp3, "split: diffusion's", &split, 1),
            (Method::KenCarp4, "split: diffusion's", &split, 1),
            (Method::KenCarp5, "split: diffusion's", &split, 1),
            (Method::Rodas4, "closed form", &exact, 1),
            (Method::Rodas5P, "closed form", &exact, 1),
            (Method::Rodas5P, "differences", &field, 1),
            (Method::Ros34pw2, "closed form", &exact, 1),
            (Method::Ros34pw2, "differences", &field, 1),
            (Method::Ros34pw2, "differences, kept ≤ 10 steps", &field, 10),
            (Method::Rkc, "– (ρ estimated)", &field, 1),
            (Method::Dopri5, "–", &field, 1),
        ];
        for (m, jac, f, reuse) in runs {
            let opts = SolveOptions::default()
                .method(m)
                .tolerances(1e-6, 1e-6)
                .jacobian_reuse(reuse);
            let (secs, sol) = time(reps.min(3), || odeint(f, &y0, &ts, &opts))?;
            let s = sol.stats;
            let err = max_abs_diff(&sol.last()?, &reference)?;
            println!(
                "| {n} | {m} | {jac} | {} ({}) | {} ({}) | {} | {} | {:.1} ms | {err:.1e} |",
                s.accepted_steps,
                s.rejected_steps,
                s.nfe,
                s.jacobians,
                s.explicit_nfe,
                s.factorizations,
                secs * 1e3
            );
        }
    }

    println!("\n## Fisher–KPP on an n × n grid, D = 0.1, t 0 → 0.5 (error: max abs against dopri5 at 1e-10)");
    println!("| n | method | spectral radius | rtol = atol | steps (rejected) | NFE (most stages) | host reads | time | error |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in [32usize, 64, 128] {
        let kpp = FisherKpp { n, d: 0.1 };
        let y0 = kpp.initial(&dev)?;
        let ts = [0.0, 0.5];
        let field = |_t: f64, u: &Tensor| kpp.field(u);
        let tight = SolveOptions::default().tolerances(1e-10, 1e-10);
        let reference = odeint(&field, &y0, &ts, &tight)?.last()?;
        let rho = 8.0 * kpp.d * ((n + 1) * (n + 1)) as f64 + 1.0;
        let base = SolveOptions::default().tolerances(1e-5, 1e-5);
        // rkc's estimate is its local error, the explicit pairs' their lower-order
        // solution's: at equal tolerance rkc's global error is larger, so also at 1e-7 and
        // 1e-9 (where dopri5's error, held by stability, already is).
        let runs = [
            ("rkc", "estimated", base.clone().method(Method::Rkc)),
            (
                "rkc",
                "given",
                base.clone().method(Method::Rkc).spectral_radius(rho),
            ),
            (
                "rkc",
                "estimated",
                base.clone().method(Method::Rkc).tolerances(1e-7, 1e-7),
            ),
            (
                "rkc",
                "estimated",
                base.clone().method(Method::Rkc).tolerances(1e-9, 1e-9),
            ),
            ("dopri5", "–", base.clone()),
            ("tsit5", "–", base.clone().method(Method::Tsit5)),
        ];
        for (m, radius, opts) in runs {
            let (secs, sol) = time(reps.min(3), || odeint(&field, &y0, &ts, &opts))?;
            let s = sol.stats;
            let err = max_abs_diff(&sol.last()?, &reference)?;
            println!(
                "| {n} | {m} | {radius} | {:e} | {} ({}) | {} ({}) | {} | {:.1} ms | {err:.1e} |",
                opts.rtol,
                s.accepted_steps,
                s.rejected_steps,
                s.nfe,
                s.most_stages,
                s.host_reads,
                secs * 1e3
            );
        }
    }
    Ok(())
}

/// `u' = D Δu + u (1 − u)` on the interior points of an `n × n` grid of `[0, 1]²`, zero on
/// the boundary: the diffusion's eigenvalues reach `−8D(n+1)²`.
struct FisherKpp {
    n: usize,
    d: f64,
}

impl FisherKpp {
    /// A bump, `exp(−40 |x − (0.4, 0.5)|²)`, shape `[n, n]`, f64.
    fn initial(&self, dev: &Device) -> Result<Tensor> {
        let n = self.n;
        let h = 1.0 / (n + 1) as f64;
        let v: Vec<f64> = (0..n * n)
            .map(|k| {
                let (x, y) = (((k / n) + 1) as f64 * h, ((k % n) + 1) as f64 * h);
                (-40.0 * ((x - 0.4).powi(2) + (y - 0.5).powi(2))).exp()
            })
            .collect();
        Tensor::from_vec(v, (n, n), dev)
    }

    fn field(&self, u: &Tensor) -> Result<Tensor> {
        let n = self.n;
        let c = self.d * ((n + 1) * (n + 1)) as f64;
        let zr = Tensor::zeros((1, n), u.dtype(), u.device())?;
        let rows = Tensor::cat(&[&zr, u, &zr], 0)?;
        let zc = Tensor::zeros((n, 1), u.dtype(), u.device())?;
        let cols = Tensor::cat(&[&zc, u, &zc], 1)?;
        let sides = ((rows.narrow(0, 0, n)? + rows.narrow(0, 2, n)?)?
            + (cols.narrow(1, 0, n)? + cols.narrow(1, 2, n)?)?)?;
        let lap = (sides - u.affine(4.0, 0.0)?)?.affine(c, 0.0)?;
        let reaction = (u * u.affine(-1.0, 1.0)?)?;
        lap + reaction
    }
}
