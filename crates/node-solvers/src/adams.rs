//! Adams multistep methods: `explicit_adams`, `implicit_adams` and `adams`
//! ([`Method::ExplicitAdams`], [`Method::ImplicitAdams`], [`Method::Adams`]).
//!
//! A step from `t` to `t1 = t + h` integrates a polynomial through values `F_j` of the field
//! at earlier step ends `t_j` (the newest first):
//! `y1 = y + h Σ_j w_j F_j`, `w_j = ∫_0^1 ℓ_j(u) du`, with `ℓ_j` the Lagrange basis on the
//! nodes `u_j = (t_j − t) / h`. The weights are computed for the actual nodes on every step,
//! so steps of any size (a step grid, a shortened last step, error-controlled steps, the
//! start after a jump) keep the method's order; on equal steps they are the textbook
//! Adams–Bashforth and Adams–Moulton coefficients (`tests/adams.rs` checks them against
//! torchdiffeq's table up to order 12). The weights are host numbers: nothing is read back
//! from the device for them.
//!
//! - The predictor (Adams–Bashforth) uses the last `k` values for order `k`. `explicit_adams`
//!   takes it as the step: one evaluation per step, at its start.
//! - The corrector (Adams–Moulton) adds the predicted state's value at `t1` as a node: order
//!   `k + 1` from the same `k` values. `implicit_adams` and `adams` predict with `k − 1`
//!   values and correct once (PECE: predict, evaluate, correct, evaluate), order `k`, two
//!   evaluations per step.
//! - `adams` takes the corrector's difference from the predictor as the error estimate
//!   (of the predictor's order, `k − 1`, while the corrector's state is kept, as dopri5
//!   keeps its fifth-order one) and chooses the steps as the Runge–Kutta methods do. It
//!   starts at order 2 (Euler predicting, the trapezoid correcting) with Hairer's first step
//!   for that order, and gains an order per step until it reaches `k`.
//! - The fixed-step methods start with Runge–Kutta steps until they have the values they
//!   need: Kutta's 3/8 rule (torchdiffeq's start) up to order 5, dopri8's eighth order above
//!   (so orders 10 to 12 converge at order 9 on fixed steps).
//! - Where the field jumps ([`crate::SolveOptions::jump_ts`]), the earlier values belong to
//!   another field: the history is dropped and the method starts again.
//! - Dense output inside a step is the step's own polynomial integrated to the time wanted:
//!   of the step's order, no extra evaluation.
//!
//! Traced solves (dense solutions, checkpointed backprop, the interpolated adjoint) and the
//! reversible solver need a Runge–Kutta method. Backprop through the solve and the adjoint
//! (`node_adjoint::odeint_adjoint`, whose reverse solve is itself an Adams solve) work.

use crate::error::SolverError;
use crate::event::EventWatch;
use crate::field::VectorField;
use crate::method::Method;
use crate::options::SolveOptions;
use crate::rk::{lincomb, rk_step, Evaluator, Step};
use crate::solve::{
    accepts, dense_at, error_scale, first_step, fixed_grid, read_ratios, scaled_norm_sq,
    Controller, PreparedAtol, SolverStats, StepEnd, Stops,
};
use crate::tableau::{self, ButcherTableau};
use candle_core::{Result, Tensor};
use std::collections::VecDeque;

/// The default order of the Adams methods ([`SolveOptions::adams_order`]).
pub const DEFAULT_ORDER: usize = 4;

/// The highest order of the Adams methods (torchdiffeq's too).
pub const MAX_ORDER: usize = 12;

/// `∫_a^b ℓ_j(u) du` for each node `j`, with `ℓ_j` the Lagrange basis polynomial of `nodes`
/// (distinct): the weights of an Adams step in units of its step.
pub fn lagrange_integrals(nodes: &[f64], a: f64, b: f64) -> Vec<f64> {
    (0..nodes.len())
        .map(|j| {
            // Π_(i≠j) (u − u_i), coefficients from degree 0 up, and its value at u_j.
            let mut c = vec![1.0];
            let mut at_node = 1.0;
            for (i, &ui) in nodes.iter().enumerate().filter(|&(i, _)| i != j) {
                let mut next = vec![0.0; c.len() + 1];
                for (d, &cd) in c.iter().enumerate() {
                    next[d + 1] += cd;
                    next[d] -= ui * cd;
                }
                c = next;
                at_node *= nodes[j] - nodes[i];
            }
            let (mut pa, mut pb) = (a, b);
            let mut integral = 0.0;
            for (d, &cd) in c.iter().enumerate() {
                integral += cd * (pb - pa) / (d + 1) as f64;
                pa *= a;
                pb *= b;
            }
            integral / at_node
        })
        .collect()
}

/// The field's values at earlier step ends, the newest first, at most `cap` of them.
struct History {
    ts: VecDeque<f64>,
    fs: VecDeque<Tensor>,
    cap: usize,
}

impl History {
    fn new(cap: usize) -> Self {
        Self {
            ts: VecDeque::with_capacity(cap + 1),
            fs: VecDeque::with_capacity(cap + 1),
            cap,
        }
    }

    fn push(&mut self, t: f64, f: Tensor) {
        self.ts.push_front(t);
        self.fs.push_front(f);
        self.ts.truncate(self.cap);
        self.fs.truncate(self.cap);
    }

    fn clear(&mut self) {
        self.ts.clear();
        self.fs.clear();
    }

    fn len(&self) -> usize {
        self.ts.len()
    }

    /// The predictor's polynomial for a step `t → t + h` through the newest `m` values.
    fn predictor(&self, t: f64, h: f64, m: usize) -> Poly {
        Poly {
            t,
            h,
            nodes: self.ts.iter().take(m).map(|tj| (tj - t) / h).collect(),
            values: self.fs.iter().take(m).cloned().collect(),
        }
    }

    /// The corrector's polynomial: the predictor's with `f1`, the value at `t + h`.
    fn corrector(&self, t: f64, h: f64, m: usize, f1: Tensor) -> Poly {
        let mut p = self.predictor(t, h, m);
        p.nodes.insert(0, 1.0);
        p.values.insert(0, f1);
        p
    }
}

/// The polynomial of one Adams step from `(t, y)`: the state at `t + θh` is
/// `y + h Σ_j (∫_0^θ ℓ_j) values_j`.
struct Poly {
    t: f64,
    h: f64,
    nodes: Vec<f64>,
    values: Vec<Tensor>,
}

impl Poly {
    fn state(&self, y: &Tensor, tn: f64) -> Result<Tensor> {
        let w = lagrange_integrals(&self.nodes, 0.0, (tn - self.t) / self.h);
        lincomb(
            Some(y),
            w.iter().zip(&self.values).map(|(w, f)| (self.h * w, f)),
        )
    }
}

/// A step taken: by the Runge–Kutta starter or by the Adams polynomial.
enum Stepped {
    Start(Step),
    Adams(Poly, Tensor),
}

impl Stepped {
    fn y1(&self) -> &Tensor {
        match self {
            Stepped::Start(s) => &s.y1,
            Stepped::Adams(_, y1) => y1,
        }
    }

    /// The state at `tn` in `[t, t1]`; a starter step may evaluate `f(t1, y1)` into `f1`.
    #[allow(clippy::too_many_arguments)]
    fn dense<F: VectorField + ?Sized>(
        &self,
        ev: &Evaluator<'_, F>,
        starter: &ButcherTableau,
        stops: &Stops,
        t: f64,
        t1: f64,
        y: &Tensor,
        f1: &mut Option<Tensor>,
        tn: f64,
    ) -> Result<Tensor> {
        match self {
            Stepped::Start(s) => dense_at(ev, starter, stops, t, t1, y, s, f1, tn),
            Stepped::Adams(_, y1) if tn == t1 => Ok(y1.clone()),
            Stepped::Adams(..) if tn == t => Ok(y.clone()),
            Stepped::Adams(p, _) => p.state(y, tn),
        }
    }
}

/// The Runge–Kutta method that starts a fixed-step Adams solve of order `order`: one whose
/// own order keeps the start's error below the method's.
fn starter(order: usize) -> &'static ButcherTableau {
    if order <= 5 {
        &tableau::RK38
    } else {
        &tableau::DOPRI8
    }
}

/// The outputs in `(t, t1]` of a step, by its dense output.
#[allow(clippy::too_many_arguments)]
fn emit<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    starter: &ButcherTableau,
    stops: &Stops,
    stepped: &Stepped,
    t: f64,
    t1: f64,
    y: &Tensor,
    f1: &mut Option<Tensor>,
    ts: &[f64],
    dir: f64,
    next: &mut usize,
    out: &mut Vec<Tensor>,
) -> Result<()> {
    while *next < ts.len() && (ts[*next] - t1) * dir <= 0.0 {
        out.push(stepped.dense(ev, starter, stops, t, t1, y, f1, ts[*next])?);
        *next += 1;
    }
    Ok(())
}

/// A fixed-step Adams solve (`explicit_adams`, `implicit_adams`, or `adams` given steps).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fixed<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    y0: &Tensor,
    ts: &[f64],
    dir: f64,
    opts: &SolveOptions,
    out: &mut Vec<Tensor>,
    mut watch: Option<&mut EventWatch<'_>>,
) -> Result<(SolverStats, f64)> {
    let order = opts.adams_order.unwrap_or(DEFAULT_ORDER);
    let explicit = opts.method == Method::ExplicitAdams;
    let past = if explicit { order } else { order - 1 };
    let starter = starter(order);
    let (t0, t_end) = (ts[0], ts[ts.len() - 1]);
    let grid = fixed_grid(opts, t0, t_end, dir)?;
    let n = grid.len() - 1;
    let stops = Stops::new(opts, ts, dir);
    let mut hist = History::new(past);
    let mut t = t0;
    let mut y = y0.clone();
    hist.push(t, ev.eval(stops.start(t), &y)?);
    let mut next = 1;
    for (i, &t1) in grid.iter().enumerate().skip(1) {
        let h = t1 - t;
        let t1_eval = stops.end(t1);
        let mut f1 = None;
        let stepped = if hist.len() < past {
            let f0 = &hist.fs[0];
            let Some(step) = rk_step(
                starter,
                ev,
                t,
                t1,
                stops.start(t),
                t1_eval,
                &y,
                f0,
                false,
                None,
            )?
            else {
                candle_core::bail!("the explicit starter `{}` failed a step", starter.name)
            };
            if starter.is_fsal() {
                f1 = Some(step.k[starter.stages() - 1].clone());
            }
            Stepped::Start(step)
        } else {
            let pred = hist.predictor(t, h, past);
            let yp = pred.state(&y, t1)?;
            if explicit {
                Stepped::Adams(pred, yp)
            } else {
                let fp = ev.eval(t1_eval, &yp)?;
                let corr = hist.corrector(t, h, past, fp);
                let yc = corr.state(&y, t1)?;
                Stepped::Adams(corr, yc)
            }
        };
        if let Some(w) = watch.as_deref_mut() {
            let g1 = ev.read(&w.values(t1, stepped.y1())?)?;
            let mut dense = |tn| stepped.dense(ev, starter, &stops, t, t1, &y, &mut f1, tn);
            if w.accepted(t, t1, &y, &g1, &mut dense, &|x| ev.read(x))? {
                let stats = SolverStats {
                    accepted_steps: i,
                    ..SolverStats::default()
                };
                return Ok((stats, h.abs()));
            }
        }
        emit(
            ev, starter, &stops, &stepped, t, t1, &y, &mut f1, ts, dir, &mut next, out,
        )?;
        let y1 = stepped.y1().clone();
        if i < n {
            let at_jump = stops.is_jump(t1);
            let f_next = match f1 {
                Some(f1) if !at_jump => f1,
                _ => ev.eval(stops.start(t1), &y1)?,
            };
            if at_jump {
                hist.clear();
            }
            hist.push(t1, f_next);
        }
        t = t1;
        y = y1;
    }
    let stats = SolverStats {
        accepted_steps: n,
        ..SolverStats::default()
    };
    Ok((stats, (grid[n] - grid[n - 1]).abs()))
}

/// The error estimate of order `q` (`q − 1` values) for a step `t → t + h` whose predicted
/// state has the value `fp`: the corrector's difference from the predictor, in one
/// combination, `h (ω_0 fp + Σ_j (ω_(j+1) − β_j) F_j)`.
fn estimate(hist: &History, t: f64, h: f64, q: usize, fp: &Tensor) -> Result<Tensor> {
    let nodes: Vec<f64> = hist.ts.iter().take(q - 1).map(|tj| (tj - t) / h).collect();
    let beta = lagrange_integrals(&nodes, 0.0, 1.0);
    let mut with_end = vec![1.0];
    with_end.extend(&nodes);
    let omega = lagrange_integrals(&with_end, 0.0, 1.0);
    let terms = std::iter::once((h * omega[0], fp))
        .chain((0..q - 1).map(|j| (h * (omega[j + 1] - beta[j]), &hist.fs[j])));
    lincomb(None, terms)
}

/// An error-controlled `adams` solve of variable order.
///
/// Each step at order `q` also estimates the error it would have had at orders `q − 1` and
/// `q + 1` (from the same values, no extra evaluation; the three ratios travel in the one
/// read of the step), and the next step takes the order that allows the longest step,
/// between 2 and the highest order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adaptive<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    y0: &Tensor,
    ts: &[f64],
    dir: f64,
    opts: &SolveOptions,
    atol: &PreparedAtol,
    out: &mut Vec<Tensor>,
    mut watch: Option<&mut EventWatch<'_>>,
) -> Result<(SolverStats, f64)> {
    let max_order = opts.adams_order.unwrap_or(MAX_ORDER);
    let starter = starter(max_order);
    let t_end = ts[ts.len() - 1];
    let stops = Stops::new(opts, ts, dir);
    // Order q uses q − 1 values; the estimate at q + 1 one more.
    let mut hist = History::new(max_order);
    let mut q = 2;
    let mut next_stop = 0;
    let mut t = ts[0];
    let mut y = y0.clone();
    // A first step for order 2, the order of the start (error ∝ h²).
    let first = |t: f64, y: &Tensor, f: &Tensor| first_step(ev, t, y, f, dir, opts, atol, 2.0);
    let f0 = ev.eval(stops.start(t), &y)?;
    let mut h_abs = first(t, &y, &f0)?;
    hist.push(t, f0);
    let mut stats = SolverStats::default();
    let mut prev_ratio = 1.0f64;
    let mut next = 1;
    while next < ts.len() {
        let steps = stats.accepted_steps + stats.rejected_steps;
        if steps >= opts.max_steps {
            return Err(SolverError::MaxStepsExceeded { t, steps }.into());
        }
        let (target, is_stop) = stops.target(next_stop, t_end);
        let StepEnd {
            t1,
            clipped,
            at_min_step,
        } = StepEnd::new(t, target, dir, h_abs, opts.min_step);
        let h = t1 - t;
        let h_try = h.abs();
        let pred = hist.predictor(t, h, q - 1);
        let yp = pred.state(&y, t1)?;
        let fp = ev.eval(stops.end(t1), &yp)?;
        let corr = hist.corrector(t, h, q - 1, fp.clone());
        let yc = corr.state(&y, t1)?;
        // Orders q, then q − 1 and q + 1 where they exist.
        let mut orders = vec![q];
        // Combined from the values, not as `yc − yp`: the difference of two states would
        // carry their round-off (in f32, about the size of a tight tolerance).
        let mut errs = vec![estimate(&hist, t, h, q, &fp)?];
        if q > 2 {
            orders.push(q - 1);
            errs.push(estimate(&hist, t, h, q - 1, &fp)?);
        }
        if q < max_order && hist.len() >= q {
            orders.push(q + 1);
            errs.push(estimate(&hist, t, h, q + 1, &fp)?);
        }
        let scale = error_scale(&y, Some(&yc), opts.rtol, atol)?;
        let ratios_sq = errs
            .iter()
            .map(|e| scaled_norm_sq(e, &scale, opts.norm))
            .collect::<Result<Vec<_>>>()?;
        let (ratios, g1) = read_ratios(ev, &ratios_sq, watch.as_deref(), t1, &yc)?;
        let ratio = ratios[0];
        // The order that allows the longest next step (`ε^(−1/q)`, as the controller scales
        // it), the current one on ties; a rejected step is retried at most one order lower.
        let best = |higher: bool| {
            let mut pick = (q, ratios[0]);
            let mut longest = f64::NEG_INFINITY;
            for (&o, &r) in orders.iter().zip(&ratios) {
                let step = if r == 0.0 {
                    f64::INFINITY
                } else {
                    r.powf(-1.0 / o as f64)
                };
                if (higher || o <= q) && step > longest {
                    (pick, longest) = ((o, r), step);
                }
            }
            pick
        };
        if !accepts(ratio) {
            stats.rejected_steps += 1;
            let (o, r) = best(false);
            // At least the safety factor shorter, so that a retry at a lower order whose
            // estimate passed does not repeat the same step.
            h_abs = Controller::for_exponent(opts, o as f64)
                .retry(
                    t,
                    dir,
                    h_try,
                    if r.is_nan() { r } else { r.max(1.0) },
                    at_min_step,
                    opts.min_step,
                )?
                .min(opts.max_step);
            q = o;
            continue;
        }
        stats.accepted_steps += 1;
        if clipped && is_stop {
            next_stop += 1;
        }
        let y1 = yc.clone();
        let stepped = Stepped::Adams(corr, yc);
        let mut no_f1 = None;
        if let Some(w) = watch.as_deref_mut() {
            let mut dense = |tn| stepped.dense(ev, starter, &stops, t, t1, &y, &mut no_f1, tn);
            if w.accepted(t, t1, &y, &g1, &mut dense, &|x| ev.read(x))? {
                return Ok((stats, h_try));
            }
        }
        emit(
            ev, starter, &stops, &stepped, t, t1, &y, &mut no_f1, ts, dir, &mut next, out,
        )?;
        let (order, r) = best(true);
        let factor = Controller::for_exponent(opts, order as f64).grow(r, prev_ratio);
        t = t1;
        y = y1;
        h_abs = h_try * factor;
        q = order;
        prev_ratio = r.max(1e-4);
        if next < ts.len() {
            let f1 = ev.eval(stops.start(t), &y)?;
            if stops.is_jump(t) {
                // The values before the jump belong to another field: start again at order
                // 2, with a first step for it.
                hist.clear();
                q = 2;
                h_abs = first(t, &y, &f1)?;
                prev_ratio = 1.0;
            }
            hist.push(t, f1);
        }
        h_abs = h_abs.min(opts.max_step);
    }
    Ok((stats, h_abs))
}
