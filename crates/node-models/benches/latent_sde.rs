//! The latent SDE's training step, as torchsde's `examples/latent_sde.py` takes it: the
//! segmented cosine's 20 observations (solved from 0 to 2 through them), a drift network
//! 3-200-200-1 (tanh), the midpoint method at dt 0.01 on the augmented state `[y, ∫½u²]`,
//! the Laplace likelihood at scale 0.05 and the KL term, Adam at lr 1e-2; by the stochastic
//! adjoint and by backprop, and with the reversible Heun method (walked back, or backprop),
//! at batch 512 (the example's) and 128. From the seed-0
//! initialisation: one warm-up step, then `--reps` timed steps in a row, each with fresh
//! noise and a fresh Brownian path.
//!
//! `cargo bench -p node-models --bench latent_sde [-- --reps N] [--device cpu|cuda]`; the
//! reference is `scripts/bench-latent-sde-torch.py`.

mod common;

use candle_core::{DType, Result, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::SdeAdjointOptions;
use node_models::latent_sde::{laplace_log_likelihood, LatentSde, LatentSdeConfig, SdeGradient};
use node_models::{init, Adam, AdamConfig, Rng};
use node_solvers::SdeMethod;
use std::time::Instant;

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let (reps, dev) = common::reps_and_device(5)?;
    let lin = |a: f64, b: f64| (0..10).map(move |i| a + (b - a) * i as f64 / 9.0);
    let obs: Vec<f64> = lin(0.3, 0.8).chain(lin(1.2, 1.5)).collect();
    let ys: Vec<f32> = obs
        .iter()
        .map(|t| (2.0 * std::f64::consts::PI * t).cos() as f32)
        .collect();
    let ys = Tensor::new(ys.as_slice(), &dev)?;
    let ts: Vec<f64> = std::iter::once(0.0)
        .chain(obs.iter().copied())
        .chain(std::iter::once(2.0))
        .collect();
    println!(
        "latent SDE training step, 20 observations, drift 3-200-200-1, midpoint dt 0.01 over \
         [0, 2], on {dev:?}; 1 warm-up + {reps} steps"
    );
    println!("| batch | gradient | median ms | min ms | NFE fwd / bwd | loss after |");
    println!("|---:|---|---:|---:|---|---:|");
    for batch in [512, 128] {
        let adjoint = SdeGradient::Adjoint(SdeAdjointOptions::default());
        for (name, method, gradient) in [
            ("adjoint", SdeMethod::Midpoint, adjoint.clone()),
            ("backprop", SdeMethod::Midpoint, SdeGradient::Backprop),
            (
                "reversible Heun, walked back",
                SdeMethod::ReversibleHeun,
                adjoint,
            ),
            (
                "reversible Heun, backprop",
                SdeMethod::ReversibleHeun,
                SdeGradient::Backprop,
            ),
        ] {
            let varmap = VarMap::new();
            let cfg = LatentSdeConfig {
                method,
                ..LatentSdeConfig::default()
            };
            let model = LatentSde::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
            let mut rng = Rng::new(0);
            init::pytorch_default(&varmap, &mut rng)?;
            model.init()?;
            let mut opt = Adam::new(
                node_adjoint::sorted_vars(&varmap),
                AdamConfig {
                    lr: 1e-2,
                    ..AdamConfig::default()
                },
            )?;
            let (mut times, mut nfe, mut loss) = (vec![], (0, 0), 0.0);
            for i in 0..=reps {
                let start = Instant::now();
                let eps = rng.normal_tensor(&[batch, 1], 0.0, 1.0, DType::F32, &dev)?;
                let out = model.forward(&ts, &eps, rng.next_u64(), &gradient)?;
                let logpy = laplace_log_likelihood(&out.ys.narrow(0, 1, 20)?, &ys, 0.05)?;
                let l = (&out.kl - logpy)?;
                opt.backward_step(&l)?;
                loss = l.to_scalar::<f32>()?;
                dev.synchronize()?;
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                    nfe.0 = out.forward.drift_evals;
                    nfe.1 = out.adjoint.map_or(0, |s| s.backward().drift_evals);
                }
            }
            let (median, min) = common::median_min(times);
            println!(
                "| {batch} | {name} | {median:.1} | {min:.1} | {} / {} | {loss:.2} |",
                nfe.0, nfe.1
            );
        }
    }
    Ok(())
}
