//! The SDE-GAN's training step, as torchsde's `examples/sde_gan.py` takes it: 64 observation
//! times, the generator's SDE (hidden 16, noise 3, MLPs 16 wide with one hidden layer) by
//! reversible Heun at dt 1 with its gradient by the walked-back adjoint or by backprop, the
//! discriminator's CDE (midpoint, dt 1, backprop) on the generated and on real paths, the
//! Wasserstein loss, one Adam step for both networks and the discriminator's clipping; at
//! batch 1024 (the example's) and 256. From the seed-0 initialisation: one warm-up step,
//! then `--reps` timed steps in a row, each with fresh noise, a fresh Brownian path and a
//! fresh batch of real paths.
//!
//! `cargo bench -p node-models --bench sde_gan [-- --reps N] [--device cpu|cuda]`; the
//! reference is `scripts/bench-sde-gan-torch.py`.

mod common;

use candle_core::{DType, Result, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::SdeAdjointOptions;
use node_models::sde_gan::{ou_dataset, SdeGan, SdeGanConfig};
use node_models::{init, Adam, AdamConfig, Gradient, Rng, SdeGradient};
use std::time::Instant;

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let (reps, dev) = common::reps_and_device(5)?;
    let (ts, data) = ou_dataset(8192, 64, 0.0, 1, DType::F32, &dev)?;
    println!(
        "SDE-GAN training step, 64 times, hidden 16, noise 3, MLPs 16 wide; generator reversible \
         Heun dt 1, discriminator CDE midpoint dt 1 (backprop), on {dev:?}; 1 warm-up + {reps} steps"
    );
    println!("| batch | generator gradient | median ms | min ms | NFE fwd / bwd | loss after |");
    println!("|---:|---|---:|---:|---|---:|");
    for batch in [1024, 256] {
        for (name, gradient) in [
            (
                "adjoint (walked back)",
                SdeGradient::Adjoint(SdeAdjointOptions::default()),
            ),
            ("backprop", SdeGradient::Backprop),
        ] {
            let varmap = VarMap::new();
            let gan = SdeGan::new(
                SdeGanConfig::default(),
                VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            )?;
            let mut rng = Rng::new(0);
            init::pytorch_default(&varmap, &mut rng)?;
            gan.init(3.0, 0.5)?;
            gan.discriminator().clip_weights()?;
            let mut opt = Adam::new(
                node_adjoint::sorted_vars(&varmap),
                AdamConfig {
                    lr: 1e-3,
                    ..AdamConfig::default()
                },
            )?;
            let (mut times, mut nfe, mut loss) = (vec![], (0, 0), 0.0);
            for i in 0..=reps {
                let start = Instant::now();
                let v = rng.normal_tensor(&[batch, 5], 0.0, 1.0, DType::F32, &dev)?;
                let picks: Vec<u32> = (0..batch).map(|_| rng.below(8192) as u32).collect();
                let real = data.index_select(&Tensor::new(picks.as_slice(), &dev)?, 0)?;
                let fake = gan
                    .generator()
                    .forward(&ts, &v, rng.next_u64(), &gradient)?;
                let d = gan.discriminator();
                let (f, _) = d.scores(&fake.ys, &ts, &Gradient::Backprop)?;
                let (r, _) = d.scores(&real, &ts, &Gradient::Backprop)?;
                let l = (f.mean_all()? - r.mean_all()?)?;
                let mut grads = l.backward()?;
                gan.flip_generator_grads(&mut grads)?;
                opt.step(&grads)?;
                d.clip_weights()?;
                loss = l.to_scalar::<f32>()?;
                dev.synchronize()?;
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                    nfe.0 = fake.forward.drift_evals;
                    nfe.1 = fake.adjoint.map_or(0, |s| s.backward().drift_evals);
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
