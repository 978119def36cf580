//! torchdiffeq's bouncing ball (`examples/bouncing_ball.py`): differentiable event handling.
//!
//! A ball of radius `r` falls under gravity `G` (and, with `--drag k`, linear air drag
//! `−k·v`) from height `h0` with velocity `v0`, from time `t0`; when it touches the ground
//! (`pos = r`, found by `odeint_event`) its velocity reverses and loses the fraction
//! `absorption`, and the solve restarts from there. Without drag the bounce times are checked
//! against their closed form; the last one's gradient with respect to all seven parameters
//! (by backprop through the solver or by the adjoint, through every event) against central
//! differences.
//!
//! `--balls N` bounces N balls at once, dropped from heights of their own, in one batched
//! solve per flight (`odeint_independent_event`: each ball lands at its own time and carries
//! on from there), checks them against their closed form and against the balls bounced one
//! by one, and the gradient of the sum of their last bounce times against central
//! differences.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/plot.rs"]
mod plot;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use common::{pick_device, CheckpointArgs, DeviceArg, GradientArg};
use node_adjoint::{
    odeint_event_adjoint, odeint_event_checkpointed, odeint_independent_event_adjoint,
    with_batch_params, with_params, AdjointOptions, CheckpointOptions, WithBatchParams, WithParams,
};
use node_solvers::{
    odeint, odeint_event, odeint_independent_event, BatchField, Crossing, EventOptions,
    SolveOptions,
};
use plot::{bounds, Canvas, Panel, LEARNED_COLOR, TRUE_COLOR};
use std::path::PathBuf;
use std::time::Instant;

/// Bounce a ball with differentiable event times; check the times against their closed form
/// and their gradients against central differences.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Number of bounces.
    #[arg(default_value_t = 10)]
    bounces: usize,
    /// How the bounce times are differentiated.
    #[arg(long, value_enum, default_value = "backprop")]
    gradient: GradientArg,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Initial height of the ball's centre.
    #[arg(long, default_value_t = 10.0)]
    height: f64,
    /// Initial (upward) velocity.
    #[arg(long, default_value_t = 0.0)]
    velocity: f64,
    /// Gravity.
    #[arg(long, default_value_t = 9.8)]
    gravity: f64,
    /// The ball's radius.
    #[arg(long, default_value_t = 0.2)]
    radius: f64,
    /// Fraction of the speed lost at each bounce.
    #[arg(long, default_value_t = 0.2)]
    absorption: f64,
    /// Start time.
    #[arg(long, default_value_t = 0.0)]
    t0: f64,
    /// Linear air drag `k` (the acceleration is `−G − k·v`); 0 keeps the closed form.
    #[arg(long, default_value_t = 0.0)]
    drag: f64,
    /// Relative and absolute tolerance of the solves.
    #[arg(long, default_value_t = 1e-10)]
    tol: f64,
    /// Device; the default is CUDA or Metal when compiled in and present, else the CPU.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Where to write the plot of height and velocity against time.
    #[arg(long, default_value = "bouncing-ball.png")]
    plot: PathBuf,
    /// Write no plot.
    #[arg(long)]
    no_plot: bool,
    /// Bounce this many balls at once, ball `i` dropped from `height · (1 + i/N)`, in one
    /// batched solve per flight, each ball with its own steps and landing times (backprop or
    /// adjoint gradients); the balls are bounced one by one too, for comparison. Writes no
    /// plot.
    #[arg(long, default_value_t = 1)]
    balls: usize,
}

const NAMES: [&str; 7] = [
    "height",
    "velocity",
    "gravity",
    "radius",
    "absorption",
    "t0",
    "drag",
];

/// The ball's parameters, each a `Var` of shape `[1]` (f64), in the order of `NAMES`
/// (the radius as its logarithm, as torchdiffeq).
struct Ball {
    vars: Vec<Var>,
}

impl Ball {
    fn new(p: [f64; 7], dev: &Device) -> Result<Self> {
        let mut p = p;
        p[3] = p[3].ln();
        let vars = p
            .iter()
            .map(|v| Var::new(&[*v], dev))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { vars })
    }

    fn var(&self, i: usize) -> &Tensor {
        self.vars[i].as_tensor()
    }

    /// The flight: `y = [pos, vel]`, `dy/dt = [vel, −G − k·vel]`.
    fn field(
        &self,
    ) -> WithParams<impl Fn(f64, &Tensor) -> candle_core::Result<Tensor> + Clone + Send + Sync>
    {
        let (gravity, drag) = (self.vars[2].clone(), self.vars[6].clone());
        let (g, k) = (gravity.clone(), drag.clone());
        with_params(
            move |_t, y: &Tensor| {
                let v = y.narrow(0, 1, 1)?;
                let acc = (v.broadcast_mul(&k)? + g.as_tensor())?.neg()?;
                Tensor::cat(&[v, acc], 0)
            },
            vec![gravity, drag],
        )
    }

    /// The bounce: the velocity reverses and loses the fraction `absorption`.
    fn bounce(&self, y: &Tensor) -> Result<Tensor> {
        let keep = self.var(4).affine(-1.0, 1.0)?;
        let vel = y.narrow(0, 1, 1)?.neg()?.broadcast_mul(&keep)?;
        Ok(Tensor::cat(&[y.narrow(0, 0, 1)?, vel], 0)?)
    }

    /// The bounces' times as host numbers and as tensors that carry their gradients.
    fn bounces(
        &self,
        n: usize,
        mode: GradientArg,
        ck: CheckpointOptions,
        tol: f64,
    ) -> Result<Vec<(f64, Tensor)>> {
        let field = self.field();
        // Positive in the air, zero when the ball touches the ground.
        let log_radius = self.var(3).clone();
        let ground = move |_t: f64, y: &Tensor| y.narrow(0, 0, 1)? - log_radius.exp()?;
        let opts = SolveOptions::default().tolerances(tol, tol);
        let ev = EventOptions::default().crossing(Crossing::Falling);
        let mut t = self.var(5).to_vec1::<f64>()?[0];
        let mut time = self.var(5).reshape(())?;
        let mut y = Tensor::cat(&[self.var(0), self.var(1)], 0)?;
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            // A start time that carries a gradient: the trajectory from (t + δ, y) is the one
            // from (t, y − δ·f(t, y)), so shifting the state carries dt to everything after.
            let (_, y0) = node_solvers::differentiable_start(&field, &time, &y)?;
            let t_max = t + 1e3;
            let (te, time_e, ye, event) = match mode {
                GradientArg::Backprop => {
                    let s = odeint_event(&field, &y0, t, t_max, &ground, &opts, &ev)?;
                    (s.t, s.time, s.y, s.event)
                }
                GradientArg::Checkpoint => {
                    let s =
                        odeint_event_checkpointed(&field, &y0, t, t_max, &ground, &opts, &ev, &ck)?;
                    (s.t, s.time, s.y, s.event)
                }
                GradientArg::Reversible => bail!(
                    "--gradient reversible: the reversible solver does not locate events; use backprop, checkpoint, adjoint or interpolated"
                ),
                GradientArg::Adjoint | GradientArg::Interpolated => {
                    let adj = AdjointOptions::default().state(mode.adjoint_state());
                    let s = odeint_event_adjoint(&field, &y0, t, t_max, &ground, &opts, &ev, &adj)?;
                    (s.t, s.time, s.y, s.event)
                }
            };
            if event.is_none() {
                bail!(
                    "bounce {}: the ball did not reach the ground before t = {t_max}",
                    k + 1
                );
            }
            out.push((te, time_e.clone()));
            y = self.bounce(&ye)?;
            (t, time) = (te, time_e);
        }
        Ok(out)
    }

    /// The flight of a batch of balls, `y = [pos, vel]` per row.
    fn batch_field(
        &self,
    ) -> WithBatchParams<
        impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + Clone + Send + Sync,
    > {
        let (gravity, drag) = (self.vars[2].clone(), self.vars[6].clone());
        let (g, k) = (gravity.clone(), drag.clone());
        with_batch_params(
            move |_t: &Tensor, y: &Tensor| {
                let v = y.narrow(1, 1, 1)?;
                let acc = v.broadcast_mul(&k)?.broadcast_add(g.as_tensor())?.neg()?;
                Tensor::cat(&[v, acc], 1)
            },
            vec![gravity, drag],
        )
    }

    /// [`Ball::bounces`] for `balls` balls at once, ball `i` dropped from
    /// `height · (1 + i/balls)`: one batched solve per flight, every ball landing at its own
    /// time. Each bounce's times, as host numbers and as a `[balls]` tensor.
    fn batch_bounces(
        &self,
        balls: usize,
        n: usize,
        mode: GradientArg,
        tol: f64,
    ) -> Result<Vec<(Vec<f64>, Tensor)>> {
        let dev = self.var(0).device();
        let field = self.batch_field();
        let log_radius = self.var(3).clone();
        let ground =
            move |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1)?.broadcast_sub(&log_radius.exp()?);
        let opts = SolveOptions::default().tolerances(tol, tol);
        let ev = EventOptions::default().crossing(Crossing::Falling);
        let spread: Vec<f64> = (0..balls).map(|i| spread(i, balls)).collect();
        let heights = self
            .var(0)
            .broadcast_mul(&Tensor::from_vec(spread, (balls, 1), dev)?)?;
        let mut y = Tensor::cat(&[heights, self.var(1).broadcast_as((balls, 1))?], 1)?;
        let mut t = vec![self.var(5).to_vec1::<f64>()?[0]; balls];
        let mut time = self.var(5).broadcast_as(balls)?;
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            // Each ball's start time carries its gradient, as `differentiable_start` does for
            // one: y − f(t, y)·(t − t.detach()), row by row.
            let f0 = field
                .eval(&Tensor::from_slice(&t, balls, dev)?, &y)?
                .detach();
            let shift = (&time - time.detach())?.reshape((balls, 1))?;
            let y0 = (&y - f0.broadcast_mul(&shift)?)?;
            let spans: Vec<[f64; 2]> = t.iter().map(|t| [*t, t + 1e3]).collect();
            let (te, time_e, ye, event) = match mode {
                GradientArg::Backprop => {
                    let s = odeint_independent_event(&field, &y0, &spans, &ground, &opts, &ev)?;
                    (s.t, s.time, s.y, s.event)
                }
                GradientArg::Adjoint => {
                    let s = odeint_independent_event_adjoint(
                        &field, &y0, &spans, &ground, &opts, &ev, &opts,
                    )?;
                    (s.t, s.time, s.y, s.event)
                }
                other => bail!(
                    "--balls takes --gradient backprop or adjoint (the batched event solve has no {other:?} mode)"
                ),
            };
            if let Some(i) = event.iter().position(Option::is_none) {
                bail!(
                    "bounce {}: ball {i} did not reach the ground before t = {}",
                    k + 1,
                    spans[i][1]
                );
            }
            let keep = self.var(4).affine(-1.0, 1.0)?;
            let vel = ye.narrow(1, 1, 1)?.neg()?.broadcast_mul(&keep)?;
            y = Tensor::cat(&[ye.narrow(1, 0, 1)?, vel], 1)?;
            out.push((te.clone(), time_e.clone()));
            (t, time) = (te, time_e);
        }
        Ok(out)
    }
}

/// Ball `i` of `balls` starts at this multiple of `--height`.
fn spread(i: usize, balls: usize) -> f64 {
    1.0 + i as f64 / balls as f64
}

/// The bounce times in closed form: the fall to `pos = r` takes `(v0 + s)/G` with
/// `s = √(v0² + 2G(h0 − r))`, and each flight after a bounce at speed `u` takes `2u/G`.
fn exact_bounces(p: [f64; 7], n: usize) -> Vec<f64> {
    let [h0, v0, g, r, a, t0, _] = p;
    let s = (v0 * v0 + 2.0 * g * (h0 - r)).sqrt();
    let mut t = t0 + (v0 + s) / g;
    let mut u = s * (1.0 - a);
    let mut out = vec![t];
    for _ in 1..n {
        t += 2.0 * u / g;
        u *= 1.0 - a;
        out.push(t);
    }
    out
}

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let args = Args::parse();
    if args.bounces == 0 {
        bail!("--bounces must be at least 1");
    }
    let p = [
        args.height,
        args.velocity,
        args.gravity,
        args.radius,
        args.absorption,
        args.t0,
        args.drag,
    ];
    if !(args.gravity > 0.0 && args.radius > 0.0 && args.height > args.radius) {
        bail!("need gravity > 0, radius > 0 and height > radius (the ball starts in the air)");
    }
    if !p.iter().all(|v| v.is_finite()) {
        bail!("--height, --velocity, --gravity, --radius, --t0 and --drag must be finite numbers");
    }
    if !(args.drag >= 0.0 && args.drag.is_finite()) {
        bail!("--drag must be a finite number >= 0");
    }
    if !(0.0..1.0).contains(&args.absorption) {
        bail!("--absorption must be in [0, 1)");
    }
    if !(args.tol > 0.0 && args.tol.is_finite()) {
        bail!("--tol must be a positive number");
    }
    if args.balls == 0 {
        bail!("--balls must be at least 1");
    }
    let dev = pick_device(args.device)?;
    if args.balls > 1 {
        return many_balls(&args, p, &dev);
    }
    println!(
        "bouncing ball: {} bounces, {:?} gradients, tolerance {:e}, device {:?}",
        args.bounces, args.gradient, args.tol, dev
    );

    let ball = Ball::new(p, &dev)?;
    let start = Instant::now();
    let bounces = ball.bounces(
        args.bounces,
        args.gradient,
        args.checkpoint.options(),
        args.tol,
    )?;
    let solve_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut worst: f64 = 0.0;
    if args.drag == 0.0 {
        let exact = exact_bounces(p, args.bounces);
        println!("\n bounce |       time |      exact | difference");
        for (k, ((t, _), e)) in bounces.iter().zip(&exact).enumerate() {
            worst = worst.max((t - e).abs());
            println!(
                "{:>7} | {t:>10.6} | {e:>10.6} | {:>10.1e}",
                k + 1,
                (t - e).abs()
            );
        }
    } else {
        println!("\n bounce |       time");
        for (k, (t, _)) in bounces.iter().enumerate() {
            println!("{:>7} | {t:>10.6}", k + 1);
        }
    }

    let (last, last_time) = bounces.last().expect("at least one bounce");
    let start = Instant::now();
    let grads = last_time.backward()?;
    let backward_ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "\nsolves {solve_ms:.1} ms, backward {backward_ms:.1} ms; gradient of the last bounce \
         time ({last:.6}):"
    );
    // Central differences of the whole simulation.
    let failed = gradient_check(&ball, &grads, p, |q| {
        let b = Ball::new(q, &dev)?;
        Ok(b.bounces(
            args.bounces,
            GradientArg::Backprop,
            args.checkpoint.options(),
            args.tol,
        )?
        .last()
        .expect("at least one bounce")
        .0)
    })?;

    if !args.no_plot {
        draw(&ball, &bounces, p, args.tol, &args.plot)?;
        println!("\nplot: {}", args.plot.display());
    }
    if worst > 1e-6 {
        bail!("a bounce time is {worst:e} away from its closed form");
    }
    if failed {
        bail!("gradient check failed");
    }
    if args.drag == 0.0 {
        println!("\nbounce times match their closed form (worst {worst:.1e})");
    }
    println!("gradient check passed");
    Ok(())
}

/// Prints each parameter's gradient in `grads` beside the central difference of `value`
/// (the whole simulation run with the parameters `q`; the radius differenced as its log)
/// and returns whether any of them disagree.
fn gradient_check(
    ball: &Ball,
    grads: &candle_core::backprop::GradStore,
    p: [f64; 7],
    value: impl Fn([f64; 7]) -> Result<f64>,
) -> Result<bool> {
    println!("\n parameter  |    autograd | central diff. | difference");
    let eps = 1e-5;
    let mut failed = false;
    for (i, name) in NAMES.iter().enumerate() {
        let got = match grads.get(ball.var(i)) {
            Some(g) => g.to_dtype(DType::F64)?.to_vec1::<f64>()?[0],
            None => 0.0,
        };
        let at = |d: f64| -> Result<f64> {
            let mut q = p;
            if i == 3 {
                q[3] = (q[3].ln() + d).exp();
            } else {
                q[i] += d;
            }
            value(q)
        };
        let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
        let diff = (got - fd).abs();
        // Solver errors ~tol over a difference step of 1e-5: 1e-5·|fd| leaves room for that.
        let ok = diff <= 1e-5 * fd.abs().max(1.0);
        failed |= !ok;
        let label = if i == 3 { "log radius" } else { name };
        println!(
            " {label:<10} | {got:>11.6} | {fd:>13.6} | {diff:>10.1e}{}",
            if ok { "" } else { "  MISMATCH" }
        );
    }
    Ok(failed)
}

/// `--balls N`: the balls bounced in batched solves, against their closed form, against the
/// balls bounced one by one, and the gradient of the sum of their last bounce times against
/// central differences.
fn many_balls(args: &Args, p: [f64; 7], dev: &Device) -> Result<()> {
    let (balls, n) = (args.balls, args.bounces);
    if !matches!(args.gradient, GradientArg::Backprop | GradientArg::Adjoint) {
        bail!("--balls takes --gradient backprop or adjoint");
    }
    println!(
        "bouncing balls: {balls} balls from heights {} to {}, {n} bounces, {:?} gradients, \
         tolerance {:e}, device {dev:?}",
        args.height,
        args.height * (2.0 - 1.0 / balls as f64),
        args.gradient,
        args.tol
    );
    let ball = Ball::new(p, dev)?;
    let start = Instant::now();
    let bounces = ball.batch_bounces(balls, n, args.gradient, args.tol)?;
    let batched_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let last = &bounces.last().expect("at least one bounce").1;
    let grads = last.sum_all()?.backward()?;
    let backward_ms = start.elapsed().as_secs_f64() * 1e3;

    // Each ball alone, as the single-ball program bounces it: the same height, to the bit.
    let each: Vec<[f64; 7]> = (0..balls)
        .map(|i| {
            let mut q = p;
            q[0] = p[0] * spread(i, balls);
            q
        })
        .collect();
    let start = Instant::now();
    let mut alone = Vec::with_capacity(balls);
    for q in &each {
        let b = Ball::new(*q, dev)?;
        let times = b.bounces(
            n,
            GradientArg::Backprop,
            CheckpointOptions::default(),
            args.tol,
        )?;
        alone.push(times.into_iter().map(|(t, _)| t).collect::<Vec<_>>());
    }
    let alone_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut worst_alone: f64 = 0.0;
    let mut worst_exact: f64 = 0.0;
    for (i, q) in each.iter().enumerate() {
        let exact = exact_bounces(*q, n);
        for (k, (times, _)) in bounces.iter().enumerate() {
            worst_alone = worst_alone.max((times[i] - alone[i][k]).abs());
            worst_exact = worst_exact.max((times[i] - exact[k]).abs());
        }
    }
    let lasts = &bounces.last().expect("at least one bounce").0;
    println!(
        "\nlast bounce times: {:.6} (ball 0) to {:.6} (ball {})",
        lasts[0],
        lasts[balls - 1],
        balls - 1
    );
    println!(
        "batched: {batched_ms:.1} ms for the flights, backward {backward_ms:.1} ms; the balls \
         one by one: {alone_ms:.1} ms (without gradients' backward)"
    );
    println!("largest difference from the balls bounced one by one: {worst_alone:.1e}");
    if args.drag == 0.0 {
        println!("largest difference from the closed form: {worst_exact:.1e}");
    }

    println!("\ngradient of the sum of the last bounce times:");
    let failed = gradient_check(&ball, &grads, p, |q| {
        let b = Ball::new(q, dev)?;
        let out = b.batch_bounces(balls, n, GradientArg::Backprop, args.tol)?;
        Ok(out.last().expect("at least one bounce").0.iter().sum())
    })?;
    if worst_alone > 1e-9 {
        bail!("a ball's bounce time is {worst_alone:e} away from the same ball bounced alone");
    }
    if args.drag == 0.0 && worst_exact > 1e-6 {
        bail!("a bounce time is {worst_exact:e} away from its closed form");
    }
    if failed {
        bail!("gradient check failed");
    }
    if args.drag == 0.0 {
        println!("\nbounce times match their closed form (worst {worst_exact:.1e})");
    }
    println!("gradient check passed");
    Ok(())
}

/// Height (blue) and velocity (orange) against time, with the bounces as dots on the ground.
fn draw(
    ball: &Ball,
    bounces: &[(f64, Tensor)],
    p: [f64; 7],
    tol: f64,
    path: &std::path::Path,
) -> Result<()> {
    let field = ball.field();
    let opts = SolveOptions::default().tolerances(tol, tol);
    let (mut ts, mut pos, mut vel) = (vec![], vec![], vec![]);
    let mut t = p[5];
    let mut y = Tensor::cat(&[ball.var(0), ball.var(1)], 0)?.detach();
    for (te, _) in bounces {
        let n = (((te - t) * 50.0).ceil() as usize).max(2);
        let grid: Vec<f64> = (0..=n)
            .map(|i| t + (te - t) * i as f64 / n as f64)
            .collect();
        let sol = odeint(&field, &y, &grid, &opts)?;
        for (ti, yi) in grid.iter().zip(sol.ys.detach().to_vec2::<f64>()?) {
            ts.push(*ti);
            pos.push(yi[0]);
            vel.push(yi[1]);
        }
        y = ball.bounce(&sol.last()?)?.detach();
        t = *te;
    }
    let mut c = Canvas::new(1000, 420);
    let panel = Panel {
        x0: 40,
        y0: 30,
        w: 920,
        h: 360,
        xlim: (ts[0], ts[ts.len() - 1]),
        ylim: bounds(pos.iter().chain(&vel).cloned()),
    };
    c.frame(&panel);
    c.series(&panel, &ts, &vec![0.0; ts.len()], [160, 160, 160]);
    c.series(&panel, &ts, &vel, LEARNED_COLOR);
    c.series(&panel, &ts, &pos, TRUE_COLOR);
    for (te, _) in bounces {
        c.dot(&panel, *te, p[3], TRUE_COLOR);
    }
    c.save_png(path)
}
