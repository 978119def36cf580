//! Learns the Mackey–Glass delay equation from its trajectory with a neural DDE
//! (`dx/dt = MLP(x(t), x(t − τ))`, Zhu et al. 2021), by backprop through `ddeint`, against a
//! neural ODE of the same size (`dx/dt = MLP(x)`), which as a one-dimensional ODE cannot
//! oscillate. Each iteration predicts a batch of windows of the trajectory from their
//! starts, each with its true past as the history.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{pick_device, print_outputs, DeviceArg};
use iterations::{Iterations, Plan};
use node_adjoint::{AdjointStats, DelayHistory};
use node_models::{Activation, Mlp, NeuralDde};
use node_solvers::delay::{ddeint, History};
use node_solvers::problems::MackeyGlass;
use node_solvers::{odeint, Method, SolveOptions, SolverStats};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `--model` choices.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum ModelArg {
    /// `dx/dt = MLP(x(t), x(t − τ))`, solved by `ddeint`.
    Dde,
    /// `dx/dt = MLP(x)`, solved by `odeint`: the baseline.
    Ode,
}

/// `--gradient` choices.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum GradientArg {
    /// Backprop through the solve: the network's graph at every stage is kept.
    Backprop,
    /// The adjoint method (`ddeint_adjoint`): a reverse delay equation, no graph kept.
    Adjoint,
}

/// Learn Mackey–Glass (`dx/dt = 2 x(t−τ) / (1 + x(t−τ)^10) − x`, τ = 1, a periodic
/// oscillation) from windows of its trajectory.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The model.
    #[arg(long, value_enum, default_value = "dde")]
    model: ModelArg,
    /// Adam iterations (in total, counting resumed ones).
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// Windows per iteration.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Length of each window, in delays.
    #[arg(long, default_value_t = 3.0)]
    horizon: f64,
    /// Width of the network's two hidden layers.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// How the neural DDE's gradients are computed (the ODE's are by backprop).
    #[arg(long, value_enum, default_value = "backprop")]
    gradient: GradientArg,
    /// The solver.
    #[arg(long, default_value = "dopri5")]
    method: Method,
    /// rtol of the solves (atol = rtol / 10).
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// Random seed (weights, windows).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics); `runs/delay-dde` or `runs/delay-ode` by default.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// Write the checkpoint and a metrics line every this many iterations.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Stop after this many iterations of this run, with a checkpoint (`--resume` goes on
    /// from there); SIGINT/SIGTERM stop the same way after the iteration in progress.
    #[arg(long)]
    stop_after_steps: Option<usize>,
}

/// A solve's counts: the forward solve's, or the adjoint's forward and backward ones.
enum Counts {
    Forward(SolverStats),
    Adjoint(AdjointStats),
}

/// The trajectory, sampled every `DT` from its start, and read between samples linearly.
struct Trajectory {
    samples: Vec<f64>,
}

/// Sampling interval of the trajectory.
const DT: f64 = 0.01;
/// Its length: windows start in `[TRAIN.0, TRAIN.1)` for training and in
/// `[HELD_OUT.0, HELD_OUT.1)` for the held-out error.
const LENGTH: f64 = 100.0;
const TRAIN: (f64, f64) = (5.0, 70.0);
const HELD_OUT: (f64, f64) = (75.0, 95.0);

impl Trajectory {
    /// Mackey–Glass from `x = 0.5` before 0, solved tightly.
    fn new(mg: &MackeyGlass) -> Result<Self> {
        let x0 = Tensor::new(&[0.5f64], &Device::Cpu)?;
        let n = (LENGTH / DT).round() as usize;
        let ts: Vec<f64> = (0..=n).map(|i| i as f64 * DT).collect();
        let opts = SolveOptions::default().tolerances(1e-10, 1e-12);
        let (sol, _) = ddeint(&mg.field(), &[mg.tau], History::Constant, &x0, &ts, &opts)?;
        Ok(Self {
            samples: sol.ys.flatten_all()?.to_vec1::<f64>()?,
        })
    }

    fn at(&self, t: f64) -> f64 {
        let x = (t / DT).clamp(0.0, (self.samples.len() - 1) as f64);
        let i = (x.floor() as usize).min(self.samples.len() - 2);
        let w = x - i as f64;
        (1.0 - w) * self.samples[i] + w * self.samples[i + 1]
    }

    /// The windows' values at `starts + t`, `[B, 1]`.
    fn batch(&self, starts: &[f64], t: f64, dev: &Device) -> candle_core::Result<Tensor> {
        let v: Vec<f64> = starts.iter().map(|s| self.at(s + t)).collect();
        Tensor::from_vec(v, (starts.len(), 1), dev)?.to_dtype(DType::F32)
    }
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.iters == 0 || args.checkpoint_every == 0 || args.batch == 0 || args.width == 0 {
        bail!("--iters, --checkpoint-every, --batch and --width must be positive");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !(positive(args.lr) && positive(args.rtol)) {
        bail!("--lr and --rtol must be positive numbers");
    }
    if !(positive(args.horizon) && args.horizon <= 5.0) {
        bail!("--horizon must be in (0, 5] delays, got {}", args.horizon);
    }
    let dev = pick_device(args.device)?;
    let mg = MackeyGlass::default();
    let data = Arc::new(Trajectory::new(&mg)?);
    let horizon = args.horizon * mg.tau;
    // Observed every 0.1 along each window.
    let count = (horizon / 0.1).round().max(1.0) as usize;
    let ts: Vec<f64> = (0..=count)
        .map(|i| horizon * i as f64 / count as f64)
        .collect();
    let opts = SolveOptions::default()
        .method(args.method)
        .tolerances(args.rtol, args.rtol / 10.0);

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let (model_name, default_dir) = match args.model {
        ModelArg::Dde => ("delay-dde", "runs/delay-dde"),
        ModelArg::Ode => ("delay-ode", "runs/delay-ode"),
    };
    enum Model {
        Dde(NeuralDde),
        Ode(Mlp),
    }
    let model = match args.model {
        ModelArg::Dde => Model::Dde(NeuralDde::new(1, &[mg.tau], args.width, 2, vb)?),
        ModelArg::Ode => Model::Ode(Mlp::new(
            1,
            1,
            args.width,
            2,
            Activation::Tanh,
            false,
            vb.pp("mlp"),
        )?),
    };
    // The windows' predictions `[len(ts), B, 1]` from their starts, and the solve's counts
    // (the adjoint's backward ones once `backward()` has run).
    let predict = |starts: &[f64]| -> candle_core::Result<(Tensor, Counts)> {
        let x0 = data.batch(starts, 0.0, &dev)?;
        let forward_only = |sol: node_solvers::Solution| (sol.ys, Counts::Forward(sol.stats));
        match &model {
            Model::Dde(m) if args.gradient == GradientArg::Adjoint => {
                let (data, starts, dev) = (data.clone(), starts.to_vec(), dev.clone());
                let past = move |t: f64| data.batch(&starts, t, &dev);
                let history = DelayHistory::Function(Arc::new(past));
                let sol = m.solve_adjoint(&x0, history, &ts, &opts, &opts)?;
                Ok((sol.ys, Counts::Adjoint(sol.stats)))
            }
            Model::Dde(m) => {
                let past = |t: f64| data.batch(starts, t, &dev);
                Ok(forward_only(m.solve(
                    &x0,
                    History::Function(&past),
                    &ts,
                    &opts,
                )?))
            }
            Model::Ode(m) => {
                let f = |_t: f64, x: &Tensor| m.forward(x);
                Ok(forward_only(odeint(&f, &x0, &ts, &opts)?))
            }
        }
    };
    let truth = |starts: &[f64]| -> candle_core::Result<Tensor> {
        let xs = ts
            .iter()
            .map(|&t| data.batch(starts, t, &dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&xs, 0)
    };
    let rms = |starts: &[f64]| -> candle_core::Result<f64> {
        (predict(starts)?.0 - truth(starts)?)?
            .sqr()?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
            .map(f64::sqrt)
    };
    let held_out: Vec<f64> = (0..32)
        .map(|i| HELD_OUT.0 + (HELD_OUT.1 - HELD_OUT.0) * i as f64 / 32.0)
        .collect();

    let out_dir = args.out_dir.clone().unwrap_or_else(|| default_dir.into());
    let plan = Plan {
        model: model_name,
        out_dir: &out_dir,
        iters: args.iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr: args.lr,
        extra_json: format!(
            "\"method\":\"{}\",\"rtol\":{},\"horizon\":{},\"batch\":{},\"gradient\":\"{:?}\",",
            args.method, args.rtol, args.horizon, args.batch, args.gradient
        ),
    };
    let mut run = Iterations::start(plan, &varmap, &dev)?;
    println!(
        "Mackey–Glass (τ = {}) by a neural {}, {} parameters, windows of {} delays, batch {}, {} at rtol {:e}, on {dev:?}; iterations {}..{}",
        mg.tau,
        match (args.model, args.gradient) {
            (ModelArg::Dde, GradientArg::Backprop) => "DDE (backprop)",
            (ModelArg::Dde, GradientArg::Adjoint) => "DDE (adjoint)",
            (ModelArg::Ode, _) => "ODE",
        },
        run.n_params,
        args.horizon,
        args.batch,
        args.method,
        args.rtol,
        run.start + 1,
        args.iters
    );
    for it in run.remaining() {
        let starts: Vec<f64> = (0..args.batch)
            .map(|_| TRAIN.0 + (TRAIN.1 - TRAIN.0) * run.rng.uniform())
            .collect();
        let (ys, stats) = predict(&starts)?;
        let loss = (ys - truth(&starts)?)?.sqr()?.mean_all()?;
        run.opt.backward_step(&loss)?;
        let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        let (forward, backward) = match stats {
            Counts::Forward(s) => (s, SolverStats::default()),
            Counts::Adjoint(s) => (s.forward(), s.backward()),
        };
        let values = [
            ("loss", l),
            ("nfe_f", forward.nfe as f64),
            ("nfe_b", backward.nfe as f64),
        ];
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics, ckpt) = run.finish();
    // The held-out windows, and the error of predicting each window's start throughout.
    let model_rms = rms(&held_out)?;
    let start = truth(&held_out)?;
    let constant = (start.broadcast_sub(&start.get(0)?.unsqueeze(0)?))?
        .sqr()?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .sqrt();
    println!(
        "held-out RMS error over {} windows of {} delays: {model_rms:.4} (holding the start: {constant:.4})",
        held_out.len(),
        args.horizon
    );
    common::write_summary(
        &out_dir,
        &[
            ("model", format!("\"{model_name}\"")),
            ("held_out_rms", common::json_number(model_rms)),
            ("constant_rms", common::json_number(constant)),
        ],
    )?;
    print_outputs(&[
        ("metrics", metrics.as_path()),
        ("checkpoint", ckpt.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trajectory_oscillates_and_is_read_between_samples() -> Result<()> {
        let data = Trajectory::new(&MackeyGlass::default())?;
        // A periodic oscillation between about 0.67 and 1.21 after its start.
        let late = &data.samples[2000..];
        let (lo, hi) = late
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        assert!(lo < 0.7 && hi > 1.2, "{lo} {hi}");
        assert_eq!(data.at(0.5), data.samples[50]);
        let mid = data.at(0.505);
        assert!((mid - 0.5 * (data.samples[50] + data.samples[51])).abs() < 1e-15);
        Ok(())
    }
}
