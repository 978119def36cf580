//! Trains a Hamiltonian neural network (Greydanus, Dzamba & Yosinski 2019) or its baseline on
//! the paper's ideal mass–spring or pendulum, then rolls the learned dynamics out far past
//! the training window and measures how well they keep the true energy.
//!
//! With `--loss rollout` the models learn from the observed trajectories alone, without their
//! time derivatives: rollouts from learned initial states are fitted to the noisy
//! observations (Chen et al. 2020, *Symplectic Recurrent Neural Networks*). The separable
//! model rolls out by leapfrog, its gradients from walking the steps back; the others by RK4.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/iterations.rs"]
mod iterations;
#[path = "../common/plot.rs"]
mod plot;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use clap::Parser;
use common::{json_number, pick_device, print_outputs, write_summary, DeviceArg};
use iterations::{Iterations, Plan};
use node_adjoint::odeint_symplectic_adjoint;
use node_models::hnn::{hnn_dataset, Hnn, HnnConfig, HnnKind, HnnSystem};
use node_models::{Activation, Rng};
use node_solvers::{odeint, odeint_symplectic, Method, SolveOptions, SymplecticOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The checkpoint's model name.
const MODEL: &str = "hnn";

/// `--system` choices.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SystemArg {
    /// `H = q² + p²`.
    Spring,
    /// `H = 3(1 − cos q) + p²`.
    Pendulum,
}

/// `--model` choices.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModelArg {
    /// An MLP that predicts `dx/dt` (the paper's baseline).
    Baseline,
    /// An MLP `H(q, p)` moved along its symplectic gradient.
    Hnn,
    /// `H = T(p) + V(q)`, rolled out by leapfrog.
    Separable,
}

/// `--loss` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LossArg {
    /// The paper's: the MSE of the predicted time derivatives at the observed states.
    Derivative,
    /// The MSE of rollouts over stretches of the training trajectories, from learned initial
    /// states, against the observed states; no derivatives needed. The separable model rolls
    /// out by leapfrog, the others by RK4, with the same steps.
    Rollout,
}

impl LossArg {
    fn name(self) -> &'static str {
        match self {
            LossArg::Derivative => "derivative",
            LossArg::Rollout => "rollout",
        }
    }
}

/// Train an HNN or its baseline on the paper's spring or pendulum.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The physical system.
    #[arg(long, value_enum, default_value = "spring")]
    system: SystemArg,
    /// What is learned.
    #[arg(long, value_enum, default_value = "hnn")]
    model: ModelArg,
    /// What is fitted: time derivatives (the paper's) or rollouts of the observed states.
    #[arg(long, value_enum, default_value = "derivative")]
    loss: LossArg,
    /// With `--loss rollout`: leapfrog (RK4) steps per interval between observations.
    #[arg(long, default_value_t = 1)]
    rollout_substeps: usize,
    /// With `--loss rollout`: observation intervals per rollout; each trajectory is cut into
    /// stretches this long (the last one overlapping), each rolled out from its own learned
    /// initial state (0: whole trajectories).
    #[arg(long, default_value_t = 11)]
    rollout_length: usize,
    /// Full-batch Adam steps (in total, counting resumed ones); the paper's 2000.
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    /// Adam's learning rate (the paper's).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// L2 weight decay (the paper's).
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Width of the hidden layers (the paper's).
    #[arg(long, default_value_t = 200)]
    width: usize,
    /// Hidden layers (the paper's 2).
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Trajectories, half to train on and half held out (the paper's 50).
    #[arg(long, default_value_t = 50)]
    trajectories: usize,
    /// Standard deviation of the noise on the observed states (the paper's 0.1).
    #[arg(long, default_value_t = 0.1)]
    noise: f64,
    /// The held-out rollouts run over t in [0, horizon] (the training window is [0, 3]).
    #[arg(long, default_value_t = 20.0)]
    horizon: f64,
    /// Points of each rollout where the state and energy are compared.
    #[arg(long, default_value_t = 200)]
    rollout_points: usize,
    /// Step of the separable model's leapfrog rollout (the others: dopri5 at rtol = atol
    /// = 1e-6).
    #[arg(long, default_value_t = 0.01)]
    leapfrog_step: f64,
    /// Random seed (data, initialisation).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Output directory (checkpoint, metrics, summary, picture).
    #[arg(long, default_value = "runs/hnn")]
    out_dir: PathBuf,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// Write the checkpoint and a metrics line every this many iterations.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Stop after this many iterations of this run, with a checkpoint (`--resume` goes on
    /// from there); SIGINT/SIGTERM stop the same way after the iteration in progress.
    #[arg(long)]
    stop_after_steps: Option<usize>,
}

fn main() -> Result<ExitCode> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.iters == 0 || args.checkpoint_every == 0 || args.rollout_points < 2 {
        bail!("--iters and --checkpoint-every must be positive, --rollout-points at least 2");
    }
    if args.trajectories < 2 {
        bail!("--trajectories must be at least 2 (half are held out)");
    }
    if args.stop_after_steps == Some(0) {
        bail!("--stop-after-steps must be positive");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let not_negative = |v: f64| v.is_finite() && v >= 0.0;
    let all_positive = [args.lr, args.horizon, args.leapfrog_step]
        .into_iter()
        .all(positive);
    if !all_positive || !not_negative(args.noise) || !not_negative(args.weight_decay) {
        bail!("--lr, --horizon and --leapfrog-step must be positive, --noise and --weight-decay not negative");
    }
    if args.rollout_substeps == 0 {
        bail!("--rollout-substeps must be positive");
    }
    let dev = pick_device(args.device)?;
    node_kernels::skip_unused_cuda_events(&dev);
    let system = match args.system {
        SystemArg::Spring => HnnSystem::Spring,
        SystemArg::Pendulum => HnnSystem::Pendulum,
    };
    let kind = match args.model {
        ModelArg::Baseline => HnnKind::Baseline,
        ModelArg::Hnn => HnnKind::Hamiltonian,
        ModelArg::Separable => HnnKind::Separable,
    };
    // The data from their own generator, so that a resumed run sees the same.
    let mut data_rng = Rng::new(args.seed ^ 0x6861_6d69);
    let n_train = args.trajectories / 2;
    let train = hnn_dataset(system, n_train, args.noise, &mut data_rng, DType::F32, &dev)?;
    let test = hnn_dataset(
        system,
        args.trajectories - n_train,
        args.noise,
        &mut data_rng,
        DType::F32,
        &dev,
    )?;

    let cfg = HnnConfig {
        dof: 1,
        width: args.width,
        depth: args.depth,
        activation: Activation::Tanh,
        kind,
    };
    let varmap = VarMap::new();
    let model = Hnn::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
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
            "\"system\":\"{}\",\"kind\":\"{}\",\"loss\":\"{}\",",
            system.name(),
            kind.name(),
            args.loss.name()
        ),
    };
    // Rollouts: the observations of stretches of `k` intervals of every training trajectory
    // `[k + 1, stretches, 2]`, and each stretch's initial state, a variable (checkpointed with
    // the model) that starts at its first, noisy, observation. The system is autonomous and
    // the observations evenly spaced: every stretch runs over `times[..=k]`.
    let times = system.times();
    let last = times.len() - 1;
    let k = match args.rollout_length {
        0 => last,
        k => k.min(last),
    };
    let mut starts: Vec<usize> = (0..=last - k).step_by(k).collect();
    if starts.last().is_some_and(|&s| s + k < last) {
        starts.push(last - k);
    }
    let by_time = train
        .x
        .reshape((n_train, times.len(), 2))?
        .transpose(0, 1)?
        .contiguous()?;
    let stretches: Vec<Tensor> = starts
        .iter()
        .map(|&s| by_time.narrow(0, s, k + 1))
        .collect::<candle_core::Result<_>>()?;
    let observed = Tensor::cat(&stretches, 1)?;
    let rollout_times = times[..=k].to_vec();
    let initial = match args.loss {
        LossArg::Derivative => None,
        LossArg::Rollout => {
            let x0 = Var::from_tensor(&observed.get(0)?)?;
            varmap
                .data()
                .lock()
                .map_err(|_| anyhow::anyhow!("the variables' lock is poisoned"))?
                .insert("initial_states".into(), x0.clone());
            Some(x0)
        }
    };
    let mut run = Iterations::start_with(plan, &varmap, &dev, || {
        // After the default initialisation, which reaches every variable.
        if let Some(x0) = &initial {
            x0.set(&observed.get(0)?)?;
        }
        Ok(())
    })?;
    run.opt.set_weight_decay(args.weight_decay);
    if let Some(x0) = &initial {
        // Weight decay is a prior on the weights, not on the initial states. Adam holds the
        // variables sorted by name.
        let scales = node_adjoint::sorted_vars(&varmap)
            .iter()
            .map(|v| f64::from(u8::from(v.as_tensor().id() != x0.as_tensor().id())))
            .collect();
        run.opt.set_weight_decay_scales(scales)?;
    }
    println!(
        "{} ({} parameters) on {dev:?}; the {}: {} training and {} held-out trajectories of {} points, noise {}; iterations {}..{}",
        kind.name(),
        run.n_params,
        system.name(),
        n_train,
        args.trajectories - n_train,
        system.times().len(),
        args.noise,
        run.start + 1,
        args.iters
    );
    let mse = |x: &Tensor, dx: &Tensor| -> candle_core::Result<Tensor> {
        (model.time_derivative(x)? - dx)?.sqr()?.mean_all()
    };
    // A step a little longer than the interval's share: round-off cannot add a step.
    let spacing = rollout_times[1] - rollout_times[0];
    let rollout_opts =
        SymplecticOptions::new(spacing / args.rollout_substeps as f64 * (1.0 + 1e-9));
    let n_sub = args.rollout_substeps;
    let grid: Vec<f64> = rollout_times
        .windows(2)
        .flat_map(|w| (0..n_sub).map(move |i| w[0] + (w[1] - w[0]) * (i as f64 / n_sub as f64)))
        .chain([rollout_times[k]])
        .collect();
    let rk4 = SolveOptions::default().method(Method::Rk4).step_grid(grid);
    // The separable model's leapfrog steps are walked back for their gradients; the others'
    // few RK4 steps are backpropagated.
    let rollout_loss = |x0: &Tensor| -> candle_core::Result<Tensor> {
        let xs = if kind == HnnKind::Separable {
            let (q0, p0) = (x0.narrow(1, 0, 1)?, x0.narrow(1, 1, 1)?);
            let sol = odeint_symplectic_adjoint(&model, &q0, &p0, &rollout_times, &rollout_opts)?;
            Tensor::cat(&[sol.qs, sol.ps], 2)?
        } else {
            odeint(&model, x0, &rollout_times, &rk4)?.ys
        };
        (xs - &observed)?.sqr()?.mean_all()
    };
    for it in run.remaining() {
        let loss = match &initial {
            None => mse(&train.x, &train.dx)?,
            Some(x0) => rollout_loss(x0.as_tensor())?,
        };
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
    let train_mse = mse(&train.x, &train.dx)?.to_scalar::<f32>()? as f64;
    let test_mse = mse(&test.x, &test.dx)?.to_scalar::<f32>()? as f64;
    let roll = rollouts(&model, system, &test.initial, &args, &dev)?;
    println!(
        "derivative MSE: training {train_mse:.3e}, held out {test_mse:.3e}; rollouts over [0, {}]: state MSE {:.3e}, true-energy MSE {:.3e}{}",
        args.horizon,
        roll.state_mse,
        roll.energy_mse,
        match roll.learned_drift {
            Some(d) => format!(", learned energy moved by at most {d:.2e}"),
            None => String::new(),
        }
    );
    roll.plot(system, &args.out_dir.join("rollouts.png"))?;
    write_summary(
        &args.out_dir,
        &[
            ("model", format!("\"{MODEL}\"")),
            ("system", format!("\"{}\"", system.name())),
            ("kind", format!("\"{}\"", kind.name())),
            ("loss", format!("\"{}\"", args.loss.name())),
            ("iters", args.iters.to_string()),
            ("seed", args.seed.to_string()),
            ("train_mse", json_number(train_mse)),
            ("test_mse", json_number(test_mse)),
            ("horizon", json_number(args.horizon)),
            ("rollout_state_mse", json_number(roll.state_mse)),
            ("rollout_energy_mse", json_number(roll.energy_mse)),
            (
                "learned_energy_drift",
                roll.learned_drift.map_or("null".into(), json_number),
            ),
        ],
    )?;
    print_outputs(&[
        ("metrics", metrics_path.as_path()),
        ("checkpoint", ckpt_path.as_path()),
        ("summary", args.out_dir.join("summary.json").as_path()),
        ("picture", args.out_dir.join("rollouts.png").as_path()),
    ]);
    Ok(ExitCode::SUCCESS)
}

/// The held-out rollouts against the truth.
struct Rollouts {
    ts: Vec<f64>,
    /// Per trajectory: the true and the learned `(q, p)` at `ts`.
    truth: Vec<Vec<(f64, f64)>>,
    learned: Vec<Vec<(f64, f64)>>,
    state_mse: f64,
    /// Mean over trajectories and times of `(H(x̂(t)) − H(x0))²`, `H` the true energy.
    energy_mse: f64,
    /// The largest change of the learned energy along a rollout (HNNs only).
    learned_drift: Option<f64>,
}

/// Rolls the model out from each held-out initial state over `[0, horizon]`: dopri5, or
/// leapfrog for the separable model.
fn rollouts(
    model: &Hnn,
    system: HnnSystem,
    initial: &[(f64, f64)],
    args: &Args,
    dev: &Device,
) -> Result<Rollouts> {
    let n = args.rollout_points;
    let ts: Vec<f64> = (0..n)
        .map(|i| args.horizon * i as f64 / (n - 1) as f64)
        .collect();
    let x0: Vec<f32> = initial
        .iter()
        .flat_map(|&(q, p)| [q as f32, p as f32])
        .collect();
    let x0 = Tensor::from_vec(x0, (initial.len(), 2), dev)?;
    // [T, B, 2], no graph.
    let ys = if model.config().kind == HnnKind::Separable {
        let opts = SymplecticOptions::new(args.leapfrog_step);
        let sol = odeint_symplectic(
            model,
            &x0.narrow(1, 0, 1)?,
            &x0.narrow(1, 1, 1)?,
            &ts,
            &opts,
        )?;
        Tensor::cat(&[sol.qs, sol.ps], 2)?
    } else {
        let opts = SolveOptions::default().tolerances(1e-6, 1e-6);
        odeint(model, &x0, &ts, &opts)?.ys
    }
    .detach();
    let learned_drift = match model.config().kind {
        HnnKind::Baseline => None,
        _ => {
            let h = model
                .energy(&ys.flatten_to(1)?)?
                .reshape((n, initial.len()))?;
            let h0 = h.get(0)?.unsqueeze(0)?;
            Some(h.broadcast_sub(&h0)?.abs()?.max_all()?.to_scalar::<f32>()? as f64)
        }
    };
    let values = ys
        .to_dtype(DType::F64)?
        .permute((1, 0, 2))?
        .to_vec3::<f64>()?;
    let (mut state_se, mut energy_se, mut count) = (0.0, 0.0, 0.0);
    let (mut truth, mut learned) = (vec![], vec![]);
    for (&(q0, p0), rows) in initial.iter().zip(values) {
        let true_path = system.trajectory(q0, p0, &ts);
        let e0 = system.hamiltonian(q0, p0);
        let path: Vec<(f64, f64)> = rows.iter().map(|r| (r[0], r[1])).collect();
        for (&(q, p), &(qt, pt)) in path.iter().zip(&true_path) {
            state_se += ((q - qt).powi(2) + (p - pt).powi(2)) / 2.0;
            energy_se += (system.hamiltonian(q, p) - e0).powi(2);
            count += 1.0;
        }
        truth.push(true_path);
        learned.push(path);
    }
    Ok(Rollouts {
        ts,
        truth,
        learned,
        state_mse: state_se / count,
        energy_mse: energy_se / count,
        learned_drift,
    })
}

impl Rollouts {
    /// Left: phase portraits of three held-out rollouts (blue: true, orange: learned).
    /// Right: the true energy of each learned rollout against time, true energies in blue.
    fn plot(&self, system: HnnSystem, path: &Path) -> Result<()> {
        let shown = self.truth.len().min(3);
        let all = || {
            self.truth[..shown]
                .iter()
                .chain(&self.learned[..shown])
                .flatten()
        };
        let left = plot::square_panel(10, 10, 480, all().map(|s| s.0), all().map(|s| s.1));
        let energies: Vec<Vec<f64>> = self
            .learned
            .iter()
            .map(|p| p.iter().map(|&(q, p)| system.hamiltonian(q, p)).collect())
            .collect();
        let true_energies: Vec<f64> = self
            .truth
            .iter()
            .map(|p| system.hamiltonian(p[0].0, p[0].1))
            .collect();
        let ylim = plot::bounds(energies.iter().flatten().chain(&true_energies).copied());
        let right = plot::Panel {
            x0: 510,
            y0: 10,
            w: 480,
            h: 480,
            xlim: (0.0, self.ts[self.ts.len() - 1]),
            ylim,
        };
        let mut c = plot::Canvas::new(1000, 500);
        c.frame(&left);
        c.frame(&right);
        for i in 0..shown {
            let (tq, tp): (Vec<f64>, Vec<f64>) = self.truth[i].iter().copied().unzip();
            let (lq, lp): (Vec<f64>, Vec<f64>) = self.learned[i].iter().copied().unzip();
            c.series(&left, &tq, &tp, plot::TRUE_COLOR);
            c.series(&left, &lq, &lp, plot::LEARNED_COLOR);
        }
        for (e, &e0) in energies.iter().zip(&true_energies) {
            c.series(&right, &self.ts, &vec![e0; self.ts.len()], plot::TRUE_COLOR);
            c.series(&right, &self.ts, e, plot::LEARNED_COLOR);
        }
        c.save_png(path)
    }
}
