//! One training step of the two-circles CNF as torchdiffeq's `examples/cnf.py` takes it: width
//! 64, hypernetwork 32, 512 fresh points of `make_circles(noise 0.06, factor 0.5)` per step,
//! `log p(x)` by dopri5 (rtol = atol = 1e-5) from t = 10 to 0, mean NLL, Adam (lr 1e-3);
//! by the adjoint, by backprop through the solver and by checkpointed backprop; then each
//! again with RNODE's regularizers (`Cnf::log_prob_regularized`, loss NLL + 0.1·(kinetic +
//! Jacobian)). From the seed-0 initialisation, one warm-up step, then `--reps` timed steps in
//! a row (the NFE grows as the flow trains).
//!
//! `cargo bench -p node-models --bench cnf [-- --reps N] [--device cpu|cuda]`;
//! `scripts/bench-small-models.sh` runs it beside torchdiffeq (`scripts/bench-cnf-torch.py`).

mod common;

use candle_core::{DType, Result};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::{AdjointOptions, CheckpointOptions};
use node_models::cnf::{two_circles, Cnf, CnfConfig};
use node_models::{init, Adam, AdamConfig, Gradient, Rng};
use node_solvers::{Method, SolveOptions};
use std::time::Instant;

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let (reps, dev) = common::reps_and_device(5)?;
    println!(
        "CNF training step, batch 512, width 64, dopri5 1e-5, on {dev:?}; 1 warm-up + {reps} steps"
    );
    println!("| gradient | median ms | min ms | NFE fwd / bwd (last step) | NLL after |");
    println!("|---|---:|---:|---|---:|");
    let adjoint = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-5, 1e-5));
    let checkpoint = Gradient::Checkpoint(CheckpointOptions::default());
    for (name, gradient, regularize) in [
        ("adjoint", adjoint.clone(), false),
        ("backprop", Gradient::Backprop, false),
        ("checkpoint", checkpoint.clone(), false),
        ("adjoint, RNODE λ = 0.1", adjoint, true),
        ("backprop, RNODE λ = 0.1", Gradient::Backprop, true),
        ("checkpoint, RNODE λ = 0.1", checkpoint, true),
    ] {
        let varmap = VarMap::new();
        let opts = SolveOptions::default()
            .method(Method::Dopri5)
            .tolerances(1e-5, 1e-5);
        let cnf = Cnf::new(
            &CnfConfig::default(),
            opts,
            gradient,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )?;
        let mut rng = Rng::new(0);
        init::pytorch_default(&varmap, &mut rng)?;
        let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), AdamConfig::default())?;
        let mut times = vec![];
        let mut last = (0, 0, 0.0);
        for i in 0..=reps {
            let start = Instant::now();
            let x = two_circles(512, 0.06, &mut rng, DType::F32, &dev)?;
            let (nll, loss, stats) = if regularize {
                let r = cnf.log_prob_regularized(&x)?;
                let nll = r.log_p.mean_all()?.neg()?;
                let reg = (r.kinetic.mean_all()? + r.jacobian.mean_all()?)?;
                let loss = (&nll + reg.affine(0.1, 0.0)?)?;
                (nll, loss, r.stats)
            } else {
                let (lp, stats) = cnf.log_prob_with_stats(&x)?;
                let nll = lp.mean_all()?.neg()?;
                (nll.clone(), nll, stats)
            };
            opt.backward_step(&loss)?;
            let l = nll.to_scalar::<f32>()?;
            dev.synchronize()?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            last = (stats.nfe_forward, stats.nfe_backward(), l);
        }
        let (median, min) = common::median_min(times);
        println!(
            "| {name} | {median:.1} | {min:.1} | {} / {} | {:.4} |",
            last.0, last.1, last.2
        );
    }
    Ok(())
}
