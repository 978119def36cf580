//! Memory, leak, backward-NFE and time benchmarks of the adjoint, beside backprop through the
//! solver, checkpointed backprop (64 stored states) and reversible backprop (λ = 0.999). `cargo bench -p node-adjoint --bench adjoint [-- memory|leak|norms|time]`.
//!
//! - memory: peak resident memory of one gradient (RSS high-water mark above the RSS after
//!   set-up, each variant in a fresh process) for RK4 with 10/100/1000 fixed steps, batch
//!   256, state 64, MLP 64-256-64 tanh, L = Σ z(1)² (the peer script `memory_scaling.py`).
//! - leak: RSS over 300 training steps (gradient + SGD update) of the same problem, with the
//!   adjoint, checkpointing and reversible backprop.
//! - norms: backward NFE of the seminorm and the full norm on the `ode_demo` MLP.
//! - time: one gradient of the `ode_demo` problem (the peer script `adjoint_grad.py`).
//! - steady: one gradient of an equilibrium model's steady state (batch 256, state 64,
//!   `dy/dt = 0.2 MLP(y) − y`, MLP 64-256-64 tanh, L = Σ y*²) by the implicit function
//!   theorem, beside backprop through a solve to t = 30 and the adjoint of that solve: time
//!   and peak memory, each variant in a fresh process.
//! - independent: one gradient of a batch of independent problems (batch 256, state 64,
//!   `dy/dt = MLP(y) − λ_b y` with `λ_b` from 0.1 to 10, each sample to its own `T_b` in
//!   `[1, 2]`, L = Σ y(T_b)², dopri5 at 1e-6): the adjoint of `odeint_independent` beside
//!   backprop through it: time and peak memory, each variant in a fresh process.

use candle_core::{Device, Result, Tensor, Var};
use node_adjoint::{
    odeint_adjoint, odeint_checkpointed, odeint_independent_adjoint, odeint_reversible_adjoint,
    odeint_steady_state_adjoint, with_batch_params, with_params, AdjointNorm, AdjointOptions,
    CheckpointOptions, ParamVectorField, ReversibleOptions,
};
use node_solvers::{
    odeint, odeint_independent, Method, SolveOptions, SteadyStateOptions, VectorField,
};
use std::collections::HashMap;
use std::time::Instant;

#[path = "../tests/common/mlp.rs"]
mod mlp;
use mlp::Mlp;

fn status_kib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// How a gradient is computed.
#[derive(Clone, Copy)]
enum Mode<'a> {
    Direct,
    Adjoint(&'a AdjointOptions),
    Checkpoint(&'a CheckpointOptions),
    Reversible(&'a ReversibleOptions),
}

impl Mode<'_> {
    fn parse(name: &str) -> Option<Mode<'static>> {
        static ADJ: std::sync::OnceLock<AdjointOptions> = std::sync::OnceLock::new();
        static CK: CheckpointOptions = CheckpointOptions { checkpoints: 64 };
        static REV: ReversibleOptions = ReversibleOptions {
            coupling: node_solvers::DEFAULT_COUPLING,
        };
        match name {
            "direct" => Some(Mode::Direct),
            "adjoint" => Some(Mode::Adjoint(ADJ.get_or_init(AdjointOptions::default))),
            "checkpoint" => Some(Mode::Checkpoint(&CK)),
            "reversible" => Some(Mode::Reversible(&REV)),
            _ => None,
        }
    }
}

fn gradient(
    f: &Mlp,
    z0: &Tensor,
    opts: &SolveOptions,
    mode: Mode,
) -> Result<(Tensor, usize, usize)> {
    let (ys, nfe_f, stats) = match mode {
        Mode::Adjoint(a) => {
            let s = odeint_adjoint(f, z0, &[0.0, 1.0], opts, a)?;
            (s.ys, s.stats.forward().nfe, Some(s.stats))
        }
        Mode::Checkpoint(c) => {
            let s = odeint_checkpointed(f, z0, &[0.0, 1.0], opts, c)?;
            (s.ys, s.stats.forward().nfe, Some(s.stats))
        }
        Mode::Reversible(r) => {
            let s = odeint_reversible_adjoint(f, z0, &[0.0, 1.0], opts, r)?;
            (s.ys, s.stats.forward().nfe, Some(s.stats))
        }
        Mode::Direct => {
            let s = odeint(f, z0, &[0.0, 1.0], opts)?;
            (s.ys, s.stats.nfe, None)
        }
    };
    let loss = ys.get(1)?.sqr()?.sum_all()?;
    let g = loss.backward()?;
    let nfe_b = stats.map(|s| s.backward().nfe).unwrap_or(0);
    Ok((g.get(&f.w1).unwrap().clone(), nfe_f, nfe_b))
}

/// Runs in a child process: one gradient, prints `peak_delta_mib nfe_f nfe_b`.
fn memory_child(mode: &str, steps: usize) -> Result<()> {
    let dev = Device::Cpu;
    let f = Mlp::random(64, 256, &dev)?;
    let z0 = Var::from_tensor(&Tensor::randn(0f32, 1.0, (256, 64), &dev)?)?;
    let opts = SolveOptions::default()
        .method(Method::Rk38)
        .fixed_steps(steps);
    let base = status_kib("VmRSS:");
    let mode =
        Mode::parse(mode).ok_or_else(|| candle_core::Error::Msg(format!("unknown mode {mode}")))?;
    let (_, nf, nb) = gradient(&f, z0.as_tensor(), &opts, mode)?;
    println!("{:.1} {nf} {nb}", (status_kib("VmHWM:") - base) / 1024.0);
    Ok(())
}

fn memory() -> Result<()> {
    println!("\n## Peak memory of one gradient (RK4 3/8, batch 256, state 64, MLP 64-256-64)");
    println!(
        "| mode | steps | NFE fwd | NFE bwd | peak RSS above set-up (MiB) | torchdiffeq (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let torch = HashMap::from([
        (("direct", 10), 39.3),
        (("direct", 100), 285.5),
        (("direct", 1000), 2686.2),
        (("adjoint", 10), 55.4),
        (("adjoint", 100), 56.6),
        (("adjoint", 1000), 58.3),
    ]);
    let exe = std::env::current_exe().map_err(candle_core::Error::wrap)?;
    for mode in ["direct", "adjoint", "checkpoint", "reversible"] {
        for steps in [10usize, 100, 1000] {
            let out = std::process::Command::new(&exe)
                .args(["memory-child", mode, &steps.to_string()])
                .output()
                .map_err(candle_core::Error::wrap)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let v: Vec<&str> = text.split_whitespace().collect();
            if !out.status.success() || v.len() != 3 {
                println!(
                    "| {mode} | {steps} | failed: {} |",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                continue;
            }
            // torchdiffeq has no checkpointed or reversible mode.
            let theirs = torch
                .get(&(mode, steps))
                .map_or("–".to_string(), |m| m.to_string());
            println!(
                "| {mode} | {steps} | {} | {} | {} | {theirs} |",
                v[1], v[2], v[0]
            );
        }
    }
    Ok(())
}

fn leak() -> Result<()> {
    println!("\n## Leak check: RSS during 300 training steps (RK4 3/8, 20 steps, same problem)");
    let dev = Device::Cpu;
    let opts = SolveOptions::default().method(Method::Rk38).fixed_steps(20);
    let adj = AdjointOptions::default();
    let ck = CheckpointOptions::default().checkpoints(4);
    let rev = ReversibleOptions::default();
    let marks = [1, 10, 50, 100, 200, 300];
    println!(
        "| mode | RSS (MiB) at step {} |",
        marks.map(|m| m.to_string()).join(" | ")
    );
    println!("|---|{}", "---:|".repeat(marks.len()));
    for mode in [
        Mode::Adjoint(&adj),
        Mode::Checkpoint(&ck),
        Mode::Reversible(&rev),
    ] {
        let f = Mlp::random(64, 256, &dev)?;
        let z0 = Tensor::randn(0f32, 1.0, (256, 64), &dev)?;
        let mut rss = String::new();
        for step in 1..=300 {
            let ys = match mode {
                Mode::Adjoint(a) => odeint_adjoint(&f, &z0, &[0.0, 1.0], &opts, a)?.ys,
                Mode::Checkpoint(c) => odeint_checkpointed(&f, &z0, &[0.0, 1.0], &opts, c)?.ys,
                Mode::Reversible(r) => {
                    odeint_reversible_adjoint(&f, &z0, &[0.0, 1.0], &opts, r)?.ys
                }
                Mode::Direct => unreachable!("backprop keeps no state between steps"),
            };
            let g = ys.get(1)?.sqr()?.mean_all()?.backward()?;
            for p in f.params() {
                p.set(&(p.as_tensor() - (g.get(&p).unwrap() * 1e-3)?)?)?;
            }
            if marks.contains(&step) {
                rss += &format!(" {:.1} |", status_kib("VmRSS:") / 1024.0);
            }
        }
        let name = match mode {
            Mode::Adjoint(_) => "adjoint",
            Mode::Reversible(_) => "reversible",
            _ => "checkpoint (4 states)",
        };
        println!("| {name} |{rss}");
    }
    Ok(())
}

fn norms() -> Result<()> {
    println!(
        "\n## Backward NFE: seminorm vs full norm (ode_demo MLP, batch 1024, L = Σ z(1)², t 0 → 1)"
    );
    println!("| rtol = atol | NFE fwd | NFE bwd seminorm | NFE bwd full norm |");
    println!("|---|---:|---:|---:|");
    let (f, z0) = Mlp::ode_demo()?;
    for tol in [1e-3, 1e-5, 1e-7] {
        let opts = SolveOptions::default().tolerances(tol, tol);
        let semi = AdjointOptions::default();
        let (_, nf, semi) = gradient(&f, &z0, &opts, Mode::Adjoint(&semi))?;
        let full = AdjointOptions::default().norm(AdjointNorm::Full);
        let (_, _, full) = gradient(&f, &z0, &opts, Mode::Adjoint(&full))?;
        println!("| {tol:e} | {nf} | {semi} | {full} |");
    }
    Ok(())
}

fn time() -> Result<()> {
    println!("\n## One gradient of the ode_demo problem (batch 1024, f32), medians of 10 after 2 warm-ups");
    println!("| variant | NFE fwd | NFE bwd | ms |");
    println!("|---|---:|---:|---:|");
    let (f, z0) = Mlp::ode_demo()?;
    let z0 = Var::from_tensor(&z0)?;
    let dopri = SolveOptions::default().tolerances(1e-5, 1e-5);
    let rk4 = SolveOptions::default()
        .method(Method::Rk38)
        .fixed_steps(100);
    let adj = AdjointOptions::default();
    let ck = CheckpointOptions::default();
    let rev = ReversibleOptions::default();
    for (name, opts, a) in [
        ("direct_dopri5", &dopri, Mode::Direct),
        ("adjoint_dopri5", &dopri, Mode::Adjoint(&adj)),
        ("checkpoint_dopri5", &dopri, Mode::Checkpoint(&ck)),
        ("reversible_dopri5", &dopri, Mode::Reversible(&rev)),
        ("direct_rk4_100", &rk4, Mode::Direct),
        ("adjoint_rk4_100", &rk4, Mode::Adjoint(&adj)),
        ("checkpoint_rk4_100", &rk4, Mode::Checkpoint(&ck)),
        ("reversible_rk4_100", &rk4, Mode::Reversible(&rev)),
    ] {
        let mut times = vec![];
        let mut nfe = (0, 0);
        for i in 0..12 {
            let s = Instant::now();
            let (_, nf, nb) = gradient(&f, z0.as_tensor(), opts, a)?;
            if i >= 2 {
                times.push(s.elapsed().as_secs_f64() * 1e3);
            }
            nfe = (nf, nb);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| {name} | {} | {} | {:.2} |",
            nfe.0,
            nfe.1,
            times[times.len() / 2]
        );
    }
    Ok(())
}

/// Runs in a child process: one gradient of the equilibrium model, prints
/// `peak_delta_mib nfe_f nfe_b ms`.
fn steady_child(mode: &str) -> Result<()> {
    let dev = Device::Cpu;
    let mlp = Mlp::random(64, 256, &dev)?;
    let m = mlp.clone();
    let f = with_params(
        move |t: f64, y: &Tensor| (m.eval(t, y)? * 0.2)? - y,
        mlp.params(),
    );
    let y0 = Tensor::randn(0f32, 1.0, (256, 64), &dev)?;
    let opts = SolveOptions::default().tolerances(1e-5, 1e-6);
    let base = status_kib("VmRSS:");
    let start = Instant::now();
    let (y, nf, stats) = match mode {
        "steady" => {
            let s =
                odeint_steady_state_adjoint(&f, &y0, 0.0, &opts, &SteadyStateOptions::new(1e3))?;
            (s.y, s.stats.forward().nfe, Some(s.stats))
        }
        "adjoint" => {
            let s = odeint_adjoint(&f, &y0, &[0.0, 30.0], &opts, &AdjointOptions::default())?;
            (s.ys.get(1)?, s.stats.forward().nfe, Some(s.stats))
        }
        "direct" => {
            let s = odeint(&f, &y0, &[0.0, 30.0], &opts)?;
            (s.ys.get(1)?, s.stats.nfe, None)
        }
        _ => candle_core::bail!("unknown mode {mode}"),
    };
    let g = y.sqr()?.sum_all()?.backward()?;
    let _ = g.get(&mlp.w1).expect("a gradient");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let nb = stats.map(|s| s.backward().nfe).unwrap_or(0);
    println!(
        "{:.1} {nf} {nb} {ms:.0}",
        (status_kib("VmHWM:") - base) / 1024.0
    );
    Ok(())
}

fn steady() -> Result<()> {
    children(
        "One gradient of an equilibrium model's steady state (batch 256, state 64, dy/dt = 0.2 MLP(y) − y, dopri5 at 1e-5)",
        "steady-child",
        &[
            ("steady", "steady state, implicit function theorem"),
            ("adjoint", "solve to t = 30, adjoint"),
            ("direct", "solve to t = 30, backprop"),
        ],
    )
}

/// Runs each variant in a fresh process (`child` with its mode), which prints its peak RSS,
/// forward and backward NFE and milliseconds, and tabulates them under `title`.
fn children(title: &str, child: &str, modes: &[(&str, &str)]) -> Result<()> {
    println!("\n## {title}");
    println!("| variant | NFE fwd | NFE bwd | ms | peak RSS above set-up (MiB) |");
    println!("|---|---:|---:|---:|---:|");
    let exe = std::env::current_exe().map_err(candle_core::Error::wrap)?;
    for (mode, name) in modes {
        let out = std::process::Command::new(&exe)
            .args([child, mode])
            .output()
            .map_err(candle_core::Error::wrap)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<&str> = text.split_whitespace().collect();
        if !out.status.success() || v.len() != 4 {
            let err = String::from_utf8_lossy(&out.stderr);
            println!("| {name} | failed: {} |", err.lines().last().unwrap_or(""));
            continue;
        }
        println!("| {name} | {} | {} | {} | {} |", v[1], v[2], v[3], v[0]);
    }
    Ok(())
}

fn independent_child(mode: &str) -> Result<()> {
    let dev = Device::Cpu;
    let (b, n) = (256, 64);
    let mlp = Mlp::random(n, 256, &dev)?;
    let lam: Vec<f32> = (0..b)
        .map(|i| 0.1 * 100f32.powf(i as f32 / (b - 1) as f32))
        .collect();
    let lam = Tensor::from_vec(lam, (b, 1), &dev)?;
    let m = mlp.clone();
    let field = move |_t: &Tensor, y: &Tensor| m.eval(0.0, y)? - y.broadcast_mul(&lam)?;
    let ts: Vec<Vec<f64>> = (0..b)
        .map(|i| vec![0.0, 1.0 + i as f64 / (b - 1) as f64])
        .collect();
    let y0 = Tensor::arange(0u32, (b * n) as u32, &dev)?
        .to_dtype(candle_core::DType::F32)?
        .affine(0.37, 0.0)?
        .sin()?
        .reshape((b, n))?;
    let opts = SolveOptions::default().tolerances(1e-6, 1e-6);
    let base = status_kib("VmRSS:");
    let start = Instant::now();
    let (y, nf, nb) = match mode {
        "adjoint" => {
            let f = with_batch_params(field, mlp.params());
            let s = odeint_independent_adjoint(&f, &y0, &ts, &opts, &opts)?;
            let y = s.ys.get(1)?;
            let g = y.sqr()?.sum_all()?.backward()?;
            let _ = g.get(&mlp.w1).expect("a gradient");
            (y, s.stats.forward().nfe, s.stats.backward().nfe)
        }
        "direct" => {
            let s = odeint_independent(&field, &y0, &ts, &opts)?;
            let y = s.ys.get(1)?;
            let g = y.sqr()?.sum_all()?.backward()?;
            let _ = g.get(&mlp.w1).expect("a gradient");
            (y, s.nfe, 0)
        }
        _ => candle_core::bail!("unknown mode {mode}"),
    };
    let _ = y;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{:.1} {nf} {nb} {ms:.0}",
        (status_kib("VmHWM:") - base) / 1024.0
    );
    Ok(())
}

fn independent() -> Result<()> {
    children(
        "One gradient of a batch of independent problems (batch 256, state 64, MLP(y) − λ_b y, own end times, dopri5 at 1e-6)",
        "independent-child",
        &[
            ("adjoint", "odeint_independent_adjoint"),
            ("direct", "backprop through odeint_independent"),
        ],
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // Backprop through 1000 steps is ~20 000 levels deep; the workspace's Candle sorts and
    // drops such graphs without recursion, and the large stack is kept as a margin.
    let child = std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || -> Result<()> {
            match args.first().map(|s| s.as_str()) {
                Some("memory-child") => {
                    memory_child(&args[1], args[2].parse().map_err(candle_core::Error::wrap)?)
                }
                Some("memory") => memory(),
                Some("steady-child") => steady_child(&args[1]),
                Some("steady") => steady(),
                Some("independent-child") => independent_child(&args[1]),
                Some("independent") => independent(),
                Some("leak") => leak(),
                Some("norms") => norms(),
                Some("time") => time(),
                _ => {
                    println!(
                        "threads: {}, dtype f32",
                        candle_core::utils::get_num_threads()
                    );
                    time()?;
                    norms()?;
                    memory()?;
                    steady()?;
                    independent()?;
                    leak()
                }
            }
        });
    child
        .map_err(candle_core::Error::wrap)?
        .join()
        .map_err(|_| candle_core::Error::Msg("bench thread panicked".into()))?
}
