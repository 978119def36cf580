//! A neural CDE's training step, as torchcde's `example/time_series_classification.py` takes
//! it: batch 32 of the direction spirals (100 points, time and two coordinates), hidden state
//! 8, a field of one hidden layer of 128 (ReLU, final tanh), dopri5 at rtol 1e-3 and atol
//! 1e-6 (diffrax's example; torchcde's `cdeint` defaults to 1e-4 and 1e-6), Adam at lr 1e-2; every
//! interpolation, by the adjoint and by backprop. From the seed-0 initialisation: one warm-up
//! step, then `--reps` timed steps in a row on fresh minibatches.
//!
//! `cargo bench -p node-models --bench cde [-- --reps N] [--device cpu|cuda]`; the reference
//! is `scripts/bench-cde-torch.py`.

mod common;

use candle_core::{DType, Result, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::AdjointOptions;
use node_models::cde::{
    binary_cross_entropy_with_logits, spiral_directions, Interpolation, NeuralCde, NeuralCdeConfig,
};
use node_models::{init, Adam, AdamConfig, Gradient, Rng};
use node_solvers::{Method, SolveOptions};
use std::time::Instant;

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let (reps, dev) = common::reps_and_device(10)?;
    let (rtol, atol) = (1e-3, 1e-6);
    let data = spiral_directions(128, 100, 0.01, 0.0, &mut Rng::new(1), DType::F32, &dev)?;
    println!(
        "neural CDE training step, batch 32 of 128 spirals of 100 points, hidden 8, field \
         8-128-24, dopri5 {rtol:e}/{atol:e}, on {dev:?}; 1 warm-up + {reps} steps"
    );
    println!("| path | gradient | median ms | min ms | NFE fwd / bwd (mean) | loss after |");
    println!("|---|---|---:|---:|---|---:|");
    for kind in [
        Interpolation::Hermite,
        Interpolation::Natural,
        Interpolation::Linear,
    ] {
        for (name, gradient) in [
            (
                "adjoint",
                Gradient::Adjoint(AdjointOptions::default().tolerances(rtol, atol)),
            ),
            ("backprop", Gradient::Backprop),
        ] {
            let varmap = VarMap::new();
            let cfg = NeuralCdeConfig {
                interpolation: kind,
                ..NeuralCdeConfig::default()
            };
            let model = NeuralCde::new(
                &cfg,
                SolveOptions::default()
                    .method(Method::Dopri5)
                    .tolerances(rtol, atol),
                gradient,
                VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            )?;
            let mut rng = Rng::new(0);
            init::pytorch_default(&varmap, &mut rng)?;
            let mut opt = Adam::new(
                node_adjoint::sorted_vars(&varmap),
                AdamConfig {
                    lr: 1e-2,
                    ..AdamConfig::default()
                },
            )?;
            let path = model.path(&data.x, &data.knots)?;
            let mut order: Vec<u32> = (0..128).collect();
            let (mut times, mut nfe, mut loss) = (vec![], (0, 0), 0.0);
            for i in 0..=reps {
                let start = Instant::now();
                rng.shuffle(&mut order);
                let idx = Tensor::new(&order[..32], &dev)?;
                let (logits, stats) = model.forward(&path.select(&idx)?)?;
                let labels = data.labels.index_select(&idx, 0)?;
                let l = binary_cross_entropy_with_logits(&logits.squeeze(1)?, &labels)?;
                opt.backward_step(&l)?;
                loss = l.to_scalar::<f32>()?;
                dev.synchronize()?;
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                    nfe.0 += stats.nfe_forward;
                    nfe.1 += stats.nfe_backward();
                }
            }
            let (median, min) = common::median_min(times);
            println!(
                "| {} | {name} | {median:.1} | {min:.1} | {} / {} | {loss:.4} |",
                kind.name(),
                nfe.0 / reps,
                nfe.1 / reps
            );
        }
    }
    Ok(())
}
