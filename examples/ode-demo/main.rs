//! torchdiffeq's `ode_demo`: learn the spiral dynamics `dy/dt = y³ A` from samples of one
//! trajectory, with an MLP vector field trained by backprop through the solver.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/plot.rs"]
mod plot;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW, VarMap};
use clap::Parser;
use common::{log, pick_device, DeviceArg};
use indicatif::{ProgressBar, ProgressStyle};
use node_models::Linear;
use node_models::Rng;
use node_solvers::{odeint, Method, SolveOptions, SolverError};
use plot::{bounds, Canvas, Panel, LEARNED_COLOR, TRUE_COLOR};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Learn the spiral dynamics dy/dt = y³A (A = [[-0.1, 2], [-2, -0.1]], y0 = [2, 0],
/// t in [0, 25]) with an MLP vector field, trained by backprop through the ODE solver.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// ODE method (dopri5, tsit5, bosh3, rk4, ...).
    #[arg(long, default_value = "dopri5")]
    method: Method,
    /// Relative tolerance of adaptive methods.
    #[arg(long, default_value_t = 1e-7)]
    rtol: f64,
    /// Absolute tolerance of adaptive methods.
    #[arg(long, default_value_t = 1e-9)]
    atol: f64,
    /// Fixed step size (required by fixed-step methods such as rk4).
    #[arg(long)]
    step_size: Option<f64>,
    /// Number of points of the true trajectory.
    #[arg(long, default_value_t = 1000)]
    data_size: usize,
    /// Length (in points) of the trajectory segments trained on.
    #[arg(long, default_value_t = 10)]
    batch_time: usize,
    /// Segments per training batch.
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
    /// Training iterations.
    #[arg(long, default_value_t = 2000)]
    niters: usize,
    /// Evaluate the whole trajectory every this many iterations.
    #[arg(long, default_value_t = 20)]
    test_freq: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Random seed (initialisation and batches).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Where to write the plot of true vs learned trajectories.
    #[arg(long, default_value = "ode-demo.png")]
    plot: PathBuf,
}

/// The learned field: `f(y) = Linear(50→2)(tanh(Linear(2→50)(y³)))`, weights N(0, 0.1), zero
/// biases, as torchdiffeq's `ODEFunc`.
struct OdeFunc {
    l1: Linear,
    l2: Linear,
}

impl OdeFunc {
    fn new(varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let mut linear = |name: &str, din: usize, dout: usize| -> Result<Linear> {
            let w = rng.normal_tensor(&[dout, din], 0.0, 0.1, DType::F32, dev)?;
            let b = Tensor::zeros(dout, DType::F32, dev)?;
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned var map"))?;
            let w = candle_core::Var::from_tensor(&w)?;
            let b = candle_core::Var::from_tensor(&b)?;
            data.insert(format!("{name}.weight"), w.clone());
            data.insert(format!("{name}.bias"), b.clone());
            Ok(Linear::new(
                w.as_tensor().clone(),
                Some(b.as_tensor().clone()),
            ))
        };
        Ok(Self {
            l1: linear("l1", 2, 50)?,
            l2: linear("l2", 50, 2)?,
        })
    }

    fn eval(&self, y: &Tensor) -> candle_core::Result<Tensor> {
        let h = node_kernels::tanh(&self.l1.forward(&(y * y.sqr()?)?)?)?;
        self.l2.forward(&h)
    }
}

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.batch_time < 2 || args.batch_time > args.data_size {
        bail!("--batch-time must be in 2..=--data-size");
    }
    if args.batch_size == 0 || args.test_freq == 0 {
        bail!("--batch-size and --test-freq must be at least 1");
    }
    if !(args.lr.is_finite() && args.lr >= 0.0) {
        bail!("--lr must be a finite number >= 0");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);
    let mut opts = SolveOptions::default()
        .method(args.method)
        .tolerances(args.rtol, args.atol);
    if let Some(h) = args.step_size {
        opts = opts.step_size(h);
    }
    opts.validate().context("solver options")?;

    // The true trajectory, solved once at tight tolerances.
    let t: Vec<f64> = (0..args.data_size)
        .map(|i| 25.0 * i as f64 / (args.data_size - 1) as f64)
        .collect();
    let true_a = Tensor::new(&[[-0.1f32, 2.0], [-2.0, -0.1]], &dev)?;
    let true_field = |_t: f64, y: &Tensor| (y * y.sqr()?)?.matmul(&true_a);
    let true_y0 = Tensor::new(&[[2.0f32, 0.0]], &dev)?;
    let true_y = odeint(&true_field, &true_y0, &t, &SolveOptions::default())?
        .ys
        .squeeze(1)?; // [N, 2]

    let mut rng = Rng::new(args.seed);
    let varmap = VarMap::new();
    let func = OdeFunc::new(&varmap, &mut rng, &dev)?;
    let field = |_t: f64, y: &Tensor| func.eval(y);
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: args.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;

    let batch_t = &t[..args.batch_time];
    let pb = ProgressBar::new(args.niters as u64);
    pb.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    let start = Instant::now();
    let mut test_loss = f64::NAN;
    let mut pred_full: Option<Tensor> = None;
    for itr in 1..=args.niters {
        // Random segments of the true trajectory: y0 [M, 2], targets [T, M, 2].
        let starts: Vec<u32> = (0..args.batch_size)
            .map(|_| rng.below(args.data_size - args.batch_time) as u32)
            .collect();
        let idx = Tensor::new(starts.as_slice(), &dev)?;
        let batch_y0 = true_y.index_select(&idx, 0)?;
        let batch_y = (0..args.batch_time)
            .map(|i| true_y.index_select(&idx.affine(1.0, i as f64)?, 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let batch_y = Tensor::stack(&batch_y, 0)?;
        let sol = odeint(&field, &batch_y0, batch_t, &opts).map_err(explain)?;
        let loss = (sol.ys - batch_y)?.abs()?.mean_all()?;
        opt.backward_step(&loss)?;
        pb.set_message(format!(
            "loss {:.4} NFE {} test loss {test_loss:.4}",
            loss.to_scalar::<f32>()?,
            sol.stats.nfe
        ));
        pb.inc(1);
        if itr % args.test_freq == 0 || itr == args.niters {
            let full = odeint(&field, &true_y0, &t, &opts).map_err(explain)?;
            let pred = full.ys.squeeze(1)?.detach();
            test_loss = (&pred - &true_y)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
            log(
                &pb,
                format!(
                    "iter {itr:5} | test loss {test_loss:.6} | NFE {}",
                    full.stats.nfe
                ),
            );
            pred_full = Some(pred);
        }
    }
    pb.finish();
    println!(
        "trained {} iterations in {:.1?} on {:?}",
        args.niters,
        start.elapsed(),
        dev
    );

    if let Some(pred) = pred_full {
        write_plot(&args.plot, &t, &true_y, &pred)?;
        println!(
            "wrote {} (blue: true, orange: learned; left x/y against t, right y against x)",
            args.plot.display()
        );
    }
    Ok(())
}

/// Adds a hint to solver failures during training.
fn explain(e: candle_core::Error) -> anyhow::Error {
    match SolverError::find(&e) {
        Some(SolverError::MaxStepsExceeded { .. } | SolverError::StepSizeTooSmall { .. }) => {
            anyhow::anyhow!("{e}\nthe learned dynamics became stiff; try a smaller --lr or looser --rtol/--atol")
        }
        _ => e.into(),
    }
}

fn write_plot(path: &Path, t: &[f64], true_y: &Tensor, pred: &Tensor) -> Result<()> {
    let cols = |y: &Tensor| -> Result<(Vec<f64>, Vec<f64>)> {
        let y = y.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
        Ok((
            y.narrow(D::Minus1, 0, 1)?.flatten_all()?.to_vec1()?,
            y.narrow(D::Minus1, 1, 1)?.flatten_all()?.to_vec1()?,
        ))
    };
    let (tx, ty) = cols(true_y)?;
    let (px, py) = cols(pred)?;
    let mut c = Canvas::new(1200, 500);
    let ylim = bounds(tx.iter().chain(&ty).cloned());
    let left = Panel {
        x0: 40,
        y0: 40,
        w: 620,
        h: 420,
        xlim: (t[0], t[t.len() - 1]),
        ylim,
    };
    let lim = bounds(tx.iter().chain(&ty).cloned());
    let right = Panel {
        x0: 720,
        y0: 40,
        w: 420,
        h: 420,
        xlim: lim,
        ylim: lim,
    };
    c.frame(&left);
    c.frame(&right);
    c.series(&left, t, &tx, TRUE_COLOR);
    c.series(&left, t, &ty, TRUE_COLOR);
    c.series(&left, t, &px, LEARNED_COLOR);
    c.series(&left, t, &py, LEARNED_COLOR);
    c.series(&right, &tx, &ty, TRUE_COLOR);
    c.series(&right, &px, &py, LEARNED_COLOR);
    c.save_png(path)
}
