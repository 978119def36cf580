//! Trains a latent ODE on noisy spirals, as torchdiffeq's `examples/latent_ode.py` does, and
//! draws one spiral reconstructed and extrapolated in both directions of time.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;
#[path = "../common/plot.rs"]
mod plot;
#[path = "../common/spirals.rs"]
mod spirals;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{pick_device, print_outputs, CheckpointArgs, DeviceArg, GradientArg};
use iterations::{Iterations, Plan};
use node_models::latent_ode::{Encoder, LatentOde, LatentOdeConfig, Spirals};
use node_models::Rng;
use node_solvers::{Method, SolveOptions, SolverError};
use plot::{square_panel, Canvas, LEARNED_COLOR, TRUE_COLOR};
use spirals::{
    draw_forecasts, json_number, rmse, summary_head, write_summary, Observed, SpiralArgs,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The checkpoint's model name.
const MODEL: &str = "latent-ode";

/// Train a latent ODE (Chen et al. 2018, §5) on noisy spirals.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Training iterations (in total, counting resumed ones); each uses every spiral.
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    #[command(flatten)]
    data: SpiralArgs,
    /// The recognition RNN also reads the time to each sequence's next observed point
    /// (`LatentOdeConfig::time_input`): for irregular observations.
    #[arg(long)]
    time_input: bool,
    /// The recognition network: torchdiffeq's RNN, or an ODE-RNN (Rubanova et al. 2019)
    /// whose hidden state follows an ODE between observations (Euler steps).
    #[arg(long, value_enum, default_value = "rnn")]
    encoder: EncoderArg,
    /// The ODE-RNN's steps over the whole window: its Euler steps are at most the window's
    /// span divided by this (Rubanova et al.: 50).
    #[arg(long, default_value_t = 50)]
    encoder_steps: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Dimension of the latent state.
    #[arg(long, default_value_t = 4)]
    latent: usize,
    /// Hidden units of the dynamics and the decoder.
    #[arg(long, default_value_t = 20)]
    hidden: usize,
    /// Hidden units of the recognition RNN.
    #[arg(long, default_value_t = 25)]
    rnn_hidden: usize,
    /// The decoder's ODE method, an adaptive one (the example's dopri5).
    #[arg(long, default_value = "dopri5")]
    method: Method,
    /// The solver's relative tolerance (torchdiffeq's default).
    #[arg(long, default_value_t = 1e-7)]
    rtol: f64,
    /// The solver's absolute tolerance (torchdiffeq's default).
    #[arg(long, default_value_t = 1e-9)]
    atol: f64,
    /// How the solve is differentiated (the example's default: backprop).
    #[arg(long, value_enum, default_value = "backprop")]
    gradient: GradientArg,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Random seed (data, initialisation, sampling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, picture).
    #[arg(long, default_value = "runs/latent-ode")]
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
    /// Skip `spiral.png`.
    #[arg(long)]
    no_plot: bool,
}

/// `--encoder`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EncoderArg {
    Rnn,
    OdeRnn,
}

impl Args {
    fn encoder(&self) -> Encoder {
        match self.encoder {
            EncoderArg::Rnn => Encoder::Rnn,
            EncoderArg::OdeRnn => Encoder::OdeRnn {
                method: Method::Euler,
                steps: self.encoder_steps,
            },
        }
    }
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.iters == 0 || args.checkpoint_every == 0 {
        bail!("--iters and --checkpoint-every must be positive");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    if args.encoder_steps == 0 {
        bail!("--encoder-steps must be positive");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !args.method.is_adaptive() {
        bail!(
            "--method {} has no error estimate: the decoder needs an adaptive method (dopri5, tsit5, adams, ...)",
            args.method
        );
    }
    if ![args.lr, args.rtol, args.atol].into_iter().all(positive) {
        bail!("--lr, --rtol and --atol must be positive numbers");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);
    let task = args.data.task(args.seed, &dev)?;
    let (data, mask) = (&task.train.window, task.train.mask.as_ref());
    let cfg = LatentOdeConfig {
        obs: 2,
        latent: args.latent,
        hidden: args.hidden,
        rnn_hidden: args.rnn_hidden,
        time_input: args.time_input,
        encoder: args.encoder(),
    };
    let opts = SolveOptions::default()
        .method(args.method)
        .tolerances(args.rtol, args.atol);
    let gradient = args
        .gradient
        .gradient(args.rtol, args.atol, &args.checkpoint);
    let varmap = VarMap::new();
    let model = LatentOde::new(
        &cfg,
        opts.clone(),
        gradient,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let plan = Plan {
        model: MODEL,
        out_dir: &args.out_dir,
        iters: args.iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr: args.lr,
        extra_json: String::new(),
    };
    let mut run = Iterations::start(plan, &varmap, &dev)?;
    let n_params = run.n_params;
    println!(
        "latent ODE ({n_params} parameters) on {dev:?}; {} spirals of {} points over t in [0, {:.2}]; iterations {}..{}",
        args.data.nspiral,
        args.data.nsample,
        data.ts[data.ts.len() - 1],
        run.start + 1,
        args.iters
    );
    for it in run.remaining() {
        let eps = run.rng.normal_tensor(
            &[args.data.nspiral, args.latent],
            0.0,
            1.0,
            DType::F32,
            &dev,
        )?;
        let parts = model
            .elbo(&data.observed, &data.ts, mask, &eps, args.data.noise)
            .map_err(explain)?;
        run.opt.backward_step(&parts.loss).map_err(explain)?;
        let l = parts.loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        let mean = |t: &Tensor| -> Result<f64> { Ok(t.mean_all()?.to_scalar::<f32>()? as f64) };
        let mut values = vec![
            ("loss", l),
            ("neg_log_px", -mean(&parts.log_px)?),
            ("kl", mean(&parts.kl)?),
            ("nfe_f", parts.nfe_forward as f64),
            (
                "nfe_b",
                parts.adjoint.as_ref().map_or(0, |a| a.backward().nfe) as f64,
            ),
        ];
        if args.encoder == EncoderArg::OdeRnn {
            values.push(("nfe_enc_f", parts.encoder.nfe_forward as f64));
            values.push(("nfe_enc_b", parts.encoder.nfe_backward() as f64));
        }
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics_path, ckpt_path) = run.finish();
    let (scores, decoded) = score(&model, task.scored())?;
    let which = task.scored_name();
    let mut line = format!(
        "RMSE to the clean {which} spirals, decoded from the posterior means: {:.4} at the observed points",
        scores.observed
    );
    if let Some(h) = scores.held_out {
        line.push_str(&format!(", {h:.4} at the held-out ones"));
    }
    if let Some(f) = scores.forecast {
        line.push_str(&format!(
            ", {f:.4} over the {} points after the window",
            args.data.forecast
        ));
    }
    println!("{line}");
    let opt = |v: Option<f64>| v.map_or("null".into(), json_number);
    let mut fields = summary_head(
        MODEL,
        &args.data,
        args.time_input,
        args.iters,
        args.seed,
        &task,
    );
    let encoder = match args.encoder {
        EncoderArg::Rnn => "\"rnn\"".to_string(),
        EncoderArg::OdeRnn => format!("\"ode-rnn/{}\"", args.encoder_steps),
    };
    fields.extend([
        ("encoder", encoder),
        ("method", format!("\"{}\"", args.method)),
        ("rmse_observed", json_number(scores.observed)),
        ("rmse_held_out", opt(scores.held_out)),
        ("rmse_forecast", opt(scores.forecast)),
    ]);
    write_summary(&args.out_dir, &fields)?;
    if !args.no_plot && task.scored().future.is_some() {
        let path = args.out_dir.join("forecast.png");
        draw_forecasts(task.scored(), &decoded, &path)?;
        println!(
            "the first {which} spirals decoded over the window and after it: {}",
            path.display()
        );
    }
    if !args.no_plot {
        let path = args.out_dir.join("spiral.png");
        let err = draw(&model, data, mask, args.seed, &path)?;
        println!(
            "spiral 0 reconstructed from its observations, mean distance to the clean spiral {err:.3}: {}",
            path.display()
        );
    }
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}

/// RMSEs to the clean spirals of their reconstructions from the posterior means.
struct Scores {
    /// At the observed points.
    observed: f64,
    /// At the window's points not observed (with a mask).
    held_out: Option<f64>,
    /// After the window (with `--forecast`).
    forecast: Option<f64>,
}

/// With the decoded spirals, at the window's times and after.
fn score(model: &LatentOde, s: &Observed) -> Result<(Scores, Tensor)> {
    let w = &s.window;
    let mut times = w.ts.clone();
    if let Some((future, _)) = &s.future {
        times.extend(future);
    }
    let (mean, _) = model.encode(&w.observed, &w.ts, s.mask.as_ref())?;
    let (pred, _, _) = model.decode(&mean.detach(), &times)?;
    let k = w.ts.len();
    let in_window = pred.narrow(1, 0, k)?;
    let scores = Scores {
        observed: rmse(&in_window, &w.clean, s.mask.as_ref())?,
        held_out: match &s.mask {
            Some(m) => Some(rmse(&in_window, &w.clean, Some(&m.affine(-1.0, 1.0)?))?),
            None => None,
        },
        forecast: match &s.future {
            Some((future, clean)) => Some(rmse(&pred.narrow(1, k, future.len())?, clean, None)?),
            None => None,
        },
    };
    Ok((scores, pred))
}

/// A solver failure with what to do about it.
fn explain(e: candle_core::Error) -> anyhow::Error {
    match SolverError::find(&e) {
        Some(SolverError::MaxStepsExceeded { .. } | SolverError::StepSizeTooSmall { .. }) => {
            anyhow::anyhow!(
                "{e}\nthe learned dynamics became stiff; try a smaller --lr or looser --rtol/--atol"
            )
        }
        _ => e.into(),
    }
}

/// As the example's `--visualize`: spiral 0 is encoded from its noisy observations (one
/// sample of z₀) and decoded over `t ∈ [0, 2π]` (orange) and `[−π, 0]` (backwards in time,
/// light orange), beside the clean spiral piece (blue) and the observations (grey dots).
/// Returns the mean distance between the decoded and clean points at the observed times.
fn draw(
    model: &LatentOde,
    data: &Spirals,
    mask: Option<&Tensor>,
    seed: u64,
    path: &Path,
) -> Result<f64> {
    let dev = data.observed.device();
    let obs = data.observed.narrow(0, 0, 1)?;
    let mask0 = mask.map(|m| m.narrow(0, 0, 1)).transpose()?;
    let (mean, logvar) = model.encode(&obs, &data.ts, mask0.as_ref())?;
    let eps = Rng::new(seed ^ 0x9106).normal_tensor(mean.dims(), 0.0, 1.0, DType::F32, dev)?;
    let z0 = (&mean + (eps * (logvar * 0.5)?.exp()?)?)?.detach();
    let grid = |a: f64, b: f64| -> Vec<f64> {
        (0..2000).map(|i| a + (b - a) * i as f64 / 1999.0).collect()
    };
    let xy = |t: &Tensor| -> Result<(Vec<f64>, Vec<f64>)> {
        let v = t.squeeze(0)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        Ok(v.iter().map(|p| (p[0], p[1])).unzip())
    };
    let (fx, fy) = xy(&model.decode(&z0, &grid(0.0, 2.0 * std::f64::consts::PI))?.0)?;
    let (bx, by) = xy(&model.decode(&z0, &grid(0.0, -std::f64::consts::PI))?.0)?;
    let (cx, cy) = xy(&data.clean.narrow(0, 0, 1)?)?;
    let (mut ox, mut oy) = xy(&obs)?;
    // Only the observed points are drawn.
    if let Some(m) = &mask0 {
        let seen = m.squeeze(0)?.to_vec1::<f32>()?;
        let keep = |v: Vec<f64>| -> Vec<f64> {
            v.into_iter()
                .zip(&seen)
                .filter(|(_, s)| **s > 0.5)
                .map(|(x, _)| x)
                .collect()
        };
        (ox, oy) = (keep(ox), keep(oy));
    }
    let (at_obs, _, _) = model.decode(&z0, &data.ts)?;
    let err = (at_obs - data.clean.narrow(0, 0, 1)?)?
        .sqr()?
        .sum(2)?
        .sqrt()?
        .mean_all()?
        .to_scalar::<f32>()? as f64;

    let mut c = Canvas::new(640, 640);
    let panel = square_panel(
        20,
        20,
        600,
        fx.iter().chain(&bx).chain(&cx).chain(&ox).cloned(),
        fy.iter().chain(&by).chain(&cy).chain(&oy).cloned(),
    );
    c.frame(&panel);
    for (x, y) in ox.iter().zip(&oy) {
        c.dot(&panel, *x, *y, [170, 170, 170]);
    }
    c.series(&panel, &cx, &cy, TRUE_COLOR);
    c.series(&panel, &bx, &by, [255, 200, 150]);
    c.series(&panel, &fx, &fy, LEARNED_COLOR);
    c.save_png(path)?;
    Ok(err)
}
