//! Adaptive SDE steps against fixed ones: steps, evaluations, host reads, time and strong
//! error, on two problems solved along the same Brownian paths.
//!
//! `cargo bench -p node-solvers --bench sde_adaptive [-- --reps N]` (CPU, f64).
//! `scripts/bench-sde-adaptive-torch.py` runs the same problems with torchsde's
//! `adaptive=True`.
//!
//! 1. Geometric Brownian motion `dy = 0.4 y dt + 0.9 y dW` on `[0, 1]`, 1000 paths, against
//!    its exact solution along each path (Itô for Euler–Maruyama and Milstein, Stratonovich
//!    for Heun and the midpoint method).
//! 2. `dy = −y/2 dt + σ(t) y ∘ dW` with `σ(t) = 0.05 + 2 exp(−((t − 0.55)/0.03)²)`: noise
//!    that matters only around one time. Exact solution along the path:
//!    `y0 exp(−t/2 + ∫σ dW)`, the Stratonovich integral of the deterministic `σ` taken on a
//!    fine grid of the same path.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{reps_arg, time};
use node_solvers::{
    sdeint, BrownianPath, SdeAdaptive, SdeErrorEstimate, SdeField, SdeMethod, SdeOptions,
    SdeSolution, VirtualBrownianTree,
};

const N: usize = 1000;
const TOLS: [f64; 3] = [1e-2, 1e-3, 1e-4];

fn sigma_bump(t: f64) -> f64 {
    0.05 + 2.0 * (-((t - 0.55) / 0.03).powi(2)).exp()
}

/// One table row: the solve's counts, its time and its mean error against `exact`.
fn row(label: &str, secs: f64, sol: &SdeSolution, exact: &Tensor) -> Result<()> {
    let err = (sol.last()? - exact)?
        .abs()?
        .mean_all()?
        .to_scalar::<f64>()?;
    let s = sol.stats;
    println!(
        "| {label} | {} ({}) | {} | {} | {:.1} ms | {err:.2e} |",
        s.steps,
        s.rejected_steps,
        s.drift_evals,
        s.host_reads,
        secs * 1e3
    );
    Ok(())
}

fn header(title: &str) {
    println!("\n## {title}");
    println!(
        "| method, steps | steps (rejected) | drift evaluations | host reads | time | mean error |"
    );
    println!("|---|---|---|---|---|---|");
}

/// Adaptive solves at each tolerance (by step doubling, and for Heun and the midpoint
/// method by their embedded estimate too), then fixed steps with as many drift evaluations
/// as the tightest solve by step doubling.
fn compare<F: SdeField>(
    sde: &F,
    method: SdeMethod,
    y0: &Tensor,
    bm: &VirtualBrownianTree,
    exact: &Tensor,
    reps: usize,
) -> Result<()> {
    let mut evals = 0;
    let embedded = matches!(method, SdeMethod::Heun | SdeMethod::Midpoint);
    let estimates: &[SdeErrorEstimate] = if embedded {
        &[SdeErrorEstimate::StepDoubling, SdeErrorEstimate::Embedded]
    } else {
        &[SdeErrorEstimate::StepDoubling]
    };
    for &estimate in estimates {
        for tol in TOLS {
            let a = SdeAdaptive::new(tol, tol).dt_min(1e-7).estimate(estimate);
            let opts = SdeOptions::default().method(method).dt(0.01).adaptive(a);
            let (secs, sol) = time(reps, || sdeint(sde, y0, &[0.0, 1.0], bm, &opts))?;
            if estimate == SdeErrorEstimate::StepDoubling {
                evals = sol.stats.drift_evals;
            }
            let label = match estimate {
                SdeErrorEstimate::StepDoubling => format!("{method}, tol {tol:e}"),
                SdeErrorEstimate::Embedded => format!("{method}, embedded, tol {tol:e}"),
            };
            row(&label, secs, &sol, exact)?;
        }
    }
    let per_step = match method {
        SdeMethod::Heun | SdeMethod::Midpoint => 2,
        _ => 1,
    };
    let n = (evals / per_step).max(1);
    let opts = SdeOptions::default().method(method).dt(1.0 / n as f64);
    let (secs, sol) = time(reps, || sdeint(sde, y0, &[0.0, 1.0], bm, &opts))?;
    row(&format!("{method}, {n} fixed steps"), secs, &sol, exact)
}

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let reps = reps_arg(3);
    let dev = Device::Cpu;
    let y0 = Tensor::ones((N, 1), DType::F64, &dev)?;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, (N, 1), 0, DType::F64, &dev)?;
    let w1 = bm.value(1.0)?;

    header(&format!(
        "Geometric Brownian motion, {N} paths, t 0 → 1, rtol = atol = tol (median of {reps})"
    ));
    let gbm = (
        |_t: f64, y: &Tensor| y.affine(0.4, 0.0),
        |_t: f64, y: &Tensor| y.affine(0.9, 0.0),
    );
    for method in [
        SdeMethod::EulerMaruyama,
        SdeMethod::ItoMilstein,
        SdeMethod::Heun,
        SdeMethod::Midpoint,
    ] {
        let drift = match method.calculus() {
            node_solvers::Calculus::Ito => 0.4 - 0.81 / 2.0,
            node_solvers::Calculus::Stratonovich => 0.4,
        };
        let exact = (y0.clone() * w1.affine(0.9, drift)?.exp()?)?;
        compare(&gbm, method, &y0, &bm, &exact, reps)?;
    }

    header(&format!(
        "Noise around t = 0.55 only, {N} paths, t 0 → 1 (median of {reps})"
    ));
    let bump = (
        |_t: f64, y: &Tensor| y.affine(-0.5, 0.0),
        |t: f64, y: &Tensor| y.affine(sigma_bump(t), 0.0),
    );
    // ∫σ ∘ dW by the midpoint rule on a grid of 2^16 steps of the same path.
    let k = 1 << 16;
    let mut integral = Tensor::zeros((N, 1), DType::F64, &dev)?;
    for i in 0..k {
        let (a, b) = (i as f64 / k as f64, (i + 1) as f64 / k as f64);
        integral = (integral + bm.increment(a, b)?.affine(sigma_bump(0.5 * (a + b)), 0.0)?)?;
    }
    let exact = (y0.clone() * integral.affine(1.0, -0.5)?.exp()?)?;
    for method in [SdeMethod::Heun, SdeMethod::Midpoint] {
        compare(&bump, method, &y0, &bm, &exact, reps)?;
    }
    Ok(())
}
