//! Fits the four rates of the Lotka–Volterra predator–prey equations to a long, noisy series
//! by multiple shooting: the series cut into short segments, each solved from a start state
//! of its own (trained with the rates), with a penalty on the gaps between them. Single
//! shooting, one solve over the whole series, is there to compare: from the same first
//! guess its late predictions fall out of phase and it settles on wrong rates.
//! `--model neural` fits a neural ODE (an MLP field) to the same series the same ways.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;
#[path = "../common/plot.rs"]
mod plot;

use anyhow::{bail, Context, Result};
use candle_core::Module;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{pick_device, print_outputs, CheckpointArgs, DeviceArg, GradientArg};
use iterations::{Iterations, Plan};
use node_adjoint::with_params;
use node_models::{Activation, Mlp, MultipleShooting, Rng};
use node_solvers::{odeint, Method, SolveOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// The checkpoint's model names: the rates, the neural field.
const MODELS: [&str; 2] = ["lotka-volterra", "lotka-volterra-neural"];

/// The true rates (α, β, γ, δ): `x' = αx − βxy`, `y' = δxy − γy`.
const TRUTH: [f64; 4] = [1.5, 1.0, 3.0, 1.0];
/// The true initial state (prey, predators).
const Y0: [f64; 2] = [1.0, 1.0];
/// The rates' names, in order.
const NAMES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

/// `--shooting` choices.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum ShootingArg {
    /// Segments of `--intervals` observation intervals, each from a trained start state.
    Multiple,
    /// One solve over the whole series from a trained initial state.
    Single,
}

/// `--model` choices.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum ModelArg {
    /// Lotka–Volterra's equations with four unknown rates.
    Rates,
    /// A neural ODE: the whole field an MLP 2-width-width-2 (tanh).
    Neural,
}

/// Fit Lotka–Volterra's rates (α, β, γ, δ) = (1.5, 1, 3, 1) from a wrong first guess.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// What is fitted: the four rates, or a neural field in their place.
    #[arg(long, value_enum, default_value = "rates")]
    model: ModelArg,
    /// Width of the neural field's two hidden layers (`--model neural`).
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Single or multiple shooting.
    #[arg(long, value_enum, default_value = "multiple")]
    shooting: ShootingArg,
    /// Observation intervals per segment (multiple shooting).
    #[arg(long, default_value_t = 5)]
    intervals: usize,
    /// Weight of the continuity penalty (the mean square of the gaps between segments)
    /// against the data's mean square error.
    #[arg(long, default_value_t = 10.0)]
    continuity: f64,
    /// Keep the start states at the observations (DiffEqFlux's `multiple_shoot`) instead of
    /// training them with the model.
    #[arg(long)]
    fixed_starts: bool,
    /// Solve the segments one by one instead of in one batched solve (the field does not
    /// depend on t and the observations are evenly spaced, so the full segments batch).
    #[arg(long)]
    sequential: bool,
    /// Keep each segment's own steps and error control in the one batched solve
    /// (`MultipleShooting::independent`): the fit of `--sequential`, in one solve. With
    /// `--gradient adjoint` or `backprop`.
    #[arg(long)]
    independent: bool,
    /// Adam iterations (in total, counting resumed ones); default 1000 for the rates, 2000
    /// for the network.
    #[arg(long)]
    iters: Option<usize>,
    /// Adam's learning rate (on the logarithms of the rates or the network's weights, and on
    /// the start states); default 0.05 for the rates, 0.01 for the network.
    #[arg(long)]
    lr: Option<f64>,
    /// The first guess: the true rates times these factors (`--resume` ignores it).
    #[arg(long, value_delimiter = ',', default_values_t = [0.6, 1.5, 0.6, 1.5])]
    guess: Vec<f64>,
    /// Observations: this many evenly spaced times from 0 to `--t-end`, the first included.
    #[arg(long, default_value_t = 101)]
    observations: usize,
    /// The series' length in time (about 3.3 per period at the true rates).
    #[arg(long, default_value_t = 20.0)]
    t_end: f64,
    /// Noise of the observations (standard deviation, absolute).
    #[arg(long, default_value_t = 0.05)]
    noise: f64,
    /// The solver.
    #[arg(long, default_value = "dopri5")]
    method: Method,
    /// rtol of the solves (atol = rtol / 10).
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// How the solves are differentiated.
    #[arg(long, value_enum, default_value = "backprop")]
    gradient: GradientArg,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Random seed (the observations' noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics).
    #[arg(long, default_value = "runs/lotka-volterra")]
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

/// Lotka–Volterra's field on states `[batch, 2]` with rates `exp(u) ⊙ truth`.
fn field(u: &Tensor, truth: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let k = (truth * u.exp()?)?.to_dtype(y.dtype())?;
    let (x, p) = (y.narrow(1, 0, 1)?, y.narrow(1, 1, 1)?);
    let xp = (&x * &p)?;
    let k = |i: usize| k.narrow(0, i, 1);
    let dx = (x.broadcast_mul(&k(0)?)? - xp.broadcast_mul(&k(1)?)?)?;
    let dp = (xp.broadcast_mul(&k(3)?)? - p.broadcast_mul(&k(2)?)?)?;
    Tensor::cat(&[dx, dp], 1)
}

/// The fitted field.
#[derive(Clone)]
enum Model {
    /// Lotka–Volterra's with the log-factors `u` of the rates `truth`.
    Rates(Tensor, Tensor),
    /// A network.
    Neural(Mlp),
}

impl Model {
    fn eval(&self, y: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Model::Rates(u, truth) => field(u, truth, y),
            Model::Neural(net) => net.forward(y),
        }
    }
}

/// The series: the true solution at `ts`, tightly solved, with noise from a generator of its
/// own (the same on resume); `[n, 1, 2]` clean and observed.
fn series(ts: &[f64], noise: f64, seed: u64, dev: &Device) -> Result<(Tensor, Tensor)> {
    let zero = Tensor::zeros(4, DType::F64, dev)?;
    let truth = Tensor::new(&TRUTH, dev)?;
    let exact = move |_t: f64, y: &Tensor| field(&zero, &truth, y);
    let tight = SolveOptions::default()
        .method(Method::Dopri8)
        .tolerances(1e-11, 1e-12);
    let y0 = Tensor::new(&[Y0], dev)?;
    let clean = odeint(&exact, &y0, ts, &tight)?.ys;
    let eps = Rng::new(seed ^ 0x1075).normal_tensor(clean.dims(), 0.0, noise, DType::F64, dev)?;
    let observed = (&clean + eps)?;
    Ok((clean, observed))
}

/// Prey (top) and predators (bottom) against time: the observations as dots, the clean
/// series and the fitted model's rollout as lines.
fn draw(
    ts: &[f64],
    observed: &Tensor,
    clean: &Tensor,
    rollout: &Tensor,
    path: &std::path::Path,
) -> Result<()> {
    let column = |y: &Tensor, i: usize| -> Result<Vec<f64>> {
        Ok(y.narrow(2, i, 1)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let mut c = plot::Canvas::new(1000, 620);
    for i in 0..2 {
        let (obs, truth, fit) = (column(observed, i)?, column(clean, i)?, column(rollout, i)?);
        let panel = plot::Panel {
            x0: 10,
            y0: 10 + 305 * i,
            w: 980,
            h: 295,
            xlim: plot::bounds(ts.iter().copied()),
            ylim: plot::bounds(obs.iter().chain(&truth).copied()),
        };
        c.frame(&panel);
        c.series(&panel, ts, &truth, plot::TRUE_COLOR);
        c.series(&panel, ts, &fit, plot::LEARNED_COLOR);
        for (t, y) in ts.iter().zip(&obs) {
            c.dot(&panel, *t, *y, [90, 90, 90]);
        }
    }
    c.save_png(path)
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let mut args = Args::parse();
    let neural = args.model == ModelArg::Neural;
    let iters = *args.iters.get_or_insert(if neural { 2000 } else { 1000 });
    let lr = *args.lr.get_or_insert(if neural { 0.01 } else { 0.05 });
    if iters == 0 || args.checkpoint_every == 0 || args.intervals == 0 || args.width == 0 {
        bail!("--iters, --checkpoint-every, --intervals and --width must be positive");
    }
    if args.observations < 2 {
        bail!("--observations must be at least 2");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    if args.independent && args.sequential {
        bail!("--independent is a batched solve: not with --sequential");
    }
    if args.independent && !matches!(args.gradient, GradientArg::Adjoint | GradientArg::Backprop) {
        bail!("--independent takes --gradient adjoint or backprop");
    }
    if args.guess.len() != 4 {
        bail!(
            "--guess needs 4 factors, one per rate, got {}",
            args.guess.len()
        );
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !(positive(lr)
        && positive(args.rtol)
        && positive(args.t_end)
        && args.guess.iter().all(|&g| positive(g)))
    {
        bail!("--lr, --rtol, --t-end and the --guess factors must be positive numbers");
    }
    if !(args.noise.is_finite() && args.noise >= 0.0) {
        bail!("--noise must be a number ≥ 0");
    }
    if !(args.continuity.is_finite() && args.continuity >= 0.0) {
        bail!("--continuity must be a number ≥ 0");
    }
    let dev = pick_device(args.device)?;
    let opts = SolveOptions::default()
        .method(args.method)
        .tolerances(args.rtol, args.rtol / 10.0);
    let gradient = args
        .gradient
        .gradient(args.rtol, args.rtol / 10.0, &args.checkpoint);
    let n = args.observations;
    let ts: Vec<f64> = (0..n)
        .map(|i| args.t_end * i as f64 / (n - 1) as f64)
        .collect();
    let (clean, observed) = series(&ts, args.noise, args.seed, &dev)?;
    let shooting = MultipleShooting::new(match args.shooting {
        ShootingArg::Multiple => args.intervals,
        ShootingArg::Single => n - 1,
    })
    .batched(!args.sequential)
    .independent(args.independent);
    let targets = shooting.gather(&observed)?;

    // Trained: the rates' log-factors (or the network) and the segments' start states, these
    // initialised from the observations there.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
    let truth = Tensor::new(&TRUTH, &dev)?;
    let model = match args.model {
        ModelArg::Rates => Model::Rates(
            vb.get_with_hints(4, "log_factor", Init::Const(0.0))?,
            truth.clone(),
        ),
        ModelArg::Neural => Model::Neural(Mlp::new(
            2,
            2,
            args.width,
            2,
            Activation::Tanh,
            false,
            vb.pp("net"),
        )?),
    };
    let var = |name: &str| common::var(&varmap, name);
    let first_starts = shooting.starts_from(&observed)?;
    let trained_starts = if args.fixed_starts {
        None
    } else {
        vb.get_with_hints(first_starts.dims(), "starts", Init::Const(0.0))?;
        Some(var("starts")?)
    };
    let starts = match &trained_starts {
        Some(v) => v.as_tensor().clone(),
        None => first_starts.clone(),
    };
    let params = match &model {
        Model::Rates(..) => vec![var("log_factor")?],
        Model::Neural(net) => net.vars()?,
    };
    // The rates' log-factors, for the metrics and the summary.
    let u = match &model {
        Model::Rates(u, _) => Some(u.clone()),
        Model::Neural(_) => None,
    };
    let f = with_params(move |_t: f64, y: &Tensor| model.eval(y), params.clone());
    let plan = Plan {
        model: MODELS[args.model as usize],
        out_dir: &args.out_dir,
        iters,
        every: args.checkpoint_every,
        stop_after: args.stop_after_steps,
        resume: args.resume,
        seed: args.seed,
        lr,
        extra_json: format!(
            "\"shooting\":\"{:?}\",\"intervals\":{},\"continuity\":{},\"method\":\"{}\",\"noise\":{},",
            args.shooting, shooting.intervals, args.continuity, args.method, args.noise
        ),
    };
    let mut run = Iterations::start(plan, &varmap, &dev)?;
    if run.start == 0 {
        if u.is_some() {
            let guess: Vec<f64> = args.guess.iter().map(|g| g.ln()).collect();
            params[0].set(&Tensor::new(guess, &dev)?)?;
        }
        if let Some(v) = &trained_starts {
            v.set(&first_starts)?;
        }
    }
    let segments = shooting.segments(n)?.len();
    let what = match args.model {
        ModelArg::Rates => format!("Lotka–Volterra's rates from {:?} × the truth", args.guess),
        ModelArg::Neural => format!("a neural ODE (MLP 2-{0}-{0}-2)", args.width),
    };
    println!(
        "{what}, {n} observations over [0, {}] with noise {}; {} shooting ({segments} segment{}), {} with {:?}, on {dev:?}; iterations {}..{}",
        args.t_end,
        args.noise,
        match args.shooting {
            ShootingArg::Multiple => "multiple",
            ShootingArg::Single => "single",
        },
        if segments == 1 { "" } else { "s" },
        args.method,
        args.gradient,
        run.start + 1,
        iters
    );
    let rates = |u: &Tensor| -> Result<Vec<f64>> { Ok((&truth * u.exp()?)?.to_vec1::<f64>()?) };
    for it in run.remaining() {
        let sol = shooting
            .solve(&f, &starts, &ts, &opts, &gradient)
            .with_context(|| {
                format!(
                    "the solve failed at iteration {} (a lower --lr keeps the rates and states in range)",
                    it + 1
                )
            })?;
        let data = (&sol.ys - &targets)?.sqr()?.mean_all()?;
        let gaps = sol.continuity_loss()?;
        let loss = (&data + gaps.affine(args.continuity, 0.0)?)?;
        run.opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f64>()?;
        if !l.is_finite() {
            bail!("the loss became {l} at iteration {}: lower --lr", it + 1);
        }
        let mut values = vec![
            ("rmse", data.to_scalar::<f64>()?.sqrt()),
            ("gap", gaps.to_scalar::<f64>()?.sqrt()),
        ];
        if let Some(u) = &u {
            values.extend(NAMES.into_iter().zip(rates(u)?));
        }
        values.push(("nfe", sol.nfe_forward() as f64));
        if let Some(code) = run.record(it, &values, &varmap)? {
            return Ok(code);
        }
    }
    let (metrics, ckpt) = run.finish();

    // The fitted model rolled out over the whole series from its first start state, against
    // the clean solution: what the fit is for.
    let tight = SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(1e-8, 1e-9);
    let rollout = odeint(&f, &starts.get(0)?.detach(), &ts, &tight)
        .context("the fitted model's rollout over the whole series failed")?
        .ys;
    let picture = args.out_dir.join("rollout.png");
    draw(&ts, &observed, &clean, &rollout, &picture)?;
    let rollout_rmse = (rollout - &clean)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f64>()?
        .sqrt();
    if let Some(u) = &u {
        let k = rates(u)?;
        println!("| rate | truth | first guess | fitted | relative error |");
        println!("|---|---|---|---|---|");
        for i in 0..4 {
            println!(
                "| {} | {} | {:.3} | {:.4} | {:.1e} |",
                NAMES[i],
                TRUTH[i],
                TRUTH[i] * args.guess[i],
                k[i],
                (k[i] - TRUTH[i]).abs() / TRUTH[i]
            );
        }
    }
    println!(
        "rollout RMSE against the clean series over [0, {}]: {rollout_rmse:.4}",
        args.t_end
    );
    print_outputs(&[
        ("metrics", metrics.as_path()),
        ("checkpoint", ckpt.as_path()),
        ("picture", picture.as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}
