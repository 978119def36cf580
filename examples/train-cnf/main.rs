//! Trains a continuous normalizing flow by maximum likelihood on two concentric circles, as
//! torchdiffeq's `examples/cnf.py` does (`--model planar`, the paper's field), or as FFJORD's
//! `train_toy.py` does (`--model ffjord`, a free-form MLP field; `--data` picks one of its toy
//! densities), and draws the learned density and samples.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::{Parser, ValueEnum};
use common::{pick_device, print_outputs, CheckpointArgs, DeviceArg, GradientArg};
use iterations::{Iterations, Plan};
use node_models::cnf::{two_circles, Cnf, CnfConfig, RegularizedLogProb};
use node_models::ffjord::{Activation, Ffjord, FfjordConfig, Noise, Trace};
use node_models::toy::Toy;
use node_models::{BlockStats, Rng};
use node_solvers::{Method, SolveOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `--model` choices.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum ModelArg {
    /// The paper's field (§4, eq. 10): weights from a hypernetwork of t, trace in closed form.
    Planar,
    /// FFJORD's free-form field (Grathwohl et al. 2019): ConcatSquash MLP layers, trace from
    /// Jacobian–vector products.
    Ffjord,
}

impl ModelArg {
    /// The checkpoint's model name: a flow's checkpoint is refused by the other flow, by the
    /// MNIST trainer and back.
    fn name(self) -> &'static str {
        match self {
            ModelArg::Planar => "cnf",
            ModelArg::Ffjord => "ffjord",
        }
    }
}

/// `--trace` choices (FFJORD).
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum TraceArg {
    /// The exact trace, from D Jacobian–vector products (D = 2 here).
    Exact,
    /// Hutchinson's estimate with ±1 noise, one product, drawn afresh each iteration.
    Rademacher,
    /// Hutchinson's estimate with N(0, 1) noise.
    Gaussian,
}

/// `--data` choices.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum DataArg {
    /// torchdiffeq's example: circles of radius 1 and 0.5, `--noise` added.
    TwoCircles,
    /// FFJORD's toy densities (`lib/toy_data.py`), in [-4, 4]².
    Circles,
    Moons,
    #[value(name = "8gaussians")]
    EightGaussians,
    Pinwheel,
    #[value(name = "2spirals")]
    TwoSpirals,
    Checkerboard,
}

impl DataArg {
    fn sample(self, n: usize, noise: f64, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
        let toy = match self {
            DataArg::TwoCircles => return Ok(two_circles(n, noise, rng, DType::F32, dev)?),
            DataArg::Circles => Toy::Circles,
            DataArg::Moons => Toy::Moons,
            DataArg::EightGaussians => Toy::EightGaussians,
            DataArg::Pinwheel => Toy::Pinwheel,
            DataArg::TwoSpirals => Toy::TwoSpirals,
            DataArg::Checkerboard => Toy::Checkerboard,
        };
        Ok(toy.sample(n, rng, DType::F32, dev)?)
    }

    /// The half-width of the square the picture shows.
    fn half_width(self) -> f64 {
        if self == DataArg::TwoCircles {
            1.5
        } else {
            4.0
        }
    }
}

/// `--activation` choices (FFJORD).
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum ActivationArg {
    Tanh,
    Softplus,
}

/// Train a continuous normalizing flow (Chen et al. 2018, §4; or FFJORD) on two circles or
/// one of FFJORD's toy densities.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The flow's field.
    #[arg(long, value_enum, default_value = "planar")]
    model: ModelArg,
    /// Training iterations (in total, counting resumed ones).
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Points per iteration, drawn afresh from the target each time.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Hidden units M of the planar field [default: 64].
    #[arg(long)]
    width: Option<usize>,
    /// Hidden units of the planar field's hypernetwork t ↦ weights [default: 32].
    #[arg(long)]
    hidden: Option<usize>,
    /// Widths of the FFJORD field's hidden layers, comma-separated [default: 64,64,64].
    #[arg(long, value_delimiter = ',')]
    hidden_dims: Option<Vec<usize>>,
    /// The FFJORD field's activation [default: tanh].
    #[arg(long, value_enum)]
    activation: Option<ActivationArg>,
    /// How FFJORD takes the trace: exactly or by Hutchinson's estimator [default: exact].
    #[arg(long, value_enum)]
    trace: Option<TraceArg>,
    /// End time t₁ of the flow [default: 10 (planar), 0.5 (ffjord)].
    #[arg(long)]
    t1: Option<f64>,
    /// Learn FFJORD's end time (its `train_T`): t₁ · exp(s), starting at --t1; the metrics
    /// record it.
    #[arg(long)]
    train_t1: bool,
    /// rtol = atol of dopri5, forward and reverse.
    #[arg(long, default_value_t = 1e-5)]
    tol: f64,
    /// How the solve is differentiated.
    #[arg(long, value_enum, default_value = "adjoint")]
    gradient: GradientArg,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Weight λ_K of the kinetic-energy regularizer ∫‖f‖² dt (RNODE, Finlay et al. 2020):
    /// straighter trajectories, fewer solver steps. 0: off.
    #[arg(long, default_value_t = 0.0)]
    kinetic: f64,
    /// Weight λ_J of the Jacobian regularizer ∫‖∂f/∂z‖²_F dt (RNODE; exact for the planar
    /// field and for FFJORD's exact trace, Hutchinson's estimate ‖(∂f/∂z)ε‖² with its noise).
    /// 0: off.
    #[arg(long, default_value_t = 0.0)]
    jacobian: f64,
    /// The data: torchdiffeq's two circles, or one of FFJORD's toy densities.
    #[arg(long, value_enum, default_value = "two-circles")]
    data: DataArg,
    /// Standard deviation of the noise added to the two circles (`--data two-circles`).
    #[arg(long, default_value_t = 0.06)]
    noise: f64,
    /// Random seed (initialisation and data).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, picture) [default: runs/cnf or runs/ffjord].
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// Write the checkpoint and a metrics line every this many iterations.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Stop after this many iterations of this run, with a checkpoint (`--resume` goes on
    /// from there); SIGINT/SIGTERM stop the same way after the iteration in progress.
    #[arg(long)]
    stop_after_steps: Option<usize>,
    /// FFJORD: solve each point as a problem of its own, with its own steps and error
    /// control (`Ffjord::log_prob_independent`), in training and for the held-out NLL: a
    /// point's log-likelihood then does not depend on the rest of its batch. With
    /// `--gradient adjoint` or `backprop`; not with the regularizers or `--train-t1`.
    #[arg(long)]
    per_point: bool,
    /// Held-out points for the final negative log-likelihood (0: skip it).
    #[arg(long, default_value_t = 4096)]
    test_points: usize,
    /// Side in pixels of each panel of `density.png` (0: no picture).
    #[arg(long, default_value_t = 200)]
    image_size: usize,
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.iters == 0 || args.batch_size == 0 || args.checkpoint_every == 0 {
        bail!("--iters, --batch-size and --checkpoint-every must be positive");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !(positive(args.tol) && positive(args.lr)) {
        bail!("--tol and --lr must be positive numbers");
    }
    let weight = |v: f64| v.is_finite() && v >= 0.0;
    if !(weight(args.kinetic) && weight(args.jacobian)) {
        bail!("--kinetic and --jacobian must be numbers ≥ 0");
    }
    if !weight(args.noise) {
        bail!("--noise must be a standard deviation ≥ 0");
    }
    let regularize = args.kinetic > 0.0 || args.jacobian > 0.0;
    let wrong_model = match args.model {
        ModelArg::Planar => vec![
            ("--per-point", args.per_point),
            ("--hidden-dims", args.hidden_dims.is_some()),
            ("--activation", args.activation.is_some()),
            ("--trace", args.trace.is_some()),
            ("--train-t1", args.train_t1),
        ],
        ModelArg::Ffjord => vec![
            ("--width", args.width.is_some()),
            ("--hidden", args.hidden.is_some()),
        ],
    };
    if args.per_point {
        if regularize || args.train_t1 {
            bail!(
                "--per-point takes neither the regularizers (--kinetic, --jacobian) nor --train-t1"
            );
        }
        if !matches!(args.gradient, GradientArg::Adjoint | GradientArg::Backprop) {
            bail!("--per-point takes --gradient adjoint or backprop");
        }
    }
    if let Some((flag, _)) = wrong_model.iter().find(|(_, given)| *given) {
        let model = args.model.to_possible_value().expect("no skipped variants");
        bail!("{flag} is not an option of --model {}", model.get_name());
    }
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(args.model.name()));
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);
    let opts = SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(args.tol, args.tol);
    let gradient = args.gradient.gradient(args.tol, args.tol, &args.checkpoint);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let flow = match args.model {
        ModelArg::Planar => {
            let cfg = CnfConfig::default();
            let cfg = CnfConfig {
                width: args.width.unwrap_or(cfg.width),
                hidden: args.hidden.unwrap_or(cfg.hidden),
                t1: args.t1.unwrap_or(cfg.t1),
                ..cfg
            };
            Flow::Planar(Cnf::new(&cfg, opts, gradient, vb)?)
        }
        ModelArg::Ffjord => {
            let cfg = FfjordConfig::default();
            let cfg = FfjordConfig {
                hidden: args.hidden_dims.clone().unwrap_or(cfg.hidden),
                activation: match args.activation {
                    Some(ActivationArg::Softplus) => Activation::Softplus,
                    Some(ActivationArg::Tanh) => Activation::Tanh,
                    None => cfg.activation,
                },
                t1: args.t1.unwrap_or(cfg.t1),
                train_t1: args.train_t1,
                ..cfg
            };
            let trace = args.trace.unwrap_or(TraceArg::Exact);
            Flow::Ffjord(
                Ffjord::new(&cfg, opts, gradient, vb)?,
                trace,
                args.per_point,
            )
        }
    };
    let plan = Plan {
        model: args.model.name(),
        out_dir: &out_dir,
        iters: args.iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr: args.lr,
        extra_json: format!(
            "\"batch_size\":{},\"kinetic_weight\":{},\"jacobian_weight\":{},\"data\":\"{:?}\",\"per_point\":{},",
            args.batch_size, args.kinetic, args.jacobian, args.data, args.per_point
        ),
    };
    let mut run = Iterations::start(plan, &varmap, &dev)?;
    let n_params = run.n_params;
    println!(
        "{} ({n_params} parameters) on {dev:?}; iterations {}..{}",
        flow.describe(),
        run.start + 1,
        args.iters
    );
    for it in run.remaining() {
        let x = args
            .data
            .sample(args.batch_size, args.noise, &mut run.rng, &dev)?;
        let mut values = vec![];
        let stats = if regularize {
            let r = flow.log_prob_regularized(&x, &mut run.rng)?;
            let nll = r.log_p.mean_all()?.neg()?;
            let (kinetic, jacobian) = (r.kinetic.mean_all()?, r.jacobian.mean_all()?);
            let loss = ((&nll + kinetic.affine(args.kinetic, 0.0)?)?
                + jacobian.affine(args.jacobian, 0.0)?)?;
            run.opt.backward_step(&loss)?;
            for (name, v) in [
                ("nll", &nll),
                ("kinetic", &kinetic),
                ("jacobian", &jacobian),
            ] {
                values.push((name, v.to_scalar::<f32>()? as f64));
            }
            r.stats
        } else {
            let (lp, stats) = flow.log_prob_with_stats(&x, &mut run.rng)?;
            let nll = lp.mean_all()?.neg()?;
            run.opt.backward_step(&nll)?;
            values.push(("nll", nll.to_scalar::<f32>()? as f64));
            stats
        };
        if let Some((name, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
            bail!("the {name} became {v} at iteration {}: lower --lr", it + 1);
        }
        if let Some(t1) = flow.learned_t1()? {
            values.push(("t1", t1));
        }
        values.push(("nfe_f", stats.nfe_forward as f64));
        values.push(("nfe_b", stats.nfe_backward() as f64));
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics_path, ckpt_path) = run.finish();

    if args.test_points > 0 {
        // Held-out points from a generator of their own, so that the figure does not depend
        // on where a run was resumed.
        let mut test_rng = Rng::new(args.seed ^ 0x7e57);
        let x = args
            .data
            .sample(args.test_points, args.noise, &mut test_rng, &dev)?;
        let nll = log_prob_chunked(&flow, &x)?
            .mean_all()?
            .neg()?
            .to_scalar::<f32>()?;
        println!("test NLL on {} held-out points: {nll:.4}", args.test_points);
    }
    if args.image_size > 0 {
        let path = out_dir.join("density.png");
        draw(
            &flow,
            args.data.half_width(),
            args.image_size,
            args.seed,
            &dev,
            &path,
        )?;
        println!("density and samples: {}", path.display());
    }
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}

/// The flow being trained.
enum Flow {
    Planar(Cnf),
    /// With how its trace is taken in training (evaluation and sampling take it exactly), and
    /// whether each point is solved on its own (`--per-point`).
    Ffjord(Ffjord, TraceArg, bool),
}

impl Flow {
    fn describe(&self) -> String {
        match self {
            Flow::Planar(c) => {
                let c = c.config();
                format!("CNF (width {}, t1 {})", c.width, c.t1)
            }
            Flow::Ffjord(f, trace, per_point) => {
                let c = f.config();
                format!(
                    "FFJORD (hidden {:?}, {:?}, trace {trace:?}, t1 {}{})",
                    c.hidden,
                    c.activation,
                    c.t1,
                    if *per_point {
                        ", each point solved on its own"
                    } else {
                        ""
                    }
                )
            }
        }
    }

    /// FFJORD's learned end time, when it is learned.
    fn learned_t1(&self) -> Result<Option<f64>> {
        Ok(match self {
            Flow::Ffjord(f, _, _) if f.config().train_t1 => Some(f.t1()?),
            _ => None,
        })
    }

    fn base_std(&self) -> f64 {
        match self {
            Flow::Planar(c) => c.config().base_std,
            Flow::Ffjord(f, _, _) => f.config().base_std,
        }
    }

    /// The trace for one training batch: Hutchinson's noise is drawn from `rng` (so a resumed
    /// run draws what the whole run would have).
    fn training_trace(&self, x: &Tensor, rng: &mut Rng) -> Result<Trace> {
        let noise = match self {
            Flow::Ffjord(_, TraceArg::Rademacher, _) => Noise::Rademacher,
            Flow::Ffjord(_, TraceArg::Gaussian, _) => Noise::Gaussian,
            _ => return Ok(Trace::Exact),
        };
        let (b, d) = x.dims2()?;
        Ok(Trace::Hutchinson(noise.sample(
            b,
            d,
            rng,
            x.dtype(),
            x.device(),
        )?))
    }

    /// The training log-likelihood (with FFJORD's training trace).
    fn log_prob_with_stats(&self, x: &Tensor, rng: &mut Rng) -> Result<(Tensor, BlockStats)> {
        let trace = self.training_trace(x, rng)?;
        Ok(match self {
            Flow::Planar(c) => c.log_prob_with_stats(x)?,
            Flow::Ffjord(f, _, true) => f.log_prob_independent(x, &trace)?,
            Flow::Ffjord(f, _, false) => f.log_prob_with(x, &trace)?,
        })
    }

    /// The training log-likelihood with RNODE's regularizers.
    fn log_prob_regularized(&self, x: &Tensor, rng: &mut Rng) -> Result<RegularizedLogProb> {
        let trace = self.training_trace(x, rng)?;
        Ok(match self {
            Flow::Planar(c) => c.log_prob_regularized(x)?,
            Flow::Ffjord(f, _, _) => f.log_prob_regularized(x, &trace)?,
        })
    }

    /// The exact `log p(x)`.
    fn log_prob(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Flow::Planar(c) => c.log_prob(x)?,
            Flow::Ffjord(f, _, true) => f.log_prob_independent(x, &Trace::Exact)?.0,
            Flow::Ffjord(f, _, false) => f.log_prob(x)?,
        })
    }

    fn sample_from(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Flow::Planar(c) => c.sample_from(z)?,
            Flow::Ffjord(f, _, _) => f.sample_from(z)?,
        })
    }
}

/// `log p(x)` in chunks (the solver takes the steps the hardest point needs, so large batches
/// cost more than their size).
fn log_prob_chunked(flow: &Flow, x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let mut parts = vec![];
    for start in (0..n).step_by(4096) {
        let len = 4096.min(n - start);
        parts.push(flow.log_prob(&x.narrow(0, start, len)?)?.detach());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Two panels over `[-half, half]²`: the learned density `p(x)`, and a histogram of samples
/// pushed through the flow from the base density.
fn draw(flow: &Flow, half: f64, size: usize, seed: u64, dev: &Device, path: &Path) -> Result<()> {
    let (lo, hi) = (-half, half);
    let step = (hi - lo) / size as f64;
    let mut grid = Vec::with_capacity(2 * size * size);
    for row in 0..size {
        let y = hi - (row as f64 + 0.5) * step;
        for col in 0..size {
            grid.extend([(lo + (col as f64 + 0.5) * step) as f32, y as f32]);
        }
    }
    let x = Tensor::from_vec(grid, (size * size, 2), dev)?;
    let density = log_prob_chunked(flow, &x)?.exp()?.to_vec1::<f32>()?;

    let n = 20 * size * size / 100;
    let z =
        Rng::new(seed ^ 0x5a5a).normal_tensor(&[n, 2], 0.0, flow.base_std(), DType::F32, dev)?;
    let mut hist = vec![0f32; size * size];
    for start in (0..n).step_by(4096) {
        let len = 4096.min(n - start);
        let (s, _) = flow.sample_from(&z.narrow(0, start, len)?)?;
        for p in s.to_vec2::<f32>()? {
            let col = ((p[0] as f64 - lo) / step).floor();
            let row = ((hi - p[1] as f64) / step).floor();
            if (0.0..size as f64).contains(&col) && (0.0..size as f64).contains(&row) {
                hist[row as usize * size + col as usize] += 1.0;
            }
        }
    }

    let width = 2 * size + 10;
    let mut rgb = vec![255u8; width * size * 3];
    for (panel, values) in [&density, &hist].into_iter().enumerate() {
        let max = values
            .iter()
            .cloned()
            .fold(0f32, f32::max)
            .max(f32::MIN_POSITIVE);
        for row in 0..size {
            for col in 0..size {
                let v = (values[row * size + col] / max).clamp(0.0, 1.0);
                let at = 3 * (row * width + panel * (size + 10) + col);
                rgb[at..at + 3].copy_from_slice(&heat(v));
            }
        }
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, size as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&rgb)?;
    w.finish()?;
    Ok(())
}

/// Black → red → yellow → white.
fn heat(v: f32) -> [u8; 3] {
    let c = |x: f32| (x.clamp(0.0, 1.0) * 255.0) as u8;
    [c(3.0 * v), c(3.0 * v - 1.0), c(3.0 * v - 2.0)]
}
