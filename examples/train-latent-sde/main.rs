//! Trains the latent SDE of Li et al. (2020) on a few observations of one time series, as
//! torchsde's `examples/latent_sde.py` does: a posterior SDE with a neural drift against an
//! Ornstein–Uhlenbeck prior, the negative ELBO (Laplace likelihood, KL annealed in), Adam,
//! gradients by the stochastic adjoint or by backprop. Writes the posterior's spread as a
//! picture.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;
#[path = "../common/plot.rs"]
mod plot;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{json_number, pick_device, print_outputs, write_summary, DeviceArg};
use iterations::{Iterations, Plan};
use node_adjoint::SdeAdjointOptions;
use node_models::latent_sde::{laplace_log_likelihood, LatentSde, LatentSdeConfig, SdeGradient};
use node_models::Rng;
use node_solvers::{SdeAdaptive, SdeErrorEstimate, SdeMethod};
use std::path::PathBuf;
use std::process::ExitCode;

/// The checkpoint's model name.
const MODEL: &str = "latent-sde";

/// `--data` choices: torchsde's two toy series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DataArg {
    /// `cos 2πt` at ten times in [0.3, 0.8] and ten in [1.2, 1.5].
    SegmentedCosine,
    /// `0.8 sin 2πt` at 16 random times in [0.4, 1.6].
    IrregularSine,
}

/// `--error-estimate` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EstimateArg {
    /// Each step taken whole and as two halves (torchsde's): three steps' evaluations.
    Doubling,
    /// The lower-order step inside Heun, the midpoint method, SRA1 and ShARK: no extra
    /// evaluation.
    Embedded,
}

/// `--gradient` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GradientArg {
    /// The stochastic adjoint: memory independent of the steps.
    Adjoint,
    /// Backprop through the solver.
    Backprop,
}

/// Train a latent SDE (Li et al. 2020) on a few observations of a time series.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The observations.
    #[arg(long, value_enum, default_value = "segmented-cosine")]
    data: DataArg,
    /// Training iterations (in total, counting resumed ones). torchsde's example runs 5000.
    #[arg(long, default_value_t = 400)]
    iters: usize,
    /// Posterior samples per iteration (torchsde's example: 512).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Width of the drift network's hidden layers.
    #[arg(long, default_value_t = 200)]
    hidden: usize,
    /// Scale of the Laplace likelihood of the observations.
    #[arg(long, default_value_t = 0.05)]
    scale: f64,
    /// Iterations over which the KL term's weight grows linearly to 1.
    #[arg(long, default_value_t = 100)]
    kl_anneal_iters: usize,
    /// Adam's learning rate, decayed by 0.999 every iteration.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// SDE method (a Stratonovich one for the adjoint; the noise is additive, so any,
    /// ShARK and SRA1 of strong order 3/2 among them).
    #[arg(long, default_value = "midpoint")]
    method: SdeMethod,
    /// The SDE solver's step (with `--adaptive`, its first step).
    #[arg(long, default_value_t = 1e-2)]
    dt: f64,
    /// Adaptive steps (step doubling along the same Brownian path) under `--rtol` and
    /// `--atol`, forwards and, for the adjoint, backwards.
    #[arg(long)]
    adaptive: bool,
    /// Relative tolerance of `--adaptive`.
    #[arg(long, default_value_t = 1e-3)]
    rtol: f64,
    /// Absolute tolerance of `--adaptive`.
    #[arg(long, default_value_t = 1e-3)]
    atol: f64,
    /// How `--adaptive` estimates a step's error (`embedded` needs heun, midpoint, sra1 or
    /// shark).
    #[arg(long, value_enum, default_value = "doubling")]
    error_estimate: EstimateArg,
    /// How the solve is differentiated.
    #[arg(long, value_enum, default_value = "adjoint")]
    gradient: GradientArg,
    /// The adjoint's reverse step (its first step with `--adaptive`); default `--dt`. The
    /// reverse solve is Heun's, of order 1: after a ShARK forward solve at a coarse `--dt`,
    /// a finer reverse step keeps the gradients accurate.
    #[arg(long)]
    adjoint_dt: Option<f64>,
    /// Random seed (initialisation, noise, Brownian paths; the irregular sine's times).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, summary, picture).
    #[arg(long, default_value = "runs/latent-sde")]
    out_dir: PathBuf,
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
}

/// The observation times and values.
struct Data {
    ts: Vec<f64>,
    ys: Vec<f64>,
}

fn make_data(kind: DataArg, seed: u64) -> Data {
    match kind {
        DataArg::SegmentedCosine => {
            let lin = |a: f64, b: f64| (0..10).map(move |i| a + (b - a) * i as f64 / 9.0);
            let ts: Vec<f64> = lin(0.3, 0.8).chain(lin(1.2, 1.5)).collect();
            let ys = ts
                .iter()
                .map(|t| (2.0 * std::f64::consts::PI * t).cos())
                .collect();
            Data { ts, ys }
        }
        DataArg::IrregularSine => {
            // The data's own generator, so that a resumed run sees the same times.
            let mut rng = Rng::new(seed ^ 0x7369_6e65);
            let mut ts: Vec<f64> = (0..16).map(|_| 0.4 + 1.2 * rng.uniform()).collect();
            ts.sort_by(f64::total_cmp);
            ts.dedup();
            let ys = ts
                .iter()
                .map(|t| 0.8 * (2.0 * std::f64::consts::PI * t).sin())
                .collect();
            Data { ts, ys }
        }
    }
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.iters == 0 || args.checkpoint_every == 0 || args.batch_size == 0 || args.hidden == 0 {
        bail!("--iters, --batch-size, --hidden and --checkpoint-every must be positive");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if ![
        args.lr,
        args.scale,
        args.dt,
        args.adjoint_dt.unwrap_or(args.dt),
    ]
    .into_iter()
    .all(positive)
    {
        bail!("--lr, --scale, --dt and --adjoint-dt must be positive numbers");
    }
    if args.adjoint_dt.is_some() && args.gradient != GradientArg::Adjoint {
        bail!("--adjoint-dt sets the adjoint's reverse step: it needs --gradient adjoint");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);

    let data = make_data(args.data, args.seed);
    // The solve runs from 0 to 2: the first and last times only spread the uncertainty
    // outside the data (their samples enter no likelihood).
    let ts: Vec<f64> = std::iter::once(0.0)
        .chain(data.ts.iter().copied())
        .chain(std::iter::once(2.0))
        .collect();
    let n_obs = data.ts.len();
    let ys = Tensor::new(data.ys.as_slice(), &dev)?.to_dtype(DType::F32)?;
    let cfg = LatentSdeConfig {
        hidden: args.hidden,
        method: args.method,
        dt: args.dt,
        adaptive: args.adaptive.then(|| {
            SdeAdaptive::new(args.rtol, args.atol).estimate(match args.error_estimate {
                EstimateArg::Doubling => SdeErrorEstimate::StepDoubling,
                EstimateArg::Embedded => SdeErrorEstimate::Embedded,
            })
        }),
        ..Default::default()
    };
    let varmap = VarMap::new();
    let model = LatentSde::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let gradient = match args.gradient {
        GradientArg::Adjoint => SdeGradient::Adjoint(SdeAdjointOptions {
            dt: args.adjoint_dt,
            ..SdeAdjointOptions::default()
        }),
        GradientArg::Backprop => SdeGradient::Backprop,
    };
    let plan = Plan {
        model: MODEL,
        out_dir: &args.out_dir,
        iters: args.iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr: args.lr,
        extra_json: format!("\"data\":\"{:?}\",", args.data),
    };
    let mut run = Iterations::start_with(plan, &varmap, &dev, || Ok(model.init()?))?;
    println!(
        "latent SDE ({} parameters) on {dev:?}; {n_obs} observations of {:?}, {} posterior samples per iteration, {} with {}, gradient by {:?}; iterations {}..{}",
        run.n_params,
        args.data,
        args.batch_size,
        args.method,
        if args.adaptive {
            format!(
                "adaptive steps (rtol {}, atol {}, {:?} error estimate)",
                args.rtol, args.atol, args.error_estimate
            )
        } else {
            format!("dt {}", args.dt)
        },
        args.gradient,
        run.start + 1,
        args.iters
    );
    for it in run.remaining() {
        // torchsde's schedules: the learning rate decays by 0.999 per iteration, the KL
        // weight grows linearly over the first iterations.
        run.opt
            .set_learning_rate(args.lr * 0.999f64.powi(it as i32));
        let kl_weight = ((it + 1) as f64 / args.kl_anneal_iters.max(1) as f64).min(1.0);
        let eps = run
            .rng
            .normal_tensor(&[args.batch_size, 1], 0.0, 1.0, DType::F32, &dev)?;
        let bm_seed = run.rng.next_u64();
        let out = model.forward(&ts, &eps, bm_seed, &gradient)?;
        let zs = out.ys.narrow(0, 1, n_obs)?;
        let logpy = laplace_log_likelihood(&zs, &ys, args.scale)?;
        let loss = (out.kl.affine(kl_weight, 0.0)? - &logpy)?;
        run.opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        let nfe_b = out.adjoint.as_ref().map_or(0, |s| s.backward().drift_evals);
        let values = [
            ("loss", l),
            ("logpy", logpy.to_scalar::<f32>()? as f64),
            ("kl", out.kl.to_scalar::<f32>()? as f64),
            ("nfe_f", out.forward.drift_evals as f64),
            ("nfe_b", nfe_b as f64),
        ];
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics_path, ckpt_path) = run.finish();

    // The posterior on a fine grid from fixed noise: its median and 5–95% band, and how the
    // observations sit in it.
    let vis: Vec<f64> = (0..=200).map(|i| i as f64 / 100.0).collect();
    let n_vis = 1024;
    let mut vis_rng = Rng::new(args.seed ^ 0x7669_7375);
    let eps = vis_rng.normal_tensor(&[n_vis, 1], 0.0, 1.0, DType::F32, &dev)?;
    let zs = model.sample_posterior(&vis, &eps, vis_rng.next_u64())?;
    let zs = zs.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let quantile = |row: &[f64], q: f64| -> f64 {
        let mut v = row.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let lo: Vec<f64> = zs.iter().map(|r| quantile(r, 0.05)).collect();
    let mid: Vec<f64> = zs.iter().map(|r| quantile(r, 0.5)).collect();
    let hi: Vec<f64> = zs.iter().map(|r| quantile(r, 0.95)).collect();
    let at = |t: f64, v: &[f64]| -> f64 {
        // Linear interpolation on the 0.01 grid.
        let x = (t * 100.0).clamp(0.0, 199.999);
        let (i, f) = (x.floor() as usize, x - x.floor());
        v[i] * (1.0 - f) + v[i + 1] * f
    };
    let (mut sq, mut inside) = (0.0, 0);
    for (&t, &y) in data.ts.iter().zip(&data.ys) {
        sq += (at(t, &mid) - y).powi(2);
        if at(t, &lo) <= y && y <= at(t, &hi) {
            inside += 1;
        }
    }
    let median_rmse = (sq / n_obs as f64).sqrt();
    let coverage = inside as f64 / n_obs as f64;
    let width = vis
        .iter()
        .enumerate()
        .map(|(i, _)| hi[i] - lo[i])
        .sum::<f64>()
        / vis.len() as f64;
    println!(
        "posterior of 1024 samples: median off the observations by {median_rmse:.4} (RMSE); {inside} of {n_obs} observations inside its 5-95% band; mean band width {width:.3}"
    );
    let picture = args.out_dir.join("posterior.png");
    draw(&vis, &lo, &mid, &hi, &zs, &data, &picture)?;
    write_summary(
        &args.out_dir,
        &[
            ("model", format!("\"{MODEL}\"")),
            ("data", format!("\"{:?}\"", args.data)),
            ("gradient", format!("\"{:?}\"", args.gradient)),
            ("adaptive", args.adaptive.to_string()),
            ("iters", args.iters.to_string()),
            ("seed", args.seed.to_string()),
            ("median_rmse", json_number(median_rmse)),
            ("coverage_90", json_number(coverage)),
            ("band_width_90", json_number(width)),
        ],
    )?;
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
        ("summary", args.out_dir.join("summary.json").as_path()),
        ("picture", picture.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}

/// The 5–95% band (a vertical stroke per pixel column), the median, three samples and the
/// observations. `lo`, `mid`, `hi` and the samples are on the grid `ts` (steps of 0.01).
fn draw(
    ts: &[f64],
    lo: &[f64],
    mid: &[f64],
    hi: &[f64],
    zs: &[Vec<f64>],
    data: &Data,
    path: &std::path::Path,
) -> Result<()> {
    let mut c = plot::Canvas::new(640, 400);
    let p = plot::Panel {
        x0: 20,
        y0: 20,
        w: 600,
        h: 360,
        xlim: (0.0, 2.0),
        ylim: (-1.75, 1.75),
    };
    c.frame(&p);
    let last = ts.len() - 1;
    for px in 0..=p.w {
        let t = 2.0 * px as f64 / p.w as f64;
        let x = (t / 2.0 * last as f64).min(last as f64 - 1e-9);
        let (i, f) = (x.floor() as usize, x - x.floor());
        let at = |v: &[f64]| v[i] * (1.0 - f) + v[i + 1] * f;
        c.series(&p, &[t, t], &[at(lo), at(hi)], [253, 208, 162]);
    }
    for (k, color) in [
        (0usize, [252, 78, 42]),
        (1, [227, 26, 28]),
        (2, [189, 0, 38]),
    ] {
        let sample: Vec<f64> = zs.iter().map(|r| r[k]).collect();
        c.series(&p, ts, &sample, color);
    }
    c.series(&p, ts, mid, [128, 0, 38]);
    for (&t, &y) in data.ts.iter().zip(&data.ys) {
        // A cross of three dots each way.
        for d in [-0.012, 0.0, 0.012] {
            c.dot(&p, t + d, y + 0.021 * d / 0.012, [0, 0, 0]);
            c.dot(&p, t + d, y - 0.021 * d / 0.012, [0, 0, 0]);
        }
    }
    c.save_png(path)
}
