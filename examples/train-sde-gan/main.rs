//! Trains a neural SDE as a GAN (Kidger et al. 2021) on paths of a time-dependent
//! Ornstein–Uhlenbeck process, as torchsde's `examples/sde_gan.py` does: the generator an SDE
//! solved by reversible Heun (gradients by its exact adjoint, or by backprop), the
//! discriminator a neural CDE, the Wasserstein loss with clipped discriminator weights, and
//! stochastic weight averaging. Reports how far the generated marginals are from held-out
//! data, and draws both.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;
#[path = "../common/plot.rs"]
mod plot;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{json_number, pick_device, print_outputs, write_summary, DeviceArg};
use iterations::{Iterations, Plan};
use node_adjoint::SdeAdjointOptions;
use node_models::sde_gan::{marginal_w1, ou_dataset, SdeGan, SdeGanConfig};
use node_models::{init, Gradient, Rng, SdeGradient};
use node_solvers::{Calculus, SdeMethod};
use std::path::PathBuf;
use std::process::ExitCode;

/// The checkpoint's model name.
const MODEL: &str = "sde-gan";

/// `--gradient` choices for the generator's SDE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GradientArg {
    /// The adjoint: with reversible Heun its steps walked back, backprop's exact gradient in
    /// memory independent of the steps.
    Adjoint,
    /// Backprop through the solver.
    Backprop,
}

/// Train an SDE as a GAN (Kidger et al. 2021) on Ornstein–Uhlenbeck paths.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Training iterations (in total, counting resumed ones). torchsde's example runs 10000.
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Generated and real paths per iteration (torchsde's example: 1024).
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Training paths.
    #[arg(long, default_value_t = 8192)]
    dataset_size: usize,
    /// Observation times per path: 0, 1, …, t_size − 1.
    #[arg(long, default_value_t = 64)]
    t_size: usize,
    /// Fraction of the training values hidden and filled back by linear interpolation
    /// (torchsde's example: 0.3, to show irregular data).
    #[arg(long, default_value_t = 0.3)]
    drop: f64,
    /// The generator's SDE method (a Stratonovich one; its noise is general, so
    /// `general_shark`, with the steps' Lévy areas, is the one of higher order). With the
    /// adjoint, only `reversible_heun` gives exact gradients.
    #[arg(long, default_value = "reversible_heun")]
    method: SdeMethod,
    /// The generator's step (1: one step between observations).
    #[arg(long, default_value_t = 1.0)]
    dt: f64,
    /// Hidden state of the generator's SDE and the discriminator's CDE.
    #[arg(long, default_value_t = 16)]
    hidden: usize,
    /// Width of the MLPs' hidden layers.
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Hidden layers of the MLPs.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Dimension of the generator's initial noise.
    #[arg(long, default_value_t = 5)]
    initial_noise: usize,
    /// Dimension of the generator's Brownian motion.
    #[arg(long, default_value_t = 3)]
    noise: usize,
    /// Adam's learning rate for the generator.
    #[arg(long, default_value_t = 2e-4)]
    generator_lr: f64,
    /// Adam's learning rate for the discriminator.
    #[arg(long, default_value_t = 1e-3)]
    discriminator_lr: f64,
    /// Adam's L2 weight decay, both networks.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// The factor on the generator's initial MLP after the default initialisation.
    #[arg(long, default_value_t = 3.0)]
    initial_scale: f64,
    /// The factor on the generator's drift and diffusion after the default initialisation.
    #[arg(long, default_value_t = 0.5)]
    sde_scale: f64,
    /// Iteration after which stochastic weight averaging starts (the averaged models are
    /// the ones evaluated); `--iters` or more: none.
    #[arg(long, default_value_t = 500)]
    swa_start: usize,
    /// How the generator's SDE solve is differentiated.
    #[arg(long, value_enum, default_value = "adjoint")]
    gradient: GradientArg,
    /// Generated and held-out paths compared at the end.
    #[arg(long, default_value_t = 4096)]
    eval_size: usize,
    /// Random seed (data, initialisation, noise, Brownian paths).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, summary, picture).
    #[arg(long, default_value = "runs/sde-gan")]
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

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    let counts = [
        args.iters,
        args.checkpoint_every,
        args.batch_size,
        args.eval_size,
    ];
    if counts.contains(&0) {
        bail!("--iters, --batch-size, --eval-size and --checkpoint-every must be positive");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    if args.batch_size > args.dataset_size {
        bail!(
            "--batch-size {} is larger than --dataset-size {}",
            args.batch_size,
            args.dataset_size
        );
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if ![args.generator_lr, args.discriminator_lr]
        .into_iter()
        .all(positive)
    {
        bail!("--generator-lr and --discriminator-lr must be positive numbers");
    }
    let finite = [args.weight_decay, args.initial_scale, args.sde_scale];
    if !finite.iter().all(|v| v.is_finite() && *v >= 0.0) {
        bail!("--weight-decay, --initial-scale and --sde-scale must be numbers ≥ 0");
    }
    if args.method.needs_additive_noise() {
        bail!(
            "--method {}: the generator's diffusion depends on its state, and {} needs additive noise (general_shark takes any)",
            args.method,
            args.method
        );
    }
    if args.gradient == GradientArg::Adjoint && args.method.calculus() == Calculus::Ito {
        bail!(
            "--method {} is an Itô method, and the generator's adjoint needs a Stratonovich one (reversible_heun, heun, midpoint, general_shark), or --gradient backprop",
            args.method
        );
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);

    // The data comes from its own generator, so a resumed run sees the same paths.
    let data_seed = args.seed ^ 0x006f_752d_6461_7461;
    let (ts, data) = ou_dataset(
        args.dataset_size,
        args.t_size,
        args.drop,
        data_seed,
        DType::F32,
        &dev,
    )?;
    let cfg = SdeGanConfig {
        initial_noise: args.initial_noise,
        noise: args.noise,
        hidden: args.hidden,
        width: args.width,
        depth: args.depth,
        method: args.method,
        dt: args.dt,
        ..Default::default()
    };
    cfg.validate()?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let gan = SdeGan::new(cfg.clone(), vb.pp("model"))?;
    // The averaged models live in the same variables, so the checkpoint holds them.
    let swa = SdeGan::new(cfg.clone(), vb.pp("swa"))?;
    let sde_gradient = match args.gradient {
        GradientArg::Adjoint => SdeGradient::Adjoint(SdeAdjointOptions::default()),
        GradientArg::Backprop => SdeGradient::Backprop,
    };
    let cde_gradient = Gradient::Backprop;
    let plan = Plan {
        model: MODEL,
        out_dir: &args.out_dir,
        iters: args.iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr: args.discriminator_lr,
        extra_json: format!(
            "\"generator_lr\":{},\"method\":\"{}\",\"dt\":{},",
            args.generator_lr, args.method, args.dt
        ),
    };
    let init = || -> Result<()> {
        gan.init(args.initial_scale, args.sde_scale)?;
        gan.discriminator().clip_weights()?;
        Ok(())
    };
    let mut run = Iterations::start_with(plan, &varmap, &dev, init)?;
    // One Adam: the generator at its own rate, the averaged models not at all (they get
    // no gradients).
    let generator_ids: Vec<_> = gan.generator_vars()?.iter().map(|v| v.id()).collect();
    let scales: Vec<f64> = node_adjoint::sorted_vars(&varmap)
        .iter()
        .map(|v| {
            if generator_ids.contains(&v.id()) {
                args.generator_lr / args.discriminator_lr
            } else {
                1.0
            }
        })
        .collect();
    run.opt.set_lr_scales(scales)?;
    run.opt.set_weight_decay(args.weight_decay);
    println!(
        "SDE-GAN ({} parameters, averaged copies included) on {dev:?}; {} OU paths of {} times ({:.0}% filled in), batch {}, generator by {} at dt {} with gradients by {:?}; iterations {}..{}",
        run.n_params,
        args.dataset_size,
        args.t_size,
        100.0 * args.drop,
        args.batch_size,
        args.method,
        args.dt,
        args.gradient,
        run.start + 1,
        args.iters
    );
    let n_data = args.dataset_size;
    for it in run.remaining() {
        let v = run.rng.normal_tensor(
            &[args.batch_size, args.initial_noise],
            0.0,
            1.0,
            DType::F32,
            &dev,
        )?;
        let bm_seed = run.rng.next_u64();
        let picks: Vec<u32> = (0..args.batch_size)
            .map(|_| run.rng.below(n_data) as u32)
            .collect();
        let real = data.index_select(&Tensor::new(picks.as_slice(), &dev)?, 0)?;
        let fake = gan.generator().forward(&ts, &v, bm_seed, &sde_gradient)?;
        let (fake_scores, _) = gan.discriminator().scores(&fake.ys, &ts, &cde_gradient)?;
        let (real_scores, _) = gan.discriminator().scores(&real, &ts, &cde_gradient)?;
        let (fake_score, real_score) = (fake_scores.mean_all()?, real_scores.mean_all()?);
        let loss = (&fake_score - &real_score)?;
        let mut grads = loss.backward()?;
        // The discriminator descends the loss, the generator ascends it.
        gan.flip_generator_grads(&mut grads)?;
        run.opt.step(&grads)?;
        gan.discriminator().clip_weights()?;
        if it >= args.swa_start {
            swa.average_in(&gan, it - args.swa_start)?;
        }
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!(
                "the loss became {l} at iteration {}: lower the learning rates",
                it + 1
            );
        }
        let values = [
            ("loss", l),
            ("real", real_score.to_scalar::<f32>()? as f64),
            ("fake", fake_score.to_scalar::<f32>()? as f64),
            ("nfe_f", fake.forward.drift_evals as f64),
        ];
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics_path, ckpt_path) = run.finish();

    // Held-out paths against samples of the trained generator (the averaged one when
    // averaging ran), of the untrained one, and against other held-out paths (the floor).
    let averaged = args.iters > args.swa_start;
    let trained = if averaged { &swa } else { &gan };
    let (_, test) = ou_dataset(
        args.eval_size,
        args.t_size,
        0.0,
        data_seed ^ 0x7465_7374,
        DType::F32,
        &dev,
    )?;
    let (_, other) = ou_dataset(
        args.eval_size,
        args.t_size,
        0.0,
        data_seed ^ 0x006f_7468_6572,
        DType::F32,
        &dev,
    )?;
    let mut eval_rng = Rng::new(args.seed ^ 0x6576_616c);
    let v = eval_rng.normal_tensor(
        &[args.eval_size, args.initial_noise],
        0.0,
        1.0,
        DType::F32,
        &dev,
    )?;
    let bm_seed = eval_rng.next_u64();
    let generated = trained.generator().sample(&ts, &v, bm_seed)?;
    let untrained = {
        let varmap = VarMap::new();
        let fresh = SdeGan::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        init::pytorch_default(&varmap, &mut Rng::new(args.seed))?;
        fresh.init(args.initial_scale, args.sde_scale)?;
        fresh.generator().sample(&ts, &v, bm_seed)?
    };
    let values = |x: &Tensor| -> Result<Tensor> { Ok(x.narrow(2, 1, 1)?.squeeze(2)?) };
    let steps = |x: &Tensor| -> Result<Tensor> {
        let y = values(x)?;
        let t = y.dim(1)?;
        Ok((y.narrow(1, 1, t - 1)? - y.narrow(1, 0, t - 1)?)?)
    };
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let w1 = |a: &Tensor| -> Result<(f64, f64)> {
        Ok((
            mean(marginal_w1(&values(a)?, &values(&test)?)?),
            mean(marginal_w1(&steps(a)?, &steps(&test)?)?),
        ))
    };
    let (w1_trained, w1_steps_trained) = w1(&generated)?;
    let (w1_untrained, w1_steps_untrained) = w1(&untrained)?;
    let (w1_floor, w1_steps_floor) = w1(&other)?;
    println!(
        "mean marginal W1 to {} held-out paths (values | one-step increments): {} generator {w1_trained:.4} | {w1_steps_trained:.4}; untrained {w1_untrained:.4} | {w1_steps_untrained:.4}; other held-out paths {w1_floor:.4} | {w1_steps_floor:.4}",
        args.eval_size,
        if averaged { "averaged" } else { "trained" },
    );
    let picture = args.out_dir.join("samples.png");
    draw(&ts, &values(&test)?, &values(&generated)?, &picture)?;
    write_summary(
        &args.out_dir,
        &[
            ("model", format!("\"{MODEL}\"")),
            ("gradient", format!("\"{:?}\"", args.gradient)),
            ("method", format!("\"{}\"", args.method)),
            ("dt", json_number(args.dt)),
            ("iters", args.iters.to_string()),
            ("batch_size", args.batch_size.to_string()),
            ("seed", args.seed.to_string()),
            ("averaged", averaged.to_string()),
            ("w1", json_number(w1_trained)),
            ("w1_increments", json_number(w1_steps_trained)),
            ("w1_untrained", json_number(w1_untrained)),
            ("w1_increments_untrained", json_number(w1_steps_untrained)),
            ("w1_floor", json_number(w1_floor)),
            ("w1_increments_floor", json_number(w1_steps_floor)),
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

/// Left: 5–95% bands and medians of the real (blue) and generated (red) values at each
/// time. Right: 20 paths of each.
fn draw(ts: &[f64], real: &Tensor, fake: &Tensor, path: &std::path::Path) -> Result<()> {
    let (real, fake) = (
        real.to_dtype(DType::F64)?.to_device(&Device::Cpu)?,
        fake.to_dtype(DType::F64)?.to_device(&Device::Cpu)?,
    );
    let columns = |x: &Tensor| -> Result<Vec<Vec<f64>>> {
        let mut c = x.t()?.contiguous()?.to_vec2::<f64>()?;
        c.iter_mut().for_each(|c| c.sort_by(f64::total_cmp));
        Ok(c)
    };
    let (rc, fc) = (columns(&real)?, columns(&fake)?);
    let q = |c: &[Vec<f64>], p: f64| -> Vec<f64> {
        c.iter()
            .map(|v| v[((v.len() - 1) as f64 * p).round() as usize])
            .collect()
    };
    let ylim = plot::bounds(
        q(&rc, 0.01)
            .into_iter()
            .chain(q(&rc, 0.99))
            .chain(q(&fc, 0.01))
            .chain(q(&fc, 0.99)),
    );
    let xlim = (ts[0], ts[ts.len() - 1]);
    let mut c = plot::Canvas::new(1000, 400);
    let left = plot::Panel {
        x0: 20,
        y0: 20,
        w: 470,
        h: 360,
        xlim,
        ylim,
    };
    let right = plot::Panel { x0: 510, ..left };
    let (blue, red) = ([30, 144, 255], [220, 20, 60]);
    c.frame(&left);
    c.frame(&right);
    for (cols, color) in [(&rc, blue), (&fc, red)] {
        for p in [0.05, 0.5, 0.95] {
            c.series(&left, ts, &q(cols, p), color);
        }
    }
    let rows = |x: &Tensor| -> Result<Vec<Vec<f64>>> {
        Ok(x.narrow(0, 0, x.dim(0)?.min(20))?.to_vec2::<f64>()?)
    };
    for (paths, color) in [(rows(&real)?, blue), (rows(&fake)?, red)] {
        for p in &paths {
            c.series(&right, ts, p, color);
        }
    }
    c.save_png(path)
}
