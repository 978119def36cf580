//! Learns the reaction of a reaction–diffusion system from snapshots of it: the Brusselator
//! with diffusion (Hairer & Wanner's `BRUSS`), the diffusion known and the reaction a
//! network applied at each grid point (a "universal differential equation", Rackauckas et
//! al. 2020). The diffusion is stiff, the network is not: an IMEX method (kencarp4, the
//! default) solves the diffusion implicitly with its Jacobian in closed form and only
//! evaluates the network, whose gradients come from the interpolated adjoint, split the same
//! way. `--method kvaerno5` (all implicit: the network's Jacobian by differences),
//! `--method dopri5` (explicit: steps held by the diffusion's stiffness) and `--method rkc`
//! (explicit, Runge–Kutta–Chebyshev: stages grow with the square root of the stiffness) are
//! the alternatives it is measured against. `--dims 2` puts the system on an `n × n` grid,
//! where the Jacobian (`2n² × 2n²` per trajectory) is too large for the implicit methods and
//! rkc (the default there) solves it.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{
    json_number, pick_device, print_outputs, write_summary, CheckpointArgs, DeviceArg, GradientArg,
};
use iterations::{Iterations, Plan};
use node_adjoint::ParamVectorField;
use node_adjoint::{odeint_adjoint, AdjointOptions};
use node_models::{Activation, Diffusion1d, Diffusion2d, PointwiseReaction, Rng};
use node_solvers::problems::Brusselator;
use node_solvers::{odeint, Jacobian, Method, SolveOptions, SolverError, Split, VectorField};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// The checkpoint's model name, on a 1-D grid and on a 2-D one.
const MODEL: [&str; 2] = ["reaction-diffusion", "reaction-diffusion-2d"];

/// Where the Brusselator's states sit: its fixed point `(u, v) = (1, 3)`, also the values at
/// both ends of the grid.
const CENTER: [f64; 2] = [1.0, 3.0];

/// Learn the Brusselator's reaction from snapshots of the reaction–diffusion system.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Adam iterations (in total, counting resumed ones); each a minibatch of trajectories.
    /// Default: 1500 on a line, 300 on a square.
    #[arg(long)]
    iters: Option<usize>,
    /// Trajectories per minibatch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Training trajectories (initial conditions drawn at random).
    #[arg(long, default_value_t = 32)]
    train_size: usize,
    /// Held-out trajectories the rollout error is measured on.
    #[arg(long, default_value_t = 16)]
    test_size: usize,
    /// Interior grid points: `N` on a line (the state is `[2, N]`; default 64), or `n` along
    /// each side of a square (`--dims 2`: `[2, n²]`; default 24). The diffusion's stiffness
    /// grows as their square.
    #[arg(long)]
    points: Option<usize>,
    /// The grid's dimensions: 1 (a line) or 2 (a square).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    dims: u8,
    /// Diffusion coefficient α of both species (Hairer & Wanner's 1/50).
    #[arg(long, default_value_t = 0.02)]
    alpha: f64,
    /// Length of each trajectory in time.
    #[arg(long, default_value_t = 2.0)]
    horizon: f64,
    /// Snapshots per trajectory, evenly spaced, the initial state included.
    #[arg(long, default_value_t = 11)]
    observations: usize,
    /// Standard deviation of the noise on the snapshots.
    #[arg(long, default_value_t = 0.01)]
    noise: f64,
    /// Width of the reaction network's hidden layers.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Hidden layers of the reaction network.
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// ODE method: an IMEX one (kencarp3/4/5) splits the field, the diffusion implicit;
    /// any other solves the sum. Default: kencarp4 on a line, rkc on a square (where the
    /// implicit methods are refused).
    #[arg(long)]
    method: Option<Method>,
    /// Relative tolerance of the forward and reverse solves.
    #[arg(long, default_value_t = 1e-4)]
    rtol: f64,
    /// Absolute tolerance of the forward and reverse solves.
    #[arg(long, default_value_t = 1e-6)]
    atol: f64,
    /// How the solve is differentiated: the diffusion is stiff, so the adjoint solved
    /// backwards (`adjoint`) meets growing modes; `interpolated` reads y from the forward
    /// solve instead.
    #[arg(long, value_enum, default_value = "interpolated")]
    gradient: GradientArg,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Random seed (data, initialisation, minibatches).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, summary); default `runs/reaction-diffusion`
    /// (`runs/reaction-diffusion-2d` with `--dims 2`).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// Write the checkpoint and a metrics line every this many iterations.
    #[arg(long, default_value_t = 25)]
    checkpoint_every: usize,
    /// Stop after this many iterations of this run, with a checkpoint (`--resume` goes on
    /// from there); SIGINT/SIGTERM stop the same way after the iteration in progress.
    #[arg(long)]
    stop_after_steps: Option<usize>,
}

/// `count` initial states `[count, 2, N]`: `u = 1 + Σ_k a_k sin kπx`, `v = 3 + Σ_k b_k sin kπx`
/// (k = 1, 2, 3; `a_k`, `b_k` uniform in `±0.6/k`), which meet the end values. On an `n × n`
/// grid (`dims` 2; `N = n²`, row by row), `Σ_(k,l) a_kl sin kπx sin lπy` (k, l = 1, 2; `a_kl`
/// uniform in `±0.6/(kl)`).
fn initial_states(
    count: usize,
    side: usize,
    dims: u8,
    rng: &mut Rng,
    dev: &Device,
) -> Result<Tensor> {
    let points = side.pow(dims as u32);
    let mut all = Vec::with_capacity(count * 2 * points);
    let sine =
        |k: usize, i: usize| (k as f64 * std::f64::consts::PI * i as f64 / (side + 1) as f64).sin();
    for _ in 0..count {
        for center in CENTER {
            if dims == 1 {
                let amps: Vec<f64> = (1..=3)
                    .map(|k| (rng.uniform() * 2.0 - 1.0) * 0.6 / k as f64)
                    .collect();
                for i in 1..=side {
                    let wave: f64 = amps
                        .iter()
                        .enumerate()
                        .map(|(k, a)| a * sine(k + 1, i))
                        .sum();
                    all.push(center + wave);
                }
            } else {
                let modes = [(1, 1), (1, 2), (2, 1), (2, 2)];
                let amps: Vec<f64> = modes
                    .iter()
                    .map(|(k, l)| (rng.uniform() * 2.0 - 1.0) * 0.6 / (k * l) as f64)
                    .collect();
                for p in 0..points {
                    let (i, j) = (p / side + 1, p % side + 1);
                    let wave: f64 = modes
                        .iter()
                        .zip(&amps)
                        .map(|(&(k, l), a)| a * sine(k, i) * sine(l, j))
                        .sum();
                    all.push(center + wave);
                }
            }
        }
    }
    Ok(Tensor::from_vec(all, (count, 2, points), &Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_device(dev)?)
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    let iters = args
        .iters
        .unwrap_or(if args.dims == 1 { 1500 } else { 300 });
    if [iters, args.checkpoint_every, args.batch_size].contains(&0)
        || args.stop_after_steps == Some(0)
    {
        bail!("--iters, --batch-size, --checkpoint-every and --stop-after-steps must be positive");
    }
    if args.batch_size > args.train_size {
        bail!(
            "--batch-size {} is more than the {} training trajectories",
            args.batch_size,
            args.train_size
        );
    }
    let side = args.points.unwrap_or(if args.dims == 1 { 64 } else { 24 });
    if side < 2 || args.observations < 2 || args.test_size == 0 {
        bail!("--points and --observations must be at least 2, --test-size positive");
    }
    let method = args.method.unwrap_or(if args.dims == 1 {
        Method::KenCarp4
    } else {
        Method::Rkc
    });
    if args.dims == 2 && method.is_implicit() {
        bail!(
            "--method {method} on a 2-D grid: its Jacobian ({m} × {m} per trajectory) is too large for an implicit method's dense LU; use rkc (the default with --dims 2) or an explicit method",
            m = 2 * side * side
        );
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let all_positive = [args.lr, args.rtol, args.atol, args.horizon, args.alpha]
        .into_iter()
        .all(positive);
    if !all_positive || !args.noise.is_finite() || args.noise < 0.0 {
        bail!("--lr, --rtol, --atol, --horizon and --alpha must be positive, --noise non-negative");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);

    let ts: Vec<f64> = (0..args.observations)
        .map(|i| args.horizon * i as f64 / (args.observations - 1) as f64)
        .collect();
    if args.dims == 1 {
        let diffusion = Diffusion1d::new(side, &[args.alpha; 2], &CENTER)?;
        let stiffness = diffusion.stiffness();
        train(&args, iters, side, method, diffusion, stiffness, &ts, &dev)
    } else {
        let diffusion = Diffusion2d::new(side, &[args.alpha; 2], &CENTER)?;
        let stiffness = diffusion.stiffness();
        train(&args, iters, side, method, diffusion, stiffness, &ts, &dev)
    }
}

/// Trains the reaction network beside `diffusion` (on a grid of `side` points a side) with
/// `method` up to `iters` iterations, and measures it on the held-out trajectories.
#[allow(clippy::too_many_arguments)]
fn train<D>(
    args: &Args,
    iters: usize,
    side: usize,
    method: Method,
    diffusion: D,
    stiffness: f64,
    ts: &[f64],
    dev: &Device,
) -> Result<ExitCode>
where
    D: ParamVectorField + Clone + Send + Sync + 'static,
{
    let two_d = args.dims == 2;
    let model_name = MODEL[usize::from(two_d)];
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(model_name));
    let points = side.pow(args.dims as u32);
    // The data: the true system solved tightly, in f32 as the model; from their own
    // generators, so that a resumed run sees the same. On a line kencarp5 (the diffusion
    // implicit); on a square rkc.
    let bruss = Brusselator {
        points,
        alpha: args.alpha,
    };
    let true_reaction = bruss.reaction();
    let truth = Split::new(&true_reaction, diffusion.clone());
    let exact_opts = if two_d {
        SolveOptions::default()
            .method(Method::Rkc)
            .tolerances(1e-7, 1e-7)
    } else {
        SolveOptions::default()
            .method(Method::KenCarp5)
            .tolerances(1e-6, 1e-6)
            .jacobian(Jacobian::Batched)
    };
    let data = |count: usize, salt: u64| -> Result<(Tensor, Tensor)> {
        let mut rng = Rng::new(args.seed ^ salt);
        let y0 = initial_states(count, side, args.dims, &mut rng, dev)?;
        let ys = odeint(&truth, &y0, ts, &exact_opts)?.ys;
        let noise = rng.normal_tensor(ys.dims(), 0.0, args.noise, DType::F32, dev)?;
        Ok((ys.clone(), (ys + noise)?))
    };
    let (_, train_obs) = data(args.train_size, 0x7472_6169)?;
    let (test_clean, _) = data(args.test_size, 0x7465_7374)?;

    let varmap = VarMap::new();
    let reaction = PointwiseReaction::new(
        &CENTER,
        args.width,
        args.depth,
        Activation::Tanh,
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
    )?;
    let model = Split::new(reaction, diffusion.clone());
    let opts = SolveOptions::default()
        .method(method)
        .tolerances(args.rtol, args.atol)
        .jacobian(Jacobian::Batched);
    let gradient = args
        .gradient
        .gradient(args.rtol, args.atol, &args.checkpoint);
    let plan = Plan {
        model: model_name,
        out_dir: &out_dir,
        iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr: args.lr,
        extra_json: format!("\"method\":\"{method}\",\"points\":{side},"),
    };
    let mut run = Iterations::start(plan, &varmap, dev)?;
    let grid = if two_d {
        format!("a {side} × {side} grid")
    } else {
        format!("{side} points")
    };
    println!(
        "reaction network ({} parameters) on {dev:?}; {} training and {} held-out trajectories on {grid} (diffusion's stiffness {stiffness:.0}), {} snapshots over t ∈ [0, {}]; {}, {:?} gradients; iterations {}..{}",
        run.n_params,
        args.train_size,
        args.test_size,
        args.observations,
        args.horizon,
        if method.is_imex() {
            format!("{method} (reaction explicit, diffusion implicit)")
        } else {
            method.to_string()
        },
        args.gradient,
        run.start + 1,
        iters
    );
    let started = Instant::now();
    let first = run.start;
    for it in run.remaining() {
        let mut order: Vec<u32> = (0..args.train_size as u32).collect();
        run.rng.shuffle(&mut order);
        let idx = Tensor::new(&order[..args.batch_size], dev)?;
        let obs = train_obs.index_select(&idx, 1)?;
        let y0 = obs.get(0)?;
        let (pred, stats) = gradient.solve(&model, &y0, ts, &opts).map_err(explain)?;
        let loss = (pred.narrow(0, 1, ts.len() - 1)? - obs.narrow(0, 1, ts.len() - 1)?)?
            .sqr()?
            .mean_all()?;
        run.opt.backward_step(&loss).map_err(explain)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        let values = [
            ("loss", l),
            ("nfe_f", stats.nfe_forward as f64),
            ("nfe_explicit_f", stats.explicit_nfe_forward as f64),
            ("nfe_b", stats.nfe_backward() as f64),
        ];
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let secs_per_iter = started.elapsed().as_secs_f64() / (iters - first).max(1) as f64;
    let (metrics_path, ckpt_path) = run.finish();

    // Held-out: the learned system rolled out from the clean initial states, against the
    // truth; the diffusion alone as the baseline; the reaction itself on the held-out states.
    // (The adjoint's forward solve, for the values alone: it solves without a graph, which
    // an implicit method needs.)
    let y0 = test_clean.get(0)?;
    let ys = odeint_adjoint(&model, &y0, ts, &opts, &AdjointOptions::default())
        .map_err(explain)?
        .ys;
    let learned = rms(&(ys - &test_clean)?)?;
    let ys = odeint(&diffusion, &y0, ts, &opts).map_err(explain)?.ys;
    let diffusion_only = rms(&(ys - &test_clean)?)?;
    let states = test_clean.flatten_to(1)?;
    let want = true_reaction(0.0, &states)?;
    let got = model.explicit().eval(0.0, &states)?;
    let reaction_error = rms(&(got - &want)?)? / rms(&want)?;
    println!(
        "held-out rollouts: RMS error {learned:.4} (the diffusion alone: {diffusion_only:.4}); the learned reaction on the held-out states: relative RMS error {:.1}%; {secs_per_iter:.3} s per iteration",
        100.0 * reaction_error
    );
    write_summary(
        &out_dir,
        &[
            ("model", format!("\"{model_name}\"")),
            ("method", format!("\"{method}\"")),
            ("points", side.to_string()),
            ("iters", iters.to_string()),
            ("seed", args.seed.to_string()),
            ("test_rmse", json_number(learned)),
            ("diffusion_only_rmse", json_number(diffusion_only)),
            ("reaction_relative_error", json_number(reaction_error)),
            ("secs_per_iter", json_number(secs_per_iter)),
        ],
    )?;
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
        ("summary", out_dir.join("summary.json").as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}

/// Root mean square of `x`.
fn rms(x: &Tensor) -> Result<f64> {
    Ok((x
        .to_dtype(DType::F64)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f64>()?)
    .sqrt())
}

/// A solver failure with what to do about it.
fn explain(e: candle_core::Error) -> anyhow::Error {
    match SolverError::find(&e) {
        Some(SolverError::MaxStepsExceeded { .. } | SolverError::StepSizeTooSmall { .. }) => {
            anyhow::anyhow!(
                "{e}\nthe learned system became stiff or the adjoint solved backwards met the diffusion's growing modes; try --gradient interpolated, a smaller --lr or looser --rtol/--atol"
            )
        }
        Some(SolverError::NotDifferentiable { .. }) => anyhow::anyhow!(
            "{e}\nan implicit or IMEX method cannot be differentiated by backprop: use --gradient interpolated or adjoint"
        ),
        _ => e.into(),
    }
}
