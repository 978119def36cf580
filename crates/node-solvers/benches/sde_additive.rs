//! The SDE methods for additive noise (SEA, SRA1, ShARK, which take the step's space-time
//! Lévy area) beside Euler–Maruyama and Heun: strong error against time, with fixed and
//! adaptive steps, on one problem solved along the same Brownian paths; and what the
//! Lévy area costs the Brownian tree.
//!
//! `cargo bench -p node-solvers --bench sde_additive [-- --reps N]` (CPU, f64).
//! `scripts/bench-sde-additive-diffrax.py` runs the same problem with diffrax.
//!
//! `dy = (sin y − y/2 + cos 3t) dt + 0.6 (1 + t) dW` on `[0, 1]`, `y0 = 1`, 1000 paths (a
//! tree with Lévy area, tolerance 2^-12), against ShARK with 4096 steps along the same
//! paths. The error is the mean over the paths of `|y(1) − y_ref(1)|`.
//!
//! Then general noise that does not commute, GeneralShARK against Heun: `y ∈ R²`, two
//! motions, `dy = −½ sin y dt + g(y) ∘ dW`, `g(y) = [[0.8 y₁, 0.3], [0.2, 0.8 cos y₀]]`,
//! `y0 = (1, 1)`, 1000 paths, against GeneralShARK with 4096 steps.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{reps_arg, time};
use node_solvers::problems::{AdditiveNoise, NonCommutingNoise};
use node_solvers::{
    sdeint, BrownianPath, Noise, SdeAdaptive, SdeErrorEstimate, SdeMethod, SdeOptions,
    VirtualBrownianTree,
};

const N: usize = 1000;

fn mean_abs(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?.abs()?.mean_all()?.to_scalar::<f64>()
}

fn main() -> Result<()> {
    let reps = reps_arg(3);
    let dev = Device::Cpu;
    let sde = AdditiveNoise;
    let y0 = Tensor::ones(N, DType::F64, &dev)?;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-12), N, 0, DType::F64, &dev)?
        .with_levy_area();
    let fine = SdeOptions::default()
        .method(SdeMethod::Shark)
        .dt(2f64.powi(-12));
    let reference = sdeint(&sde, &y0, &[0.0, 1.0], &bm, &fine)?.last()?;

    println!("# SDE methods for additive noise ({N} paths, f64, median of {reps})");
    println!("\n## Fixed steps");
    println!("| method | steps | drift evaluations | time | mean error |");
    println!("|---|---|---|---|---|");
    for method in [
        SdeMethod::EulerMaruyama,
        SdeMethod::Heun,
        SdeMethod::Sea,
        SdeMethod::Sra1,
        SdeMethod::Shark,
    ] {
        for steps in [8usize, 32, 128, 512] {
            let opts = SdeOptions::default().method(method).dt(1.0 / steps as f64);
            let (secs, sol) = time(reps, || sdeint(&sde, &y0, &[0.0, 1.0], &bm, &opts))?;
            println!(
                "| {method} | {steps} | {} | {:.1} ms | {:.2e} |",
                sol.stats.drift_evals,
                secs * 1e3,
                mean_abs(&sol.last()?, &reference)?
            );
        }
    }

    println!("\n## Adaptive steps (first step 0.01, rtol = atol = tol)");
    println!(
        "| method, estimate | tol | steps (rejected) | drift evaluations | time | mean error |"
    );
    println!("|---|---|---|---|---|---|");
    for (method, estimate) in [
        (SdeMethod::Shark, SdeErrorEstimate::Embedded),
        (SdeMethod::Shark, SdeErrorEstimate::StepDoubling),
        (SdeMethod::Heun, SdeErrorEstimate::Embedded),
    ] {
        for tol in [1e-3, 1e-4, 1e-5] {
            let a = SdeAdaptive::new(tol, tol).dt_min(1e-6).estimate(estimate);
            let opts = SdeOptions::default().method(method).dt(0.01).adaptive(a);
            let (secs, sol) = time(reps, || sdeint(&sde, &y0, &[0.0, 1.0], &bm, &opts))?;
            println!(
                "| {method}, {estimate:?} | {tol:e} | {} ({}) | {} | {:.1} ms | {:.2e} |",
                sol.stats.steps,
                sol.stats.rejected_steps,
                sol.stats.drift_evals,
                secs * 1e3,
                mean_abs(&sol.last()?, &reference)?
            );
        }
    }

    println!("\n## General noise (not commuting), Stratonovich");
    println!("| method | steps | drift / diffusion evaluations | time | mean error |");
    println!("|---|---|---|---|---|");
    let general = NonCommutingNoise;
    let y2 = Tensor::ones((N, 2), DType::F64, &dev)?;
    let bm2 = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-12), (N, 2), 0, DType::F64, &dev)?
        .with_levy_area();
    let opts_for = |method, steps: usize| {
        SdeOptions::default()
            .method(method)
            .dt(1.0 / steps as f64)
            .noise(Noise::General)
    };
    let reference = sdeint(
        &general,
        &y2,
        &[0.0, 1.0],
        &bm2,
        &opts_for(SdeMethod::GeneralShark, 4096),
    )?
    .last()?;
    for (method, steps) in [
        (SdeMethod::Heun, 24),
        (SdeMethod::Heun, 96),
        (SdeMethod::Heun, 384),
        (SdeMethod::GeneralShark, 8),
        (SdeMethod::GeneralShark, 32),
        (SdeMethod::GeneralShark, 128),
    ] {
        let opts = opts_for(method, steps);
        let (secs, sol) = time(reps, || sdeint(&general, &y2, &[0.0, 1.0], &bm2, &opts))?;
        println!(
            "| {method} | {steps} | {} / {} | {:.1} ms | {:.2e} |",
            sol.stats.drift_evals,
            sol.stats.diffusion_evals,
            secs * 1e3,
            mean_abs(&sol.last()?, &reference)?
        );
    }

    println!("\n## The tree's cost: 512 consecutive increments of {N} paths");
    println!("| tree | query | time |");
    println!("|---|---|---|");
    let plain = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-12), N, 0, DType::F64, &dev)?;
    let walk = |bm: &VirtualBrownianTree, levy: bool| -> Result<f64> {
        let (secs, _) = time(reps, || {
            // Each repetition on a clone: the same path, from the same cached query.
            let bm = bm.clone();
            for k in 0..512 {
                let (s, t) = (k as f64 / 512.0, (k + 1) as f64 / 512.0);
                if levy {
                    bm.levy_increment(s, t)?;
                } else {
                    bm.increment(s, t)?;
                }
            }
            Ok(())
        })?;
        Ok(secs)
    };
    println!(
        "| without area | increment | {:.1} ms |",
        walk(&plain, false)? * 1e3
    );
    println!(
        "| with area | increment | {:.1} ms |",
        walk(&bm, false)? * 1e3
    );
    println!(
        "| with area | levy_increment | {:.1} ms |",
        walk(&bm, true)? * 1e3
    );
    Ok(())
}
