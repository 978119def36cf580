//! FFJORD's cost: the exact trace against Hutchinson's estimator.
//!
//! 1. One evaluation of the field with its trace, batch 512, three hidden layers of 64, for
//!    data of dimension D = 2 … 128: the exact trace takes D Jacobian–vector products,
//!    Hutchinson's one.
//! 2. Training steps on two circles as FFJORD's `train_toy.py` takes them (batch 512, dopri5
//!    at rtol = atol = 1e-5, t₁ = 0.5, Adam at lr 1e-3, the adjoint), from the seed-0
//!    initialisation: one warm-up step, then `--reps` timed steps in a row.
//!
//! `cargo bench -p node-models --bench ffjord [-- --reps N] [--device cpu|cuda]`

mod common;

use candle_core::{DType, Result};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::AdjointOptions;
use node_models::cnf::two_circles;
use node_models::ffjord::{Ffjord, FfjordConfig, JvpField, Noise, Trace};
use node_models::{init, Adam, AdamConfig, Gradient, Rng};
use node_solvers::{Method, SolveOptions};
use std::time::Instant;

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let (reps, dev) = common::reps_and_device(5)?;
    let opts = SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(1e-5, 1e-5);
    let adjoint = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-5, 1e-5));

    println!("FFJORD field evaluation with its trace, batch 512, hidden 64-64-64, on {dev:?}");
    println!("| D | exact ms | Hutchinson ms | ratio |");
    println!("|---:|---:|---:|---:|");
    for dim in [2, 8, 32, 128] {
        let varmap = VarMap::new();
        let cfg = FfjordConfig {
            dim,
            ..FfjordConfig::default()
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let flow = Ffjord::new(&cfg, opts.clone(), adjoint.clone(), vb)?;
        let mut rng = Rng::new(0);
        init::pytorch_default(&varmap, &mut rng)?;
        let z = rng.normal_tensor(&[512, dim], 0.0, 1.0, DType::F32, &dev)?;
        let eps = Noise::Rademacher.sample(512, dim, &mut rng, DType::F32, &dev)?;
        let mut row = vec![];
        for trace in [Trace::Exact, Trace::Hutchinson(eps)] {
            let mut times = vec![];
            for i in 0..=(4 * reps) {
                let start = Instant::now();
                let (_, tr) = flow.field().dynamics(0.25, &z, &trace)?;
                tr.sum_all()?.to_scalar::<f32>()?;
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            row.push(common::median_min(times).0);
        }
        println!(
            "| {dim} | {:.3} | {:.3} | {:.1} |",
            row[0],
            row[1],
            row[0] / row[1]
        );
    }

    println!();
    println!(
        "FFJORD training step on two circles, batch 512, hidden 64-64-64, dopri5 1e-5, \
         adjoint, on {dev:?}; 1 warm-up + {reps} steps"
    );
    println!("| trace | median ms | min ms | NFE fwd / bwd (last step) | NLL after |");
    println!("|---|---:|---:|---|---:|");
    for noise in [None, Some(Noise::Rademacher), Some(Noise::Gaussian)] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let flow = Ffjord::new(&FfjordConfig::default(), opts.clone(), adjoint.clone(), vb)?;
        let mut rng = Rng::new(0);
        init::pytorch_default(&varmap, &mut rng)?;
        let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), AdamConfig::default())?;
        let mut times = vec![];
        let mut last = (0, 0, 0.0);
        for i in 0..=reps {
            let start = Instant::now();
            let x = two_circles(512, 0.06, &mut rng, DType::F32, &dev)?;
            let trace = match noise {
                None => Trace::Exact,
                Some(n) => Trace::Hutchinson(n.sample(512, 2, &mut rng, DType::F32, &dev)?),
            };
            let (lp, stats) = flow.log_prob_with(&x, &trace)?;
            let nll = lp.mean_all()?.neg()?;
            opt.backward_step(&nll)?;
            let l = nll.to_scalar::<f32>()?;
            dev.synchronize()?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            last = (stats.nfe_forward, stats.nfe_backward(), l);
        }
        let (median, min) = common::median_min(times);
        let name = noise.map_or("exact".to_string(), |n| format!("Hutchinson, {n:?}"));
        println!(
            "| {name} | {median:.1} | {min:.1} | {} / {} | {:.4} |",
            last.0, last.1, last.2
        );
    }
    Ok(())
}
