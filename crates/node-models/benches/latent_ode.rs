//! One training iteration of the spiral latent ODE as torchdiffeq's `examples/latent_ode.py`
//! takes it: all 1000 spirals of 100 noisy points (`ntotal` 500, noise 0.3), latent 4, hidden
//! 20, RNN 25, dopri5 at torchdiffeq's default tolerances (rtol 1e-7, atol 1e-9) to the 100
//! observation times, negative ELBO, Adam (lr 0.01); by backprop through the solver (the
//! example's default) and by the adjoint; and with an ODE-RNN encoder (Rubanova et al. 2019:
//! Euler steps of at most a 50th of the span, here one per interval). From the seed-0
//! initialisation, one warm-up iteration, then `--reps` timed ones in a row (the NFE grows
//! as the model trains).
//!
//! `cargo bench -p node-models --bench latent_ode [-- --reps N] [--device cpu|cuda]`;
//! `scripts/bench-small-models.sh` runs it beside torchdiffeq
//! (`scripts/bench-latent-ode-torch.py`).

mod common;

use candle_core::{DType, Result};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::{AdjointOptions, CheckpointOptions};
use node_models::latent_ode::{spirals, Encoder, LatentOde, LatentOdeConfig};
use node_models::{init, Adam, AdamConfig, Gradient, Rng};
use node_solvers::{Method, SolveOptions};
use std::time::Instant;

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let (reps, dev) = common::reps_and_device(5)?;
    let data = spirals(1000, 500, 100, 0.3, &mut Rng::new(0xda7a), DType::F32, &dev)?;
    println!(
        "latent ODE training iteration, 1000 spirals x 100 points, dopri5 1e-7/1e-9, on {dev:?}; 1 warm-up + {reps} iterations"
    );
    println!(
        "| gradient | median ms | min ms | NFE fwd / bwd (last iteration) | encoder NFE fwd / bwd | loss after |"
    );
    println!("|---|---:|---:|---|---|---:|");
    let adjoint = || Gradient::Adjoint(AdjointOptions::default().tolerances(1e-7, 1e-9));
    for (name, gradient, encoder) in [
        ("backprop", Gradient::Backprop, Encoder::Rnn),
        ("adjoint", adjoint(), Encoder::Rnn),
        (
            "checkpoint",
            Gradient::Checkpoint(CheckpointOptions::default()),
            Encoder::Rnn,
        ),
        ("backprop, ODE-RNN", Gradient::Backprop, Encoder::ODE_RNN),
        ("adjoint, ODE-RNN", adjoint(), Encoder::ODE_RNN),
    ] {
        let varmap = VarMap::new();
        let opts = SolveOptions::default()
            .method(Method::Dopri5)
            .tolerances(1e-7, 1e-9);
        let model = LatentOde::new(
            &LatentOdeConfig {
                encoder,
                ..Default::default()
            },
            opts,
            gradient,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )?;
        let mut rng = Rng::new(0);
        init::pytorch_default(&varmap, &mut rng)?;
        let cfg = AdamConfig {
            lr: 0.01,
            ..Default::default()
        };
        let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), cfg)?;
        let mut times = vec![];
        let mut last = (0, 0, 0, 0, 0.0);
        for i in 0..=reps {
            let start = Instant::now();
            let eps = rng.normal_tensor(&[1000, 4], 0.0, 1.0, DType::F32, &dev)?;
            let parts = model.elbo(&data.observed, &data.ts, None, &eps, 0.3)?;
            opt.backward_step(&parts.loss)?;
            let l = parts.loss.to_scalar::<f32>()?;
            dev.synchronize()?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            let nfe_b = parts.adjoint.as_ref().map_or(0, |a| a.backward().nfe);
            let enc = &parts.encoder;
            last = (
                parts.nfe_forward,
                nfe_b,
                enc.nfe_forward,
                enc.nfe_backward(),
                l,
            );
        }
        let (median, min) = common::median_min(times);
        println!(
            "| {name} | {median:.1} | {min:.1} | {} / {} | {} / {} | {:.1} |",
            last.0, last.1, last.2, last.3, last.4
        );
    }
    Ok(())
}
