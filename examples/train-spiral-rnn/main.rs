//! Trains the paper's RNN baseline (§5.1, Table 2) on the spirals `train-latent-ode` learns:
//! next-observation prediction, then a forecast past the observed window fed its own
//! predictions.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;
#[path = "../common/plot.rs"]
mod plot;
#[path = "../common/spirals.rs"]
mod spirals;

use anyhow::{bail, Result};
use candle_core::DType;
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{pick_device, print_outputs, DeviceArg};
use iterations::{Iterations, Plan};
use node_models::rnn::{Rnn, RnnConfig};
use spirals::{draw_forecasts, json_number, rmse, summary_head, write_summary, SpiralArgs};
use std::path::PathBuf;
use std::process::ExitCode;

/// The checkpoint's model name.
const MODEL: &str = "spiral-rnn";

/// Train the RNN baseline of the latent ODE (Chen et al. 2018, Table 2) on noisy spirals.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Training iterations (in total, counting resumed ones); each uses every spiral.
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    #[command(flatten)]
    data: SpiralArgs,
    /// Each input also carries the time to the next observation (the paper's second
    /// version of the baseline, for irregular observations).
    #[arg(long)]
    time_input: bool,
    /// Hidden units (the paper's 25).
    #[arg(long, default_value_t = 25)]
    hidden: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Random seed (data, initialisation).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, summary, picture).
    #[arg(long, default_value = "runs/spiral-rnn")]
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
    /// Skip `forecast.png`.
    #[arg(long)]
    no_plot: bool,
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.iters == 0 || args.checkpoint_every == 0 || args.hidden == 0 {
        bail!("--iters, --checkpoint-every and --hidden must be positive");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be a positive number");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);
    let task = args.data.task(args.seed, &dev)?;
    let (data, mask) = (&task.train.window, task.train.mask.as_ref());
    let varmap = VarMap::new();
    let model = Rnn::new(
        &RnnConfig {
            obs: 2,
            hidden: args.hidden,
            time_input: args.time_input,
        },
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
        "RNN ({n_params} parameters) on {dev:?}; {} spirals of {} points over t in [0, {:.2}]; iterations {}..{}",
        args.data.nspiral,
        args.data.nsample,
        data.ts[data.ts.len() - 1],
        run.start + 1,
        args.iters
    );
    for it in run.remaining() {
        let loss = model.loss(&data.observed, &data.ts, mask, args.data.noise)?;
        run.opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        if let Some(code) = run.record(it, &[("loss", l)], &varmap)? {
            return Ok(code);
        }
    }
    let (metrics_path, ckpt_path) = run.finish();

    let scored = task.scored();
    let which = task.scored_name();
    let forecast = match &scored.future {
        Some((future, clean)) => {
            let w = &scored.window;
            let pred = model.forecast(&w.observed, &w.ts, scored.mask.as_ref(), future)?;
            let e = rmse(&pred, clean, None)?;
            println!(
                "RMSE to the clean {which} spirals of the forecast over the {} points after the window: {e:.4}",
                future.len()
            );
            if !args.no_plot {
                let path = args.out_dir.join("forecast.png");
                draw_forecasts(scored, &pred, &path)?;
                println!("the first {which} spirals forecast: {}", path.display());
            }
            Some(e)
        }
        None => {
            println!("no --forecast: nothing scored but the loss");
            None
        }
    };
    let mut fields = summary_head(
        MODEL,
        &args.data,
        args.time_input,
        args.iters,
        args.seed,
        &task,
    );
    fields.extend([("rmse_forecast", forecast.map_or("null".into(), json_number))]);
    write_summary(&args.out_dir, &fields)?;
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}
