//! `odeint_reversible`: any explicit Runge–Kutta method made algebraically reversible
//! (McCallum & Foster, "Efficient, accurate and stable gradients for neural ODEs", 2024;
//! diffrax's `Reversible`; after Kidger et al.'s reversible Heun, 2021, and Zhuang et al.'s
//! MALI, 2021).
//!
//! With `Ψ_h(t, y)` the increment of one step of the base method (`y1 − y`), the solver
//! carries a pair `(y, z)`, both starting at `y0`, and steps
//!
//! ```text
//! y_(n+1) = λ y_n + (1 − λ) z_n + Ψ_h(t_n, z_n)
//! z_(n+1) = z_n − Ψ_(−h)(t_(n+1), y_(n+1))
//! ```
//!
//! with a coupling `λ ∈ (0, 1]`. The step inverts in closed form,
//!
//! ```text
//! z_n = z_(n+1) + Ψ_(−h)(t_(n+1), y_(n+1))
//! y_n = (y_(n+1) − (1 − λ) z_n − Ψ_h(t_n, z_n)) / λ
//! ```
//!
//! so a backward pass can walk the steps back from the last pair, recomputing each step's
//! increments to differentiate them: the gradient of the discrete solve, exactly (up to
//! round-off), with memory that does not grow with the steps beyond their times
//! (`node_adjoint::odeint_reversible_adjoint`). The solution `y` has the base method's order;
//! each step costs two increments, about twice the base method's evaluations. The walk back
//! divides by `λ` each step, so round-off grows like `λ^(−n)` (`e` after 1000 steps at the
//! default `λ = 0.999`).
//!
//! The difference `y − z` is a parasitic mode of the scheme. On a linear problem `y' = μy`
//! it is multiplied by about `λ e^(−hμ)` per step: it evolves like the dynamics run
//! backwards, and `y` carries about half of it. Where the dynamics contract (`μ < 0`) it
//! grows unless `|hμ| < 1 − λ`: on `y' = −10 y` over `[0, 1]`, dopri5 at rtol 1e-6 would end
//! at 6e-3 instead of 4.5e-5. So an adaptive solve reads the gap with the error ratio (the
//! same read) and, when it passes the tolerance, starts the pair afresh (`z := y`, a step
//! the walk back undoes from the pair it keeps): exact gradients still, memory of two states
//! per restart, none on dynamics that do not contract. A fixed-step solve reads nothing per
//! step; it fails with [`SolverError::ReversibleDiverged`] when the pair ends more than 10%
//! apart.
//!
//! An output time inside an adaptive step comes from the base method's dense output of the
//! forward increment: `y(t_n + θh) = (1 − θ(1 − λ)) y_n + θ(1 − λ) z_n + D_θ(t_n, z_n)`, with
//! `D_θ` the dense output's increment from `z_n` (no evaluation beyond the step's stages for
//! dopri5, tsit5, dopri8, bosh3; one, `f(t1, z + Ψ)`, for the Hermite ones). It moves from
//! `y_n` to `y_(n+1)` as `θ` goes from 0 to 1, and the backward pass differentiates it with
//! the step's forward increment. Fixed-step solves put the output times on their grid.

use crate::error::SolverError;
use crate::field::VectorField;
use crate::method::Method;
use crate::options::{SolveOptions, StepSize};
use crate::rk::{lincomb, Evaluator};
use crate::solve::{
    accepts, check_state, check_times, error_scale, first_non_finite, first_step, fixed_grid,
    interpolate, needs_f1, prepare_atol, scaled_norm_sq, Controller, Solution, SolverStats,
    StepEnd, Stops,
};
use crate::tableau::ButcherTableau;
use candle_core::{Result, Tensor};

/// The largest gap `‖y − z‖ / ‖y‖` (RMS) a fixed-step reversible solve may end with: far
/// above the pair's difference in a stable solve (the size of its local errors), far below
/// what a diverging one reaches.
const MAX_FIXED_GAP: f64 = 0.1;

/// The default coupling `λ` of [`odeint_reversible`] (diffrax's).
pub const DEFAULT_COUPLING: f64 = 0.999;

/// What the backward pass of a reversible solve needs: the steps' times, the last pair
/// `(y, z)`, and the pairs replaced where the solve started the pair afresh.
#[derive(Clone, Debug)]
pub struct ReversibleTrace {
    /// The accepted steps' ends, from `ts[0]` to the last output time: step `i` runs from
    /// `times[i]` to `times[i + 1]`. Output times of a fixed-step solve are among them; an
    /// adaptive solve's may fall inside steps.
    pub times: Vec<f64>,
    /// Where an adaptive solve started the pair afresh (`z := y`, after the step ending at
    /// `times[i]`), with `y` there and the `z` it replaced: sorted by `i`.
    resyncs: Vec<(usize, Tensor, Tensor)>,
    /// `y` at the last time (the last output).
    pub y: Tensor,
    /// `z` at the last time.
    pub z: Tensor,
    coupling: f64,
    method: Method,
    tab: &'static ButcherTableau,
    stops: Stops,
}

impl ReversibleTrace {
    /// The number of steps.
    pub fn steps(&self) -> usize {
        self.times.len() - 1
    }

    /// How often the pair was started afresh (each time keeps two states).
    pub fn resyncs(&self) -> usize {
        self.resyncs.len()
    }

    /// The pair `(y, z)` at `times[index]` before it was started afresh there (`z := y`), if
    /// it was: walking back past `times[index]`, continue from it (its `y` is the forward
    /// value, exact, where the walk back has accumulated round-off).
    pub fn resync_at(&self, index: usize) -> Option<(&Tensor, &Tensor)> {
        self.resyncs
            .binary_search_by_key(&index, |(i, _, _)| *i)
            .ok()
            .map(|k| (&self.resyncs[k].1, &self.resyncs[k].2))
    }

    /// The coupling `λ`.
    pub fn coupling(&self) -> f64 {
        self.coupling
    }

    /// The base method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Evaluations of the field in one call of [`ReversibleTrace::increment`].
    pub fn increment_nfe(&self) -> usize {
        increment_stages(self.tab, false)
    }

    /// The base method's increment over step `step`: `Ψ_h(t_i, y)` forwards (from `times[i]`
    /// to `times[i + 1]`), or `Ψ_(−h)(t_(i+1), y)` with `backwards`. Plain tensor ops: with
    /// `y` or the field's parameters tracked, autograd differentiates it.
    ///
    /// # Errors
    /// `step` out of range; errors of the field.
    pub fn increment<F: VectorField + ?Sized>(
        &self,
        f: &F,
        step: usize,
        backwards: bool,
        y: &Tensor,
    ) -> Result<Tensor> {
        let (t, t1) = self.step_times(step)?;
        let ev = Evaluator::new(f);
        let (from, to, from_eval, to_eval) = if backwards {
            (t1, t, self.stops.end(t1), self.stops.start(t))
        } else {
            (t, t1, self.stops.start(t), self.stops.end(t1))
        };
        let f0 = ev.eval(from_eval, y)?;
        let tab = self.tab;
        Ok(increment(tab, &ev, from, to, to_eval, y, &f0, false)?.psi)
    }

    /// The forward increment of step `step` from `z` (as [`ReversibleTrace::increment`]),
    /// and the base method's dense output of that step from `z` at each of `taus` inside
    /// it. The solve's output at `τ` is `w_y y_n + w_z z_n` plus that dense output, with the
    /// weights of [`ReversibleTrace::output_weights`]. Plain tensor ops: autograd
    /// differentiates them. [`ReversibleTrace::dense_nfe`] more evaluations than the
    /// increment alone.
    ///
    /// # Errors
    /// `step` out of range; errors of the field.
    pub fn increment_with_outputs<F: VectorField + ?Sized>(
        &self,
        f: &F,
        step: usize,
        z: &Tensor,
        taus: &[f64],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        if taus.is_empty() {
            return Ok((self.increment(f, step, false, z)?, vec![]));
        }
        let (t, t1) = self.step_times(step)?;
        let (t_eval, t1_eval) = (self.stops.start(t), self.stops.end(t1));
        let ev = Evaluator::new(f);
        let tab = self.tab;
        let f0 = ev.eval(t_eval, z)?;
        let inc = increment(tab, &ev, t, t1, t1_eval, z, &f0, true)?;
        let states = dense_states(tab, &ev, t, t1, t1_eval, z, &inc, taus)?;
        Ok((inc.psi, states))
    }

    /// The weights `(w_y, w_z)` of `y_n` and `z_n` in an output at `tau` inside step `step`,
    /// beside the dense output of `z`'s step there ([`ReversibleTrace::increment_with_outputs`]):
    /// `(1 − θ(1 − λ), θ(1 − λ) − 1)` with `θ` the fraction of the step, so that the output
    /// moves from `y_n` to `y_(n+1)` as `θ` goes from 0 to 1.
    pub fn output_weights(&self, step: usize, tau: f64) -> (f64, f64) {
        let (t, t1) = (self.times[step], self.times[step + 1]);
        output_weights((tau - t) / (t1 - t), self.coupling)
    }

    /// Evaluations that [`ReversibleTrace::increment_with_outputs`] adds to an increment.
    pub fn dense_nfe(&self) -> usize {
        dense_stages(self.tab)
    }

    /// Step `step`'s start and end times.
    fn step_times(&self, step: usize) -> Result<(f64, f64)> {
        if step >= self.steps() {
            return Err(SolverError::InvalidOptions(format!(
                "step {step} of a reversible solve of {} steps",
                self.steps()
            ))
            .into());
        }
        Ok((self.times[step], self.times[step + 1]))
    }

    /// `y_n` from `y_(n+1)`, `z_n` and the forward increment `a = Ψ_h(t_n, z_n)`:
    /// `(y_(n+1) − (1 − λ) z_n − a) / λ`.
    ///
    /// # Errors
    /// Tensors of different shapes.
    pub fn previous_y(&self, y1: &Tensor, z0: &Tensor, a: &Tensor) -> Result<Tensor> {
        let l = self.coupling;
        lincomb(None, [(1.0 / l, y1), ((l - 1.0) / l, z0), (-1.0 / l, a)])
    }

    /// Walks step `step` back: `(y_n, z_n)` from `(y_(n+1), z_(n+1))`, with no graph kept
    /// beyond what the inputs carry. Two increments. Where the pair was started afresh at
    /// `times[step + 1]` ([`ReversibleTrace::resync_at`]), pass the pair kept there.
    ///
    /// # Errors
    /// As [`ReversibleTrace::increment`].
    pub fn step_back<F: VectorField + ?Sized>(
        &self,
        f: &F,
        step: usize,
        y1: &Tensor,
        z1: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let b = self.increment(f, step, true, y1)?;
        let z0 = (z1 + b)?;
        let a = self.increment(f, step, false, &z0)?;
        Ok((self.previous_y(y1, &z0, &a)?, z0))
    }
}

/// `(w_y, w_z)` of an output at the fraction `theta` of a step (see
/// [`ReversibleTrace::output_weights`]).
fn output_weights(theta: f64, coupling: f64) -> (f64, f64) {
    let c = theta * (1.0 - coupling);
    (1.0 - c, c - 1.0)
}

/// Evaluations of one increment: every stage, but the last stage of an FSAL method only when
/// the error estimate needs it (its state is `y1`, its weight in `b` zero).
fn increment_stages(tab: &ButcherTableau, with_error: bool) -> usize {
    if tab.is_fsal() && !with_error {
        tab.stages() - 1
    } else {
        tab.stages()
    }
}

/// One explicit step's increment from `(t, y)` to `t1`.
struct Increment {
    /// `Σ h b_i k_i`.
    psi: Tensor,
    /// `Σ h e_i k_i`, with every stage.
    err: Option<Tensor>,
    /// The stages (all `s` with every stage).
    k: Vec<Tensor>,
}

/// One explicit step's increment from `(t, y)` to `t1` given `f0`. Stages at `t1` evaluate
/// at `t1_eval` (the inside of a jump there). With `every_stage`, the last stage of an FSAL
/// method too, for the error estimate and the dense output.
#[allow(clippy::too_many_arguments)]
fn increment<F: VectorField + ?Sized>(
    tab: &ButcherTableau,
    ev: &Evaluator<'_, F>,
    t: f64,
    t1: f64,
    t1_eval: f64,
    y: &Tensor,
    f0: &Tensor,
    every_stage: bool,
) -> Result<Increment> {
    let h = t1 - t;
    let n = increment_stages(tab, every_stage);
    let mut k: Vec<Tensor> = Vec::with_capacity(n);
    k.push(f0.clone());
    for i in 1..n {
        let yi = lincomb(
            Some(y),
            tab.a[i - 1].iter().zip(&k).map(|(a, kj)| (h * a, kj)),
        )?;
        let ti = if tab.c[i] == 1.0 {
            t1_eval
        } else {
            t + tab.c[i] * h
        };
        k.push(ev.eval(ti, &yi)?);
    }
    debug_assert!(tab.b[n..].iter().all(|&b| b == 0.0));
    let psi = lincomb(None, tab.b.iter().zip(&k).map(|(b, ki)| (h * b, ki)))?;
    let err = match (every_stage, tab.b_err) {
        (true, Some(e)) => Some(lincomb(None, e.iter().zip(&k).map(|(e, ki)| (h * e, ki)))?),
        _ => None,
    };
    Ok(Increment { psi, err, k })
}

/// The base method's dense output ([`interpolate`]) of a forward step from `(t, z)` to `t1`
/// with increment `inc` (every stage) at each of `taus`, evaluating `f(t1, z + Ψ)` once where
/// the interpolant needs it.
#[allow(clippy::too_many_arguments)]
fn dense_states<F: VectorField + ?Sized>(
    tab: &ButcherTableau,
    ev: &Evaluator<'_, F>,
    t: f64,
    t1: f64,
    t1_eval: f64,
    z: &Tensor,
    inc: &Increment,
    taus: &[f64],
) -> Result<Vec<Tensor>> {
    let z1 = (z + &inc.psi)?;
    let f1 = match needs_f1(tab) {
        true => Some(ev.eval(t1_eval, &z1)?),
        false => None,
    };
    taus.iter()
        .map(|&tau| interpolate(tab, t, t1, z, &inc.k, &z1, f1.as_ref(), tau))
        .collect()
}

/// Evaluations that a step with outputs inside it adds to its forward increment: the last
/// stage of an FSAL method, or `f(t1, z + Ψ)` for a Hermite interpolant without one.
fn dense_stages(tab: &ButcherTableau) -> usize {
    (tab.stages() - increment_stages(tab, false)) + usize::from(needs_f1(tab))
}

/// Solves `dy/dt = f(t, y)`, `y(ts[0]) = y0`, with `opts.method` made algebraically
/// reversible (module docs), and returns the states at `ts` and what walking the solve back
/// needs.
///
/// Adaptive solves control the error of the forward increment `Ψ_h(t_n, z_n)` (the base
/// method's embedded estimate, scaled by `y_n` and `y_(n+1)`), start the pair afresh when
/// `y − z` passes the tolerance, step to `step_ts` and `jump_ts`, and take outputs inside
/// steps from the dense output (module docs). A fixed-step solve adds the output times to
/// its grid. The solve is plain Candle ops: backprop through
/// it works as for [`crate::odeint`], and `node_adjoint::odeint_reversible_adjoint` gives the
/// same gradients with memory that does not grow with the steps.
///
/// # Shapes
/// As [`crate::odeint`]: `y0` any shape `S`, `ys` `[ts.len(), ...S]`.
///
/// # Errors
/// Those of [`crate::odeint`]; an implicit method; a coupling outside `(0, 1]`; a fixed-step
/// pair that diverged ([`SolverError::ReversibleDiverged`]).
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint_reversible, SolveOptions, DEFAULT_COUPLING};
/// # fn main() -> candle_core::Result<()> {
/// // dy/dt = -y, y(0) = 1  →  y(1) = e^{-1}; walking the steps back gives y(0) again.
/// let f = |_t: f64, y: &Tensor| y.neg();
/// let y0 = Tensor::new(&[1.0f64], &Device::Cpu)?;
/// let opts = SolveOptions::default().tolerances(1e-8, 1e-10);
/// let (sol, trace) = odeint_reversible(&f, &y0, &[0.0, 1.0], &opts, DEFAULT_COUPLING)?;
/// assert!((sol.last()?.to_vec1::<f64>()?[0] - (-1.0f64).exp()).abs() < 1e-7);
/// let (mut y, mut z) = (trace.y.clone(), trace.z.clone());
/// for i in (0..trace.steps()).rev() {
///     if let Some((y_kept, z_kept)) = trace.resync_at(i + 1) {
///         (y, z) = (y_kept.clone(), z_kept.clone());
///     }
///     (y, z) = trace.step_back(&f, i, &y, &z)?;
/// }
/// assert!((y.to_vec1::<f64>()?[0] - 1.0).abs() < 1e-12);
/// # Ok(()) }
/// ```
pub fn odeint_reversible<F: VectorField + ?Sized>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    coupling: f64,
) -> Result<(Solution, ReversibleTrace)> {
    opts.validate()?;
    let dir = check_times(ts)?;
    check_state(y0, opts)?;
    if !(coupling > 0.0 && coupling <= 1.0) {
        return Err(SolverError::InvalidOptions(format!(
            "the reversible solver's coupling must be in (0, 1], got {coupling}"
        ))
        .into());
    }
    if opts.method.is_implicit() {
        return Err(SolverError::InvalidOptions(format!(
            "the reversible solver needs an explicit method, and `{}` is implicit",
            opts.method
        ))
        .into());
    }
    let tab = opts.method.runge_kutta("the reversible solver")?;
    let mut run = Run {
        ev: Evaluator::new(f),
        tab,
        stops: Stops::new(opts, ts, dir),
        coupling,
        times: vec![ts[0]],
        resyncs: vec![],
        out: vec![y0.clone()],
        stats: SolverStats::default(),
    };
    let (y, z, last_step) = if ts.len() == 1 {
        (y0.clone(), y0.clone(), 0.0)
    } else if matches!(opts.step, StepSize::Adaptive) {
        run.adaptive(y0, ts, dir, opts)?
    } else {
        run.fixed(y0, ts, dir, opts)?
    };
    let Run {
        ev,
        stops,
        times,
        resyncs,
        out,
        mut stats,
        ..
    } = run;
    let ys = Tensor::stack(&out, 0)?;
    ev.count_into(&mut stats);
    let trace = ReversibleTrace {
        times,
        resyncs,
        y,
        z,
        coupling,
        method: opts.method,
        tab,
        stops,
    };
    let sol = Solution {
        ts: ts.to_vec(),
        ys,
        stats,
        last_step,
    };
    Ok((sol, trace))
}

struct Run<'a, F: ?Sized> {
    ev: Evaluator<'a, F>,
    tab: &'static ButcherTableau,
    stops: Stops,
    coupling: f64,
    times: Vec<f64>,
    resyncs: Vec<(usize, Tensor, Tensor)>,
    out: Vec<Tensor>,
    stats: SolverStats,
}

impl<F: VectorField + ?Sized> Run<'_, F> {
    /// The forward increment from `(t, z)` with `fz = f(t, z)`, and the new `y` it makes.
    fn forward(
        &self,
        t: f64,
        t1: f64,
        y: &Tensor,
        z: &Tensor,
        fz: &Tensor,
        every_stage: bool,
    ) -> Result<(Tensor, Increment)> {
        let (t1_eval, l) = (self.stops.end(t1), self.coupling);
        let inc = increment(self.tab, &self.ev, t, t1, t1_eval, z, fz, every_stage)?;
        let y1 = lincomb(Some(&inc.psi), [(l, y), (1.0 - l, z)])?;
        Ok((y1, inc))
    }

    /// The new `z` of a step from `(t, z)` to `(t1, y1)`: `z − Ψ_(−h)(t1, y1)`.
    fn backward(&self, t: f64, t1: f64, y1: &Tensor, z: &Tensor) -> Result<Tensor> {
        let fy = self.ev.eval(self.stops.end(t1), y1)?;
        let t_eval = self.stops.start(t);
        let inc = increment(self.tab, &self.ev, t1, t, t_eval, y1, &fy, false)?;
        z - inc.psi
    }

    /// Pushes the outputs strictly inside an accepted step from `(t, y, z)` to `t1`, from
    /// the dense output of its forward increment `inc`: `w_y y + w_z z` plus the base
    /// method's dense output of `z`'s step (see [`ReversibleTrace::output_weights`]).
    #[allow(clippy::too_many_arguments)]
    fn dense_outputs(
        &mut self,
        t: f64,
        t1: f64,
        y: &Tensor,
        z: &Tensor,
        inc: &Increment,
        ts: &[f64],
        dir: f64,
    ) -> Result<()> {
        let taus: Vec<f64> = ts[self.out.len()..]
            .iter()
            .copied()
            .take_while(|&tau| (t1 - tau) * dir > 0.0)
            .collect();
        if taus.is_empty() {
            return Ok(());
        }
        let t1_eval = self.stops.end(t1);
        let states = dense_states(self.tab, &self.ev, t, t1, t1_eval, z, inc, &taus)?;
        for (tau, state) in taus.into_iter().zip(states) {
            let (wy, wz) = output_weights((tau - t) / (t1 - t), self.coupling);
            self.out.push(lincomb(Some(&state), [(wy, y), (wz, z)])?);
        }
        Ok(())
    }

    /// Records an accepted step to `t1`, and an output there if there is one.
    fn record(&mut self, t1: f64, y1: &Tensor, ts: &[f64]) {
        self.stats.accepted_steps += 1;
        self.times.push(t1);
        if ts.get(self.out.len()) == Some(&t1) {
            self.out.push(y1.clone());
        }
    }

    fn adaptive(
        &mut self,
        y0: &Tensor,
        ts: &[f64],
        dir: f64,
        opts: &SolveOptions,
    ) -> Result<(Tensor, Tensor, f64)> {
        let atol = prepare_atol(&self.ev, &opts.atol, y0)?;
        let control = Controller::new(opts)?;
        let t_end = ts[ts.len() - 1];
        // The stops and the last time are steps' ends; other output times come from the
        // dense output of the steps that hold them.
        let mut targets: Vec<f64> = self.stops.inner.clone();
        targets.push(t_end);
        let mut next = 0;
        let (mut t, mut y, mut z) = (ts[0], y0.clone(), y0.clone());
        let mut fz = self.ev.eval(self.stops.start(t), &z)?;
        let exponent = self.tab.error_exponent();
        let mut h_abs = first_step(&self.ev, t, &z, &fz, dir, opts, &atol, exponent)?;
        let mut prev_ratio = 1.0f64;
        loop {
            let steps = self.stats.accepted_steps + self.stats.rejected_steps;
            if steps >= opts.max_steps {
                return Err(SolverError::MaxStepsExceeded { t, steps }.into());
            }
            let StepEnd {
                t1,
                clipped,
                at_min_step,
            } = StepEnd::new(t, targets[next], dir, h_abs, opts.min_step);
            let h_try = (t1 - t).abs();
            let (y1, inc) = self.forward(t, t1, &y, &z, &fz, true)?;
            let err = inc
                .err
                .as_ref()
                .expect("adaptive methods have an error estimate");
            let z1 = self.backward(t, t1, &y1, &z)?;
            // Two numbers in one read: the forward increment's error, and the gap between `y`
            // and `z`. The gap holds the scheme's parasitic mode, which is multiplied by about
            // `λ e^(−hμ)` per step on an eigenvalue `μ` of the dynamics, like the dynamics run
            // backwards: on contracting ones it grows unless the steps are tiny, and `y`
            // carries about half of it.
            let scale = error_scale(&y, Some(&y1), opts.rtol, &atol)?;
            let errors = Tensor::stack(
                &[
                    scaled_norm_sq(err, &scale, opts.norm)?,
                    scaled_norm_sq(&(&y1 - &z1)?, &scale, opts.norm)?,
                ],
                0,
            )?;
            let v: Vec<f64> = self.ev.read(&errors)?.iter().map(|e| e.sqrt()).collect();
            let (ratio, gap) = (v[0], v[1]);
            let ratio = if gap.is_nan() { f64::NAN } else { ratio };
            if accepts(ratio) {
                self.dense_outputs(t, t1, &y, &z, &inc, ts, dir)?;
                self.record(t1, &y1, ts);
                (t, y, z) = (t1, y1, z1);
                if gap > 1.0 {
                    // Beyond the tolerance: start the pair afresh from `y`, and keep the pair
                    // it replaces for the walk back (the only states the solve stores).
                    self.resyncs.push((self.times.len() - 1, y.clone(), z));
                    z = y.clone();
                }
                if clipped {
                    next += 1;
                }
                let factor = control.grow(ratio, prev_ratio);
                h_abs = (h_try * factor).min(opts.max_step);
                prev_ratio = ratio.max(1e-4);
                if t == t_end {
                    break;
                }
                fz = self.ev.eval(self.stops.start(t), &z)?;
            } else {
                self.stats.rejected_steps += 1;
                h_abs = control
                    .retry(t, dir, h_try, ratio, at_min_step, opts.min_step)?
                    .min(opts.max_step);
            }
        }
        Ok((y, z, h_abs))
    }

    fn fixed(
        &mut self,
        y0: &Tensor,
        ts: &[f64],
        dir: f64,
        opts: &SolveOptions,
    ) -> Result<(Tensor, Tensor, f64)> {
        let (t0, t_end) = (ts[0], ts[ts.len() - 1]);
        let grid = with_outputs(fixed_grid(opts, t0, t_end, dir)?, ts, dir);
        let (mut y, mut z) = (y0.clone(), y0.clone());
        for w in grid.windows(2) {
            let (t, t1) = (w[0], w[1]);
            let fz = self.ev.eval(self.stops.start(t), &z)?;
            let (y1, _) = self.forward(t, t1, &y, &z, &fz, false)?;
            z = self.backward(t, t1, &y1, &z)?;
            self.record(t1, &y1, ts);
            y = y1;
        }
        // Fixed steps read nothing back per step: NaN/inf propagate to the outputs and `z`.
        let mut check = self.out.clone();
        check.push(z.clone());
        if let Some(i) = first_non_finite(&self.ev, &Tensor::stack(&check, 0)?)? {
            return Err(SolverError::NonFinite {
                t: ts[i.min(ts.len() - 1)],
            }
            .into());
        }
        // With no tolerance to hold it to, the gap between `y` and `z` is only checked for
        // divergence: on dynamics that contract too fast for the steps, the parasitic mode
        // grows geometrically and `y` with it (see `adaptive`).
        let gap = self.ev.read(&Tensor::stack(
            &[(&y - &z)?.sqr()?.mean_all()?, y.sqr()?.mean_all()?],
            0,
        )?)?;
        let (gap, size) = (gap[0].sqrt(), gap[1].sqrt());
        let limit = MAX_FIXED_GAP * size.max(f64::MIN_POSITIVE);
        if gap > limit {
            return Err(SolverError::ReversibleDiverged {
                t: t_end,
                gap: gap / limit,
            }
            .into());
        }
        let n = grid.len() - 1;
        Ok((y, z, (grid[n] - grid[n - 1]).abs()))
    }
}

/// A fixed-step grid with the output times added as step ends: a grid point within rounding
/// of an output time (`t0 + 3h` against `0.3`) becomes that time instead of leaving a sliver
/// step beside it.
fn with_outputs(mut grid: Vec<f64>, ts: &[f64], dir: f64) -> Vec<f64> {
    let span = (ts[ts.len() - 1] - ts[0]).abs();
    let mut extra = vec![];
    for &t in &ts[1..ts.len() - 1] {
        let i = grid.partition_point(|&g| (g - t) * dir < 0.0);
        let near = [i.checked_sub(1), Some(i)]
            .into_iter()
            .flatten()
            .filter(|&j| j > 0 && j < grid.len() - 1)
            .find(|&j| (grid[j] - t).abs() <= 1e-12 * span);
        match near {
            Some(j) => grid[j] = t,
            None => extra.push(t),
        }
    }
    grid.extend(extra);
    grid.sort_by(|a, b| (a * dir).total_cmp(&(b * dir)));
    grid.dedup();
    grid
}
