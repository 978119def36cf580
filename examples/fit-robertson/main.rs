//! Fits the three rate constants of Robertson's stiff kinetics to noisy observations, by
//! gradient descent through an implicit solver (kvaerno5) with the interpolated adjoint: the
//! parameter-estimation problem of scientific machine learning, on a system an explicit
//! solver cannot integrate and the paper's (backsolve) adjoint cannot differentiate.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use candle_nn::{Init, Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{pick_device, print_outputs, DeviceArg};
use iterations::{Iterations, Plan};
use node_adjoint::{odeint_adjoint, with_params, AdjointOptions, AdjointState};
use node_models::Rng;
use node_solvers::problems::Robertson;
use node_solvers::{odeint, Method, SolveOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// The checkpoint's model name.
const MODEL: &str = "robertson";

/// `--adjoint` choices.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum AdjointArg {
    /// y read from the forward solve's dense output: stable on stiff problems.
    Interpolated,
    /// y integrated backwards with the adjoint (the paper's): fails here, shown for the record.
    Backsolve,
}

/// Fit Robertson's rate constants (k1, k2, k3) = (0.04, 3e7, 1e4) from a wrong first guess.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Adam iterations (in total, counting resumed ones).
    #[arg(long, default_value_t = 200)]
    iters: usize,
    /// Adam's learning rate, on the logarithms of the rates.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// The first guess: the true rates times these factors (`--resume` ignores it).
    #[arg(long, value_delimiter = ',', default_values_t = [3.0, 0.3, 3.0])]
    guess: Vec<f64>,
    /// Observations: this many log-spaced times from 1e-5 to 1e5.
    #[arg(long, default_value_t = 24)]
    observations: usize,
    /// Relative noise of the observations (standard deviation).
    #[arg(long, default_value_t = 0.01)]
    noise: f64,
    /// The solver (an implicit one: the problem is stiff).
    #[arg(long, default_value = "kvaerno5")]
    method: Method,
    /// rtol of the forward and reverse solves (atol = rtol · 1e-6: y2 is ~1e-5 and below).
    #[arg(long, default_value_t = 1e-7)]
    rtol: f64,
    /// How the adjoint gets the forward state.
    #[arg(long, value_enum, default_value = "interpolated")]
    adjoint: AdjointArg,
    /// Random seed (the observations' noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics).
    #[arg(long, default_value = "runs/robertson")]
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

/// Robertson's field with rates `k = k_ref ⊙ exp(u)`, `u` the trained log-factors.
fn field(u: &Tensor, k_ref: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    Robertson::field_with_rates(&(k_ref * u.exp()?)?, y)
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.iters == 0 || args.checkpoint_every == 0 || args.observations < 2 {
        bail!("--iters and --checkpoint-every must be positive, --observations at least 2");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    if args.guess.len() != 3 {
        bail!(
            "--guess needs 3 factors, one per rate, got {}",
            args.guess.len()
        );
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !(positive(args.lr) && positive(args.rtol) && args.guess.iter().all(|&g| positive(g))) {
        bail!("--lr, --rtol and the --guess factors must be positive numbers");
    }
    if !(args.noise.is_finite() && args.noise >= 0.0) {
        bail!("--noise must be a number ≥ 0");
    }
    let dev = pick_device(args.device)?;
    let truth = Robertson::default().rates;
    let opts = SolveOptions::default()
        .method(args.method)
        .tolerances(args.rtol, args.rtol * 1e-6);
    let adj = AdjointOptions::default().state(match args.adjoint {
        AdjointArg::Interpolated => AdjointState::Interpolated,
        AdjointArg::Backsolve => AdjointState::Backsolve,
    });

    // The observations: the true solution, tightly solved, with relative noise from a
    // generator of their own (the same on resume).
    let n = args.observations;
    let mut ts = vec![0.0];
    ts.extend((0..n).map(|i| 10f64.powf(-5.0 + 10.0 * i as f64 / (n - 1) as f64)));
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], &dev)?;
    let exact_rates = Tensor::new(&truth, &dev)?;
    let zero = Tensor::zeros(3, DType::F64, &dev)?;
    let exact = |_t: f64, y: &Tensor| field(&zero, &exact_rates, y);
    let tight = SolveOptions::default()
        .method(Method::Kvaerno5)
        .tolerances(1e-10, 1e-16);
    let clean = odeint(&exact, &y0, &ts, &tight)?.ys.narrow(0, 1, n)?;
    let noise =
        Rng::new(args.seed ^ 0x0b5e).normal_tensor(&[n, 3], 0.0, args.noise, DType::F64, &dev)?;
    let observed = (&clean * noise.affine(1.0, 1.0)?)?;
    // Each species' residuals scaled by its largest observation (y2 is 1e4 times smaller).
    let scale = observed.abs()?.max(0)?.unsqueeze(0)?;

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
    let u = vb.get_with_hints(3, "log_factor", Init::Const(0.0))?;
    let u_var = common::var(&varmap, "log_factor")?;
    // The rates are trained as log-factors of the textbook values (any fixed reference
    // would do: it is the unit); the first guess is where those factors start.
    let k_ref = Tensor::new(&truth, &dev)?;
    let (uu, kr) = (u.clone(), k_ref.clone());
    let f = with_params(
        move |_t: f64, y: &Tensor| field(&uu, &kr, y),
        vec![u_var.clone()],
    );
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
            "\"method\":\"{}\",\"rtol\":{},\"adjoint\":\"{:?}\",\"noise\":{},",
            args.method, args.rtol, args.adjoint, args.noise
        ),
    };
    let mut run = Iterations::start(plan, &varmap, &dev)?;
    if run.start == 0 {
        let guess: Vec<f64> = args.guess.iter().map(|g| g.ln()).collect();
        u_var.set(&Tensor::new(guess, &dev)?)?;
    }
    println!(
        "Robertson's rates from {:?} × the truth, {n} observations with {}% noise, {} with the {:?} adjoint, on {dev:?}; iterations {}..{}",
        args.guess,
        100.0 * args.noise,
        args.method,
        args.adjoint,
        run.start + 1,
        args.iters
    );
    let rates = |u: &Tensor| -> Result<Vec<f64>> { Ok((&k_ref * u.exp()?)?.to_vec1::<f64>()?) };
    for it in run.remaining() {
        let sol = odeint_adjoint(&f, &y0, &ts, &opts, &adj)?;
        let pred = sol.ys.narrow(0, 1, n)?;
        let loss = ((pred - &observed)?.broadcast_div(&scale)?)
            .sqr()?
            .mean_all()?;
        run.opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f64>()?;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        let k = rates(&u)?;
        let (fwd, bwd) = (sol.stats.forward(), sol.stats.backward());
        let values = [
            ("rmse", l.sqrt()),
            ("k1", k[0]),
            ("k2", k[1]),
            ("k3", k[2]),
            ("nfe_f", fwd.nfe as f64),
            ("nfe_b", bwd.nfe as f64),
        ];
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics, ckpt) = run.finish();
    let k = rates(&u)?;
    println!("| rate | truth | first guess | fitted | relative error |");
    println!("|---|---|---|---|---|");
    for i in 0..3 {
        println!(
            "| k{} | {:e} | {:e} | {:.6e} | {:.1e} |",
            i + 1,
            truth[i],
            truth[i] * args.guess[i],
            k[i],
            (k[i] - truth[i]).abs() / truth[i]
        );
    }
    print_outputs(&[
        ("metrics", metrics.as_path()),
        ("checkpoint", ckpt.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}
