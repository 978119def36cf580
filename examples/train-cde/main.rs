//! Trains a neural CDE (Kidger et al. 2020) to tell clockwise spirals from anticlockwise
//! ones, as torchcde's `example/time_series_classification.py` and diffrax's `neural_cde.py`
//! do; with `--missing`, from irregularly sampled spirals.

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
use node_models::cde::{
    binary_cross_entropy_with_logits, fill_missing, spiral_directions, ControlPath, Interpolation,
    NeuralCde, NeuralCdeConfig, SpiralDirections,
};
use node_models::{Activation, Rng};
use node_solvers::{Method, SolveOptions, SolverError};
use std::path::PathBuf;
use std::process::ExitCode;

/// The checkpoint's model name.
const MODEL: &str = "neural-cde";

/// `--interpolation` choices.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum InterpolationArg {
    /// Straight lines between the observations.
    Linear,
    /// Hermite cubic with backward differences (torchcde's recommendation).
    Hermite,
    /// Natural cubic spline.
    Natural,
}

impl InterpolationArg {
    fn kind(self) -> Interpolation {
        match self {
            InterpolationArg::Linear => Interpolation::Linear,
            InterpolationArg::Hermite => Interpolation::Hermite,
            InterpolationArg::Natural => Interpolation::Natural,
        }
    }
}

/// `--activation` choices.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ActivationArg {
    Relu,
    Softplus,
    Tanh,
}

/// Train a neural CDE (Kidger et al. 2020) to classify spirals by their direction.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Training iterations (in total, counting resumed ones); each a minibatch drawn at
    /// random. The default is torchcde's example: 30 epochs of 4 batches.
    #[arg(long, default_value_t = 120)]
    iters: usize,
    /// Spirals per minibatch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Training spirals.
    #[arg(long, default_value_t = 128)]
    train_size: usize,
    /// Held-out spirals the accuracy is measured on.
    #[arg(long, default_value_t = 128)]
    test_size: usize,
    /// Observations per spiral, over t in [0, 4π].
    #[arg(long, default_value_t = 100)]
    length: usize,
    /// Standard deviation of the noise on the coordinates.
    #[arg(long, default_value_t = 0.01)]
    noise: f64,
    /// Drop this fraction of each spiral's points (time kept), filled in linearly before
    /// interpolation: irregular sampling.
    #[arg(long, default_value_t = 0.0)]
    missing: f64,
    /// How the path joins the observations.
    #[arg(long, value_enum, default_value = "hermite")]
    interpolation: InterpolationArg,
    /// Dimension of the hidden state z.
    #[arg(long, default_value_t = 8)]
    hidden: usize,
    /// Width of the field's hidden layers.
    #[arg(long, default_value_t = 128)]
    width: usize,
    /// Hidden layers of the field.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Activation of the field's hidden layers (torchcde's example: relu; diffrax's:
    /// softplus).
    #[arg(long, value_enum, default_value = "relu")]
    activation: ActivationArg,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// ODE method; a fixed-step one (rk4, …) takes one step per interval between the
    /// observations.
    #[arg(long, default_value = "dopri5")]
    method: Method,
    /// Relative tolerance (diffrax's example).
    #[arg(long, default_value_t = 1e-3)]
    rtol: f64,
    /// Absolute tolerance (diffrax's example).
    #[arg(long, default_value_t = 1e-6)]
    atol: f64,
    /// How the solve is differentiated (torchcde's default: the adjoint).
    #[arg(long, value_enum, default_value = "adjoint")]
    gradient: GradientArg,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Random seed (data, initialisation, minibatches).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, summary).
    #[arg(long, default_value = "runs/cde")]
    out_dir: PathBuf,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// Write the checkpoint and a metrics line every this many iterations.
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,
    /// Stop after this many iterations of this run, with a checkpoint (`--resume` goes on
    /// from there); SIGINT/SIGTERM stop the same way after the iteration in progress.
    #[arg(long)]
    stop_after_steps: Option<usize>,
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.iters == 0 || args.checkpoint_every == 0 || args.batch_size == 0 {
        bail!("--iters, --batch-size and --checkpoint-every must be positive");
    }
    if args.batch_size > args.train_size {
        bail!(
            "--batch-size {} is more than the {} training spirals",
            args.batch_size,
            args.train_size
        );
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if ![args.lr, args.rtol, args.atol].into_iter().all(positive) {
        bail!("--lr, --rtol and --atol must be positive numbers");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);

    // The data come from their own generators, so that a resumed run sees the same.
    let data = |n: usize, salt: u64| -> Result<SpiralDirections> {
        let mut rng = Rng::new(args.seed ^ salt);
        let mut d = spiral_directions(
            n,
            args.length,
            args.noise,
            args.missing,
            &mut rng,
            DType::F32,
            &dev,
        )?;
        if args.missing > 0.0 {
            d.x = fill_missing(&d.x, &d.knots)?;
        }
        Ok(d)
    };
    let train = data(args.train_size, 0x7261_696e)?;
    let test = data(args.test_size, 0x7465_7374)?;

    let cfg = NeuralCdeConfig {
        channels: 3,
        hidden: args.hidden,
        width: args.width,
        depth: args.depth,
        activation: match args.activation {
            ActivationArg::Relu => Activation::Relu,
            ActivationArg::Softplus => Activation::Softplus,
            ActivationArg::Tanh => Activation::Tanh,
        },
        outputs: 1,
        interpolation: args.interpolation.kind(),
    };
    let mut opts = SolveOptions::default()
        .method(args.method)
        .tolerances(args.rtol, args.atol);
    if !args.method.is_adaptive() {
        // One step per interval between observations.
        opts = opts.step_grid(train.knots.clone());
    }
    let gradient = args
        .gradient
        .gradient(args.rtol, args.atol, &args.checkpoint);
    let varmap = VarMap::new();
    let model = NeuralCde::new(
        &cfg,
        opts,
        gradient,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    // The paths of the whole sets, built once; a minibatch selects its spirals' pieces.
    let train_path = model.path(&train.x, &train.knots)?;
    let test_path = model.path(&test.x, &test.knots)?;
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
            "\"interpolation\":\"{}\",\"missing\":{},",
            cfg.interpolation.name(),
            args.missing
        ),
    };
    let mut run = Iterations::start(plan, &varmap, &dev)?;
    println!(
        "neural CDE ({} parameters) on {dev:?}; {} training and {} held-out spirals of {} points, {} paths{}; iterations {}..{}",
        run.n_params,
        args.train_size,
        args.test_size,
        args.length,
        cfg.interpolation.name(),
        if args.missing > 0.0 {
            format!(", {:.0}% of the points dropped", 100.0 * args.missing)
        } else {
            String::new()
        },
        run.start + 1,
        args.iters
    );
    for it in run.remaining() {
        // A minibatch drawn without replacement: the first batch_size of a shuffle of the
        // whole set (from the run's generator only, so that a resumed run draws the same).
        let mut order: Vec<u32> = (0..args.train_size as u32).collect();
        run.rng.shuffle(&mut order);
        let idx = Tensor::new(&order[..args.batch_size], &dev)?;
        let (logits, stats) = model.forward(&train_path.select(&idx)?).map_err(explain)?;
        let logits = logits.squeeze(1)?;
        let labels = train.labels.index_select(&idx, 0)?;
        let loss = binary_cross_entropy_with_logits(&logits, &labels)?;
        run.opt.backward_step(&loss).map_err(explain)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        let values = [
            ("loss", l),
            ("accuracy", accuracy(&logits, &labels)?),
            ("nfe_f", stats.nfe_forward as f64),
            ("nfe_b", stats.nfe_backward() as f64),
        ];
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics_path, ckpt_path) = run.finish();
    let (train_loss, train_acc) = evaluate(&model, &train_path, &train.labels)?;
    let (test_loss, test_acc) = evaluate(&model, &test_path, &test.labels)?;
    println!(
        "training spirals: loss {train_loss:.4}, accuracy {:.1}%; held-out spirals: loss {test_loss:.4}, accuracy {:.1}%",
        100.0 * train_acc,
        100.0 * test_acc
    );
    write_summary(
        &args.out_dir,
        &[
            ("model", format!("\"{MODEL}\"")),
            ("interpolation", format!("\"{}\"", cfg.interpolation.name())),
            ("missing", json_number(args.missing)),
            ("iters", args.iters.to_string()),
            ("seed", args.seed.to_string()),
            ("train_loss", json_number(train_loss)),
            ("train_accuracy", json_number(train_acc)),
            ("test_loss", json_number(test_loss)),
            ("test_accuracy", json_number(test_acc)),
        ],
    )?;
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
        ("summary", args.out_dir.join("summary.json").as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}

/// The fraction of `logits` on the side of 0 their label says.
fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let pred = logits.ge(0.0)?.to_dtype(labels.dtype())?;
    Ok(pred
        .eq(labels)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()? as f64)
}

/// Loss and accuracy over a whole set, in pieces of 256 spirals, without a graph.
fn evaluate(model: &NeuralCde, path: &ControlPath, labels: &Tensor) -> Result<(f64, f64)> {
    let n = path.batch();
    let (mut loss, mut right) = (0.0, 0.0);
    for start in (0..n).step_by(256) {
        let len = 256.min(n - start);
        let idx = Tensor::arange(start as u32, (start + len) as u32, &Device::Cpu)?
            .to_device(labels.device())?;
        let (logits, _) = model.forward(&path.select(&idx)?.detach())?;
        let logits = logits.squeeze(1)?.detach();
        let y = labels.narrow(0, start, len)?;
        loss +=
            binary_cross_entropy_with_logits(&logits, &y)?.to_scalar::<f32>()? as f64 * len as f64;
        right += accuracy(&logits, &y)? * len as f64;
    }
    Ok((loss / n as f64, right / n as f64))
}

/// A solver failure with what to do about it.
fn explain(e: candle_core::Error) -> anyhow::Error {
    match SolverError::find(&e) {
        Some(SolverError::MaxStepsExceeded { .. } | SolverError::StepSizeTooSmall { .. }) => {
            anyhow::anyhow!(
                "{e}\nthe learned field became stiff; try a smaller --lr or looser --rtol/--atol"
            )
        }
        _ => e.into(),
    }
}
