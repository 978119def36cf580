//! A continuous equilibrium model (a deep equilibrium network written as an ODE's steady
//! state) classifies the two-spirals points: the features of a point `x` are the steady
//! state of `dy/dt = tanh(W y + U x + b) − y` from `y = 0`, read out by a linear layer. The
//! steady state is found by `odeint_steady_state` and differentiated by the implicit
//! function theorem (`odeint_steady_state_adjoint`: the backward pass is a second steady
//! state, of the adjoint dynamics, by vector–Jacobian products, in constant memory); or, for
//! comparison, by backprop through a solve of fixed length (`--gradient backprop`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{linear, Linear, Module, Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{json_number, pick_device, print_outputs, write_summary, DeviceArg};
use iterations::{Iterations, Plan};
use node_adjoint::{odeint_steady_state_adjoint, with_params};
use node_models::Rng;
use node_solvers::{odeint, Jacobian, Method, SolveOptions, SolverError, SteadyStateOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// The checkpoint's model name.
const MODEL: &str = "equilibrium";

/// How the steady state is differentiated.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum GradientArg {
    /// The implicit function theorem at the steady state: constant memory.
    Implicit,
    /// Backprop through a solve to `--horizon`: memory grows with its steps.
    Backprop,
}

/// Train a continuous equilibrium model on the two spirals.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Adam iterations (in total, counting resumed ones); each a minibatch of points.
    #[arg(long, default_value_t = 400)]
    iters: usize,
    /// Points per minibatch.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Training points, half on each spiral.
    #[arg(long, default_value_t = 1000)]
    train_size: usize,
    /// Held-out points the accuracy is measured on.
    #[arg(long, default_value_t = 1000)]
    test_size: usize,
    /// Turns of each spiral.
    #[arg(long, default_value_t = 1.0)]
    turns: f64,
    /// Standard deviation of the noise added to the points.
    #[arg(long, default_value_t = 0.05)]
    noise: f64,
    /// Width of the equilibrium state `y`.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// ODE method of the solves. The points' states are independent, so an implicit
    /// method's Jacobian is built per point (`Jacobian::Batched`).
    #[arg(long, default_value = "dopri5")]
    method: Method,
    /// Relative tolerance of the solves (the steady-state test is 100 times looser).
    #[arg(long, default_value_t = 1e-4)]
    rtol: f64,
    /// Absolute tolerance of the solves.
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// The solves give up at this time if the state has not come to rest.
    #[arg(long, default_value_t = 200.0)]
    t_max: f64,
    /// How the steady state is differentiated.
    #[arg(long, value_enum, default_value = "implicit")]
    gradient: GradientArg,
    /// With `--gradient backprop`: the length of the solve differentiated.
    #[arg(long, default_value_t = 20.0)]
    horizon: f64,
    /// Random seed (data, initialisation, minibatches).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, summary).
    #[arg(long, default_value = "runs/equilibrium")]
    out_dir: PathBuf,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// Write the checkpoint and a metrics line every this many iterations.
    #[arg(long, default_value_t = 20)]
    checkpoint_every: usize,
    /// Stop after this many iterations of this run, with a checkpoint (`--resume` goes on
    /// from there); SIGINT/SIGTERM stop the same way after the iteration in progress.
    #[arg(long)]
    stop_after_steps: Option<usize>,
}

/// `count` points of the two spirals (`[count, 2]`) and their classes (`[count]`, u32):
/// class `c` at angle `θ = turns · 2π s` and radius `s` (`s` uniform in (0.05, 1]), rotated
/// by `cπ`, with Gaussian noise.
fn spirals(
    count: usize,
    turns: f64,
    noise: f64,
    rng: &mut Rng,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut xs = Vec::with_capacity(2 * count);
    let mut cs = Vec::with_capacity(count);
    for i in 0..count {
        let c = (i % 2) as u32;
        let s = 0.05 + 0.95 * rng.uniform();
        let angle = turns * 2.0 * std::f64::consts::PI * s + c as f64 * std::f64::consts::PI;
        xs.push(s * angle.cos() + noise * rng.normal());
        xs.push(s * angle.sin() + noise * rng.normal());
        cs.push(c);
    }
    let x = Tensor::from_vec(xs, (count, 2), &Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_device(dev)?;
    Ok((x, Tensor::from_vec(cs, count, dev)?))
}

/// The equilibrium dynamics' parameters and the readout.
struct Model {
    w: Var,
    u: Var,
    b: Var,
    readout: Linear,
}

impl Model {
    /// Named as linear layers' weights and biases, so that the PyTorch initialisation
    /// treats them as such (uniform in `±1/√fan_in`).
    fn new(width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            w: vb_var(&vb.pp("dynamics"), "weight", &[width, width])?,
            u: vb_var(&vb.pp("inject"), "weight", &[width, 2])?,
            b: vb_var(&vb.pp("inject"), "bias", &[width])?,
            readout: linear(width, 2, vb.pp("readout"))?,
        })
    }

    /// The steady state of the points `x` (`[B, 2]`) and the logits read from it.
    fn forward(
        &self,
        x: &Tensor,
        args: &Args,
        opts: &SolveOptions,
    ) -> candle_core::Result<(Tensor, Stats)> {
        let (w, u, b) = (self.w.clone(), self.u.clone(), self.b.clone());
        let inject = x.matmul(&u.as_tensor().t()?)?;
        let inject = inject.broadcast_add(b.as_tensor())?;
        let field = with_params(
            move |_t: f64, y: &Tensor| {
                (y.matmul(&contraction(w.as_tensor())?.t()?)? + &inject)?.tanh()? - y
            },
            vec![self.w.clone(), self.u.clone(), self.b.clone()],
        );
        let y0 = Tensor::zeros((x.dim(0)?, self.w.dim(0)?), x.dtype(), x.device())?;
        let ss = SteadyStateOptions::new(args.t_max);
        let (y, stats) = match args.gradient {
            GradientArg::Implicit => {
                let sol = odeint_steady_state_adjoint(&field, &y0, 0.0, opts, &ss)?;
                (sol.y, Stats::Implicit(sol.stats))
            }
            GradientArg::Backprop => {
                let sol = odeint(&field, &y0, &[0.0, args.horizon], opts)?;
                (sol.last()?, Stats::Backprop(sol.stats.nfe))
            }
        };
        Ok((self.readout.forward(&y)?, stats))
    }
}

/// `W = 0.9 V / √(1 + ‖V‖²_F)`: its Frobenius norm, and so its spectral norm, stays below
/// 0.9, so `y ↦ tanh(W y + u)` is a contraction and the dynamics have one stable steady
/// state whatever the training does (left free, `W` grew until the steady state was lost
/// within 80 iterations).
fn contraction(v: &Tensor) -> candle_core::Result<Tensor> {
    let norm = (v.sqr()?.sum_all()? + 1.0)?.sqrt()?;
    v.broadcast_div(&norm)? * 0.9
}

/// A `[shape]` parameter from the var builder: the `VarMap`'s own variable (initialised,
/// trained and checkpointed with the rest; `Var::from_tensor` of a variable is that
/// variable).
fn vb_var(vb: &VarBuilder, name: &str, shape: &[usize]) -> Result<Var> {
    Ok(Var::from_tensor(&vb.get(shape, name)?)?)
}

/// Counts of one forward pass.
enum Stats {
    Implicit(node_adjoint::SteadyStateAdjointStats),
    Backprop(usize),
}

impl Stats {
    fn forward(&self) -> usize {
        match self {
            Stats::Implicit(s) => s.forward().nfe,
            Stats::Backprop(n) => *n,
        }
    }
    fn backward(&self) -> usize {
        match self {
            Stats::Implicit(s) => s.backward().nfe,
            Stats::Backprop(_) => 0,
        }
    }
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if [
        args.iters,
        args.checkpoint_every,
        args.batch_size,
        args.width,
    ]
    .contains(&0)
        || args.stop_after_steps == Some(0)
    {
        bail!("--iters, --batch-size, --width, --checkpoint-every and --stop-after-steps must be positive");
    }
    if args.batch_size > args.train_size || args.test_size == 0 {
        bail!(
            "--batch-size {} must be at most --train-size {}, and --test-size positive",
            args.batch_size,
            args.train_size
        );
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if ![
        args.lr,
        args.rtol,
        args.atol,
        args.t_max,
        args.horizon,
        args.turns,
    ]
    .into_iter()
    .all(positive)
        || !args.noise.is_finite()
        || args.noise < 0.0
    {
        bail!("--lr, --rtol, --atol, --t-max, --horizon and --turns must be positive, --noise non-negative");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);

    let (train_x, train_c) = spirals(
        args.train_size,
        args.turns,
        args.noise,
        &mut Rng::new(args.seed ^ 0x7472_6169),
        &dev,
    )?;
    let (test_x, test_c) = spirals(
        args.test_size,
        args.turns,
        args.noise,
        &mut Rng::new(args.seed ^ 0x7465_7374),
        &dev,
    )?;

    let varmap = VarMap::new();
    let model = Model::new(
        args.width,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let opts = SolveOptions::default()
        .method(args.method)
        .tolerances(args.rtol, args.atol)
        .jacobian(Jacobian::Batched);
    let plan = Plan {
        model: MODEL,
        out_dir: &args.out_dir,
        iters: args.iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr: args.lr,
        extra_json: format!(
            "\"gradient\":\"{:?}\",\"method\":\"{}\",",
            args.gradient, args.method
        ),
    };
    let mut run = Iterations::start(plan, &varmap, &dev)?;
    println!(
        "equilibrium model ({} parameters, width {}) on {dev:?}; {} training and {} held-out points, {} turns; {:?} gradients; iterations {}..{}",
        run.n_params,
        args.width,
        args.train_size,
        args.test_size,
        args.turns,
        args.gradient,
        run.start + 1,
        args.iters
    );
    let started = Instant::now();
    let first = run.start;
    for it in run.remaining() {
        let mut order: Vec<u32> = (0..args.train_size as u32).collect();
        run.rng.shuffle(&mut order);
        let idx = Tensor::new(&order[..args.batch_size], &dev)?;
        let (x, c) = (
            train_x.index_select(&idx, 0)?,
            train_c.index_select(&idx, 0)?,
        );
        let (logits, stats) = model.forward(&x, &args, &opts).map_err(explain)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &c)?;
        run.opt.backward_step(&loss).map_err(explain)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        let values = [
            ("loss", l),
            ("accuracy", accuracy(&logits, &c)?),
            ("nfe_f", stats.forward() as f64),
            ("nfe_b", stats.backward() as f64),
        ];
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let secs_per_iter = started.elapsed().as_secs_f64() / (args.iters - first).max(1) as f64;
    let (metrics_path, ckpt_path) = run.finish();

    // Held-out accuracy, at the steady state whatever the gradient mode.
    let eval = Args {
        gradient: GradientArg::Implicit,
        ..args
    };
    let (logits, _) = model.forward(&test_x, &eval, &opts).map_err(explain)?;
    let test_accuracy = accuracy(&logits, &test_c)?;
    println!(
        "held-out accuracy {:.1}%; {secs_per_iter:.3} s per iteration",
        100.0 * test_accuracy
    );
    write_summary(
        &eval.out_dir,
        &[
            ("model", format!("\"{MODEL}\"")),
            ("gradient", format!("\"{:?}\"", args.gradient)),
            ("iters", eval.iters.to_string()),
            ("seed", eval.seed.to_string()),
            ("test_accuracy", json_number(test_accuracy)),
            ("secs_per_iter", json_number(secs_per_iter)),
        ],
    )?;
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
        ("summary", eval.out_dir.join("summary.json").as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}

/// The fraction of `logits`' rows whose largest entry is at `classes`.
fn accuracy(logits: &Tensor, classes: &Tensor) -> Result<f64> {
    let right = logits
        .argmax(D::Minus1)?
        .eq(classes)?
        .to_dtype(DType::F64)?
        .mean_all()?;
    Ok(right.to_scalar::<f64>()?)
}

/// A solver failure with what to do about it.
fn explain(e: candle_core::Error) -> anyhow::Error {
    match SolverError::find(&e) {
        Some(SolverError::NoSteadyState { .. } | SolverError::MaxStepsExceeded { .. }) => {
            anyhow::anyhow!(
                "{e}\nthe learned dynamics no longer come to rest (their fixed point became unstable): try a smaller --lr, or a larger --t-max"
            )
        }
        _ => e.into(),
    }
}
