//! A Hamiltonian neural network's training step, as Greydanus et al.'s `hnn.py` takes it:
//! the spring's 25 training trajectories of 30 points (750 states), an MLP 2-200-200-1 (tanh)
//! for `H` (2-200-200-2 for the baseline), the time derivatives' MSE, full-batch Adam at
//! lr 1e-3 with weight decay 1e-4. The HNN's step differentiates `H`'s input gradient again.
//! One warm-up step, then `--reps` timed steps in a row; and a held-out rollout of 25 states
//! over t in [0, 20] (dopri5 at 1e-6, or leapfrog with steps of 0.01 for the separable
//! model).
//!
//! Then the gradient of a leapfrog rollout of the separable model (25 states, steps of
//! 0.01, `L = Σ q(T)² + p(T)²`) by backprop through `odeint_symplectic` and by
//! `odeint_symplectic_adjoint`, which walks the steps back: time, and on the CPU the peak
//! resident memory above the set-up (each in its own process; on a GPU 100 and 1000 steps,
//! time only).
//!
//! `cargo bench -p node-models --bench hnn [-- --reps N] [--device cpu|cuda]`; the reference
//! is `scripts/bench-hnn-torch.py` (PyTorch with `create_graph`, torchdiffeq for the rollout).

mod common;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::odeint_symplectic_adjoint;
use node_models::hnn::{hnn_dataset, Hnn, HnnConfig, HnnKind, HnnSystem};
use node_models::{init, Adam, AdamConfig, Rng};
use node_solvers::{odeint, odeint_symplectic, SolveOptions, SymplecticOptions};
use std::time::Instant;

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "rollout-gradient-child") {
        let (mode, steps) = (
            &args[i + 1],
            args[i + 2].parse().map_err(candle_core::Error::wrap)?,
        );
        return rollout_gradient_child(mode, steps);
    }
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
    rollout_gradients(&dev)
}

/// The peak (`VmHWM:`) or current (`VmRSS:`) resident memory of this process, KiB.
fn status_kib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// One gradient of a leapfrog rollout of `steps` steps of 0.01: milliseconds.
fn rollout_gradient(mode: &str, steps: usize, dev: &Device) -> Result<f64> {
    let varmap = VarMap::new();
    let cfg = HnnConfig {
        kind: HnnKind::Separable,
        ..HnnConfig::default()
    };
    let model = Hnn::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    init::pytorch_default(&varmap, &mut Rng::new(0))?;
    let data = hnn_dataset(HnnSystem::Spring, 1, 0.1, &mut Rng::new(1), DType::F32, dev)?;
    let x0 = Tensor::cat(&[&data.x, &data.x.affine(0.5, 0.0)?], 0)?.narrow(0, 0, 25)?;
    let (q0, p0) = (x0.narrow(1, 0, 1)?, x0.narrow(1, 1, 1)?);
    let ts = [0.0, steps as f64 * 0.01];
    let opts = SymplecticOptions::new(0.01);
    let start = Instant::now();
    let (qs, ps) = match mode {
        "backprop" => {
            let sol = odeint_symplectic(&model, &q0, &p0, &ts, &opts)?;
            (sol.qs, sol.ps)
        }
        "walk-back" => {
            let sol = odeint_symplectic_adjoint(&model, &q0, &p0, &ts, &opts)?;
            (sol.qs, sol.ps)
        }
        m => candle_core::bail!("unknown mode {m}"),
    };
    let loss = (qs.get(1)?.sqr()?.sum_all()? + ps.get(1)?.sqr()?.sum_all()?)?;
    let grads = loss.backward()?;
    // Every parameter but the energies' output biases, which move no state, has a gradient.
    let vars = model.vars()?;
    let moving = vars.iter().filter(|v| v.elem_count() > 1);
    if moving.clone().any(|v| grads.get(v.as_tensor()).is_none()) {
        candle_core::bail!("a parameter has no gradient");
    }
    dev.synchronize()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// Runs in a child process (CPU): one gradient, prints `ms peak_delta_mib`.
fn rollout_gradient_child(mode: &str, steps: usize) -> Result<()> {
    let base = status_kib("VmRSS:");
    let ms = rollout_gradient(mode, steps, &Device::Cpu)?;
    println!("{ms:.1} {:.1}", (status_kib("VmHWM:") - base) / 1024.0);
    Ok(())
}

fn rollout_gradients(dev: &Device) -> Result<()> {
    println!(
        "\nGradient of a leapfrog rollout of the separable HNN, 25 states, steps of 0.01, on \
         {dev:?}"
    );
    println!("| mode | steps | ms | peak RSS above set-up (MiB) |");
    println!("|---|---:|---:|---:|");
    let exe = std::env::current_exe().map_err(candle_core::Error::wrap)?;
    // On a GPU, time only, and not the longest rollout: the GPU runner's time is short.
    let all_steps: &[usize] = if dev.is_cpu() {
        &[100, 1000, 4000]
    } else {
        &[100, 1000]
    };
    for mode in ["backprop", "walk-back"] {
        for &steps in all_steps {
            if !dev.is_cpu() {
                let ms = rollout_gradient(mode, steps, dev)?;
                println!("| {mode} | {steps} | {ms:.1} | – |");
                continue;
            }
            let out = std::process::Command::new(&exe)
                .args(["rollout-gradient-child", mode, &steps.to_string()])
                .output()
                .map_err(candle_core::Error::wrap)?;
            let text = String::from_utf8_lossy(&out.stdout);
            match text.split_whitespace().collect::<Vec<_>>()[..] {
                [ms, mib] if out.status.success() => {
                    println!("| {mode} | {steps} | {ms} | {mib} |")
                }
                _ => println!(
                    "| {mode} | {steps} | failed: {} | |",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ),
            }
        }
    }
    Ok(())
}
