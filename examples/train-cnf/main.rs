//! Trains a continuous normalizing flow on two concentric circles by maximum likelihood, as
//! torchdiffeq's `examples/cnf.py` does, and draws the learned density and samples.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{pick_device, CheckpointArgs, DeviceArg, GradientArg};
use iterations::{Iterations, Plan};
use node_adjoint::AdjointOptions;
use node_models::cnf::{two_circles, Cnf, CnfConfig};
use node_models::{Gradient, Rng};
use node_solvers::{Method, SolveOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The checkpoint's model name: a flow's checkpoint is refused by the MNIST trainer and back.
const MODEL: &str = "cnf";

/// Train a continuous normalizing flow (Chen et al. 2018, §4) on two circles.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Training iterations (in total, counting resumed ones).
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Points per iteration, drawn afresh from the target each time.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Hidden units M of the flow's field.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Hidden units of the hypernetwork t ↦ weights.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// End time t₁ of the flow.
    #[arg(long, default_value_t = 10.0)]
    t1: f64,
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
    /// Weight λ_J of the Jacobian regularizer ∫‖∂f/∂z‖²_F dt (RNODE; exact for this field).
    /// 0: off.
    #[arg(long, default_value_t = 0.0)]
    jacobian: f64,
    /// Standard deviation of the noise added to the circles.
    #[arg(long, default_value_t = 0.06)]
    noise: f64,
    /// Random seed (initialisation and data).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, picture).
    #[arg(long, default_value = "runs/cnf")]
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
    let regularize = args.kinetic > 0.0 || args.jacobian > 0.0;
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);
    let cfg = CnfConfig {
        width: args.width,
        hidden: args.hidden,
        t1: args.t1,
        ..CnfConfig::default()
    };
    let opts = SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(args.tol, args.tol);
    let gradient = match args.gradient {
        GradientArg::Adjoint | GradientArg::Interpolated => Gradient::Adjoint(
            AdjointOptions::default()
                .tolerances(args.tol, args.tol)
                .state(args.gradient.adjoint_state()),
        ),
        GradientArg::Backprop => Gradient::Backprop,
        GradientArg::Checkpoint => Gradient::Checkpoint(args.checkpoint.options()),
    };
    let varmap = VarMap::new();
    let cnf = Cnf::new(
        &cfg,
        opts,
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
        extra_json: format!(
            "\"batch_size\":{},\"kinetic_weight\":{},\"jacobian_weight\":{},",
            args.batch_size, args.kinetic, args.jacobian
        ),
    };
    let mut run = Iterations::start(plan, &varmap, &dev)?;
    let n_params = run.n_params;
    println!(
        "CNF ({n_params} parameters, width {}, t1 {}) on {dev:?}; iterations {}..{}",
        args.width,
        args.t1,
        run.start + 1,
        args.iters
    );
    for it in run.remaining() {
        let x = two_circles(args.batch_size, args.noise, &mut run.rng, DType::F32, &dev)?;
        let mut values = vec![];
        let stats = if regularize {
            let r = cnf.log_prob_regularized(&x)?;
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
            let (lp, stats) = cnf.log_prob_with_stats(&x)?;
            let nll = lp.mean_all()?.neg()?;
            run.opt.backward_step(&nll)?;
            values.push(("nll", nll.to_scalar::<f32>()? as f64));
            stats
        };
        if let Some((name, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
            bail!("the {name} became {v} at iteration {}: lower --lr", it + 1);
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
        let x = two_circles(
            args.test_points,
            args.noise,
            &mut test_rng,
            DType::F32,
            &dev,
        )?;
        let nll = log_prob_chunked(&cnf, &x)?
            .mean_all()?
            .neg()?
            .to_scalar::<f32>()?;
        println!("test NLL on {} held-out points: {nll:.4}", args.test_points);
    }
    if args.image_size > 0 {
        let path = args.out_dir.join("density.png");
        draw(&cnf, args.image_size, args.seed, &dev, &path)?;
        println!("density and samples: {}", path.display());
    }
    println!(
        "metrics: {}, checkpoint: {}",
        metrics_path.display(),
        ckpt_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `log p(x)` in chunks (the solver takes the steps the hardest point needs, so large batches
/// cost more than their size).
fn log_prob_chunked(cnf: &Cnf, x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let mut parts = vec![];
    for start in (0..n).step_by(4096) {
        let len = 4096.min(n - start);
        parts.push(cnf.log_prob(&x.narrow(0, start, len)?)?.detach());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Two panels over `[-1.5, 1.5]²`: the learned density `p(x)`, and a histogram of samples
/// pushed through the flow from the base density.
fn draw(cnf: &Cnf, size: usize, seed: u64, dev: &Device, path: &Path) -> Result<()> {
    let (lo, hi) = (-1.5f64, 1.5f64);
    let step = (hi - lo) / size as f64;
    let mut grid = Vec::with_capacity(2 * size * size);
    for row in 0..size {
        let y = hi - (row as f64 + 0.5) * step;
        for col in 0..size {
            grid.extend([(lo + (col as f64 + 0.5) * step) as f32, y as f32]);
        }
    }
    let x = Tensor::from_vec(grid, (size * size, 2), dev)?;
    let density = log_prob_chunked(cnf, &x)?.exp()?.to_vec1::<f32>()?;

    let n = 20 * size * size / 100;
    let z = Rng::new(seed ^ 0x5a5a).normal_tensor(
        &[n, 2],
        0.0,
        cnf.config().base_std,
        DType::F32,
        dev,
    )?;
    let mut hist = vec![0f32; size * size];
    for start in (0..n).step_by(4096) {
        let len = 4096.min(n - start);
        let (s, _) = cnf.sample_from(&z.narrow(0, start, len)?)?;
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
