//! A Hamiltonian neural network's training step, as Greydanus et al.'s `hnn.py` takes it:
//! the spring's 25 training trajectories of 30 points (750 states), an MLP 2-200-200-1 (tanh)
//! for `H` (2-200-200-2 for the baseline), the time derivatives' MSE, full-batch Adam at
//! lr 1e-3 with weight decay 1e-4. The HNN's step differentiates `H`'s input gradient again.
//! One warm-up step, then `--reps` timed steps in a row; and a held-out rollout of 25 states
//! over t in [0, 20] (dopri5 at 1e-6, or leapfrog with steps of 0.01 for the separable
//! model).
//!
//! `cargo bench -p node-models --bench hnn [-- --reps N] [--device cpu|cuda]`; the reference
//! is `scripts/bench-hnn-torch.py` (PyTorch with `create_graph`, torchdiffeq for the rollout).

mod common;

use candle_core::{DType, Result};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_models::hnn::{hnn_dataset, Hnn, HnnConfig, HnnKind, HnnSystem};
use node_models::{init, Adam, AdamConfig, Rng};
use node_solvers::{odeint, odeint_symplectic, SolveOptions, SymplecticOptions};
use std::time::Instant;

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let (reps, dev) = common::reps_and_device(20)?;
    let data = hnn_dataset(
        HnnSystem::Spring,
        25,
        0.1,
        &mut Rng::new(1),
        DType::F32,
        &dev,
    )?;
    let x0 = data.x.narrow(0, 0, 25)?.contiguous()?;
    println!(
        "HNN training step, 750 states of the spring, width 200, depth 2, full-batch Adam, on \
         {dev:?}; 1 warm-up + {reps} steps; rollout of 25 states over [0, 20]"
    );
    println!("| model | step median ms | step min ms | rollout ms | rollout NFE |");
    println!("|---|---:|---:|---:|---:|");
    for kind in [HnnKind::Baseline, HnnKind::Hamiltonian, HnnKind::Separable] {
        let varmap = VarMap::new();
        let cfg = HnnConfig {
            kind,
            ..HnnConfig::default()
        };
        let model = Hnn::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        init::pytorch_default(&varmap, &mut Rng::new(0))?;
        let mut opt = Adam::new(
            node_adjoint::sorted_vars(&varmap),
            AdamConfig {
                lr: 1e-3,
                weight_decay: 1e-4,
                ..AdamConfig::default()
            },
        )?;
        let mut times = vec![];
        for i in 0..=reps {
            let start = Instant::now();
            let loss = (model.time_derivative(&data.x)? - &data.dx)?
                .sqr()?
                .mean_all()?;
            opt.backward_step(&loss)?;
            dev.synchronize()?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (median, min) = common::median_min(times);
        let ts: Vec<f64> = (0..200).map(|i| 20.0 * i as f64 / 199.0).collect();
        let start = Instant::now();
        let nfe = if kind == HnnKind::Separable {
            let (q, p) = (x0.narrow(1, 0, 1)?, x0.narrow(1, 1, 1)?);
            let sol = odeint_symplectic(&model, &q, &p, &ts, &SymplecticOptions::new(0.01))?;
            sol.stats.force_evals + sol.stats.velocity_evals
        } else {
            let opts = SolveOptions::default().tolerances(1e-6, 1e-6);
            odeint(&model, &x0.detach(), &ts, &opts)?.stats.nfe
        };
        dev.synchronize()?;
        let rollout = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "| {} | {median:.2} | {min:.2} | {rollout:.1} | {nfe} |",
            kind.name()
        );
    }
    Ok(())
}
