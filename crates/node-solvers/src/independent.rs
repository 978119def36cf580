//! A batch of independent problems solved side by side, each with its own steps
//! (torchode's parallel solving, Lienen & Günnemann 2022).
//!
//! [`crate::odeint`] treats its state as one problem: one step size for the whole batch,
//! chosen by the error norm over every sample. A sample's solution then depends on its
//! batch-mates (a hard sample forces small steps on all, and its error is averaged down by
//! the easy ones), and all of them share one time span. [`odeint_independent`] keeps one
//! time, step size, error ratio and controller state per sample (the rows of the state's
//! leading dimension), while every stage still evaluates the field once on the whole batch:
//! each sample takes the steps it would take alone, to round-off, whatever else is in the
//! batch, and has its own output times. The field sees each sample's own time
//! ([`BatchField`]: `t` of shape `[B]`).
//!
//! One read back to the host per step (the `B` error ratios), as [`crate::odeint`]; the
//! times and step sizes live on the host. Differentiable by backprop through the steps (the
//! choice of steps is not differentiated, as in every adaptive solve).

use crate::error::SolverError;
use crate::independent_event::BatchWatch;
use crate::options::{ErrorNorm, SolveOptions, StepSize};
use crate::rk::read_to_host;
use crate::solve::{
    accepts, check_state, check_times, error_scale, for_norm, prepare_atol_with, Controller,
    PreparedAtol, StepEnd,
};
use crate::tableau::ButcherTableau;
use crate::VectorField;
use candle_core::{DType, Device, Result, Shape, Tensor};
use std::cell::Cell;
use std::rc::Rc;

/// A vector field over a batch of independent problems: `f(t, y)` with `y` of shape
/// `[B, …]` and `t` of shape `[B]`, each sample's own time, in `y`'s dtype and on its device.
/// It must return a tensor of `y`'s shape, and sample `b`'s rows may depend only on `t[b]`
/// and `y[b]` (the solver relies on it: a sample's steps are its own).
///
/// Any closure `Fn(&Tensor, &Tensor) -> Result<Tensor>` is one; [`TimeInvariant`] makes one
/// of a [`VectorField`] that does not depend on time.
pub trait BatchField {
    /// Evaluates `f(t, y)`.
    fn eval(&self, t: &Tensor, y: &Tensor) -> Result<Tensor>;

    /// Called by [`odeint_independent`] before the stages of each step: the samples' times
    /// `t`, their signed step sizes `h` (zero for the samples that have finished) and the
    /// state `y` there, where the step's first stage `f(t, y)` is known already. The step's
    /// other stages are the evaluations until [`BatchField::end_step`], in the tableau's
    /// order. For fields that integrate something along the solve (`node-adjoint`'s
    /// parameter gradients); the default does nothing.
    fn begin_step(&self, t: &[f64], h: &[f64], y: &Tensor) -> Result<()> {
        let _ = (t, h, y);
        Ok(())
    }

    /// Called after each step's stages: which samples' steps were accepted (a sample that has
    /// finished is not). The default does nothing.
    fn end_step(&self, accepted: &[bool]) -> Result<()> {
        let _ = accepted;
        Ok(())
    }
}

impl<F> BatchField for F
where
    F: Fn(&Tensor, &Tensor) -> Result<Tensor>,
{
    fn eval(&self, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        self(t, y)
    }
}

/// A [`VectorField`] that does not depend on time as a [`BatchField`]: evaluated at `t = 0`
/// whatever the samples' times. Only for autonomous fields (an ODE-Net block without a
/// time channel, `f(y)`); a field that reads `t` needs a [`BatchField`] of its own.
#[derive(Clone, Copy, Debug)]
pub struct TimeInvariant<F>(pub F);

impl<F: VectorField> BatchField for TimeInvariant<F> {
    fn eval(&self, _t: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.0.eval(0.0, y)
    }
}

/// One sample's counts in [`odeint_independent`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleStats {
    /// Accepted steps.
    pub accepted_steps: usize,
    /// Rejected steps.
    pub rejected_steps: usize,
}

/// The result of [`odeint_independent`].
#[derive(Clone, Debug)]
pub struct IndependentSolution {
    /// Each sample's output times (one row per sample).
    pub ts: Vec<Vec<f64>>,
    /// The states at the output times, `[T, B, …]`: `ys[j][b]` is sample `b` at `ts[b][j]`.
    pub ys: Tensor,
    /// Each sample's steps: what it would take solved alone.
    pub samples: Vec<SampleStats>,
    /// Steps of the batch: every one evaluates all samples' stages (a sample that has
    /// finished, or whose step was rejected, rides along unchanged). The most steps any
    /// sample took, or more when the samples' rejections fall on different steps.
    pub batch_steps: usize,
    /// Evaluations of the field, each on the whole batch.
    pub nfe: usize,
    /// Reads back to the host: one per batch step (the error ratios), two to choose the
    /// first steps (one when [`SolveOptions::first_step`] is given), and one to check a
    /// per-component `atol`.
    pub host_reads: usize,
}

/// Solves `dy/dt = f(t, y)` for a batch of independent problems, the rows of `y0`'s leading
/// dimension, each with its own output times, step sizes and error control.
///
/// `ts` holds one row of output times per sample, or a single row that every sample shares;
/// every row has the same length `T`, each strictly monotone (its own direction), starting at
/// the sample's initial time. Explicit adaptive Runge–Kutta methods (those with an error
/// estimate: dopri5, tsit5, bosh3, dopri8, …), the tolerances (a per-component `atol` of
/// `y0`'s shape), `first_step`, `min_step`, `max_step`, `max_steps` (per sample) and the
/// controller of `opts`; outputs between step ends by the method's dense output, as
/// [`crate::odeint`]. Sample `b` takes the steps that `odeint` takes on it alone, to
/// round-off, and its solution does not depend on the other samples.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint_independent, SolveOptions};
///
/// // y' = −λ y with λ = 1 and 50 in one batch, over spans of their own.
/// let dev = Device::Cpu;
/// let lambda = Tensor::new(&[[1.0f64], [50.0]], &dev)?;
/// let f = |_t: &Tensor, y: &Tensor| y.mul(&lambda)?.neg();
/// let y0 = Tensor::new(&[[1.0f64], [1.0]], &dev)?;
/// let ts = vec![vec![0.0, 1.0, 2.0], vec![0.0, 0.05, 0.1]];
/// let sol = odeint_independent(&f, &y0, &ts, &SolveOptions::default())?;
/// let y = sol.ys.to_vec3::<f64>()?; // [T, B, 1]
/// assert!((y[2][0][0] - (-2.0f64).exp()).abs() < 1e-6);
/// assert!((y[2][1][0] - (-5.0f64).exp()).abs() < 1e-6);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Errors
/// [`SolverError::InvalidTimes`] or [`SolverError::TimesNotMonotone`] for bad `ts` (naming
/// the row); [`SolverError::InvalidOptions`] for a fixed-step, implicit, Rosenbrock, IMEX,
/// multistep or rkc method, `step_ts`/`jump_ts`, a seminorm, or a state without a batch
/// dimension; [`SolverError::ShapeMismatch`] for a field output of the wrong shape; and a
/// sample's [`SolverError::StepSizeTooSmall`], [`SolverError::NonFinite`] or
/// [`SolverError::MaxStepsExceeded`], with the sample's index in the error's context.
pub fn odeint_independent<F: BatchField + ?Sized>(
    f: &F,
    y0: &Tensor,
    ts: &[Vec<f64>],
    opts: &SolveOptions,
) -> Result<IndependentSolution> {
    opts.validate()?;
    check_state(y0, opts)?;
    let tab = check_method(opts)?;
    let b = batch_size(y0)?;
    let ts = sample_times(ts, b)?;
    run(f, y0, ts, opts, tab, None)
}

/// The solve loop of [`odeint_independent`], with the options and `ts` checked, watching an
/// event function per sample when `watch` is given (with a terminal watch, a sample whose
/// event is found stops there, its state filed as its last output; otherwise its crossings
/// are recorded and it steps on).
pub(crate) fn run<F: BatchField + ?Sized>(
    f: &F,
    y0: &Tensor,
    ts: Vec<Vec<f64>>,
    opts: &SolveOptions,
    tab: &'static ButcherTableau,
    mut watch: Option<&mut BatchWatch<'_>>,
) -> Result<IndependentSolution> {
    let b = ts.len();
    let dirs = ts
        .iter()
        .enumerate()
        .map(|(i, row)| {
            check_times(row).map_err(|e| e.context(format!("output times of sample {i}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let n_out = ts[0].len();
    let ev = Evaluator::new(f, y0);
    let mut out = Outputs::new(y0, n_out);
    if n_out == 1 {
        return Ok(IndependentSolution {
            ts,
            ys: out.finish(y0)?,
            samples: vec![SampleStats::default(); b],
            batch_steps: 0,
            nfe: 0,
            host_reads: 0,
        });
    }
    let atol = prepare_atol_with(&opts.atol, y0, &|t| ev.read(t))?;
    let control = Controller::new(opts)?;
    let mut s = Samples::new(&ts, &dirs);
    if let Some(w) = watch.as_deref_mut() {
        w.start(&ev, &s.t, y0)?;
    }
    let mut y = y0.clone();
    let mut f0 = ev.eval(&s.t, &y)?;
    s.h = first_steps(&ev, &s, &y, &f0, opts, &atol, tab.error_exponent())?;
    let mut prev_ratio = vec![1.0f64; b];
    let mut batch_steps = 0;
    // Samples that record their crossings and go on (non-terminal events) step on after them.
    let goes_on = watch.as_deref().is_some_and(|w| !w.terminal);
    loop {
        // The searches for crossings: each searching sample's next trial time and its state
        // there; the samples whose search has ended are filed, which ends them.
        let (at, trial) = match watch.as_deref_mut() {
            Some(w) => {
                let at = w.propose()?;
                out.file(w.take_found(), &mut s.next);
                let trial = w.trial_states(&ev, &at)?;
                (at, trial)
            }
            None => (vec![None; b], None),
        };
        let searching: Vec<bool> = at.iter().map(Option::is_some).collect();
        if (0..b).all(|i| s.next[i] >= n_out) && !searching.iter().any(|&x| x) {
            break;
        }
        if (0..b).all(|i| s.next[i] >= n_out || searching[i]) {
            // Only searches are left: g at their trial states, one read.
            if let (Some(w), Some(trial)) = (watch.as_deref_mut(), trial) {
                let g = ev.read(&w.values(&ev, &trial_times(&at, &s.t), &trial)?)?;
                w.update(&at, &g, &trial)?;
            }
            continue;
        }
        batch_steps += 1;
        let mut t1 = s.t.clone();
        let mut ends = Vec::with_capacity(b);
        for i in 0..b {
            let steps = s.stats[i].accepted_steps + s.stats[i].rejected_steps;
            if s.next[i] >= n_out || searching[i] {
                ends.push(None);
                continue;
            }
            if steps >= opts.max_steps {
                return Err(in_sample(
                    SolverError::MaxStepsExceeded { t: s.t[i], steps },
                    i,
                ));
            }
            let end = StepEnd::new(
                s.t[i],
                *ts[i].last().unwrap_or(&s.t[i]),
                dirs[i],
                s.h[i],
                opts.min_step,
            );
            t1[i] = end.t1;
            ends.push(Some(end));
        }
        let hs: Vec<f64> = (0..b).map(|i| t1[i] - s.t[i]).collect();
        f.begin_step(&s.t, &hs, &y)?;
        let step = ev.step(tab, &s.t, &t1, &hs, &y, &f0)?;
        let scale = error_scale(&y, Some(&step.y1), opts.rtol, &atol)?;
        let ratios_sq = per_sample_rms_sq(&step.err, &scale)?;
        // With events, g comes back with the error ratios, still one read a step: at the
        // step's end for the stepping samples, at their trial states for the searching ones.
        let (ratios, g1) = match watch.as_deref() {
            None => (ev.read(&ratios_sq)?, Vec::new()),
            Some(w) => {
                let g1 = match &trial {
                    Some(tr) => w.values(
                        &ev,
                        &trial_times(&at, &t1),
                        &ev.mask(&searching)?.where_cond(tr, &step.y1)?,
                    )?,
                    None => w.values(&ev, &t1, &step.y1)?,
                };
                let mut all = ev.read(&Tensor::cat(&[ratios_sq.to_dtype(DType::F64)?, g1], 0)?)?;
                let g1 = all.split_off(b);
                (all, g1)
            }
        };
        if let (Some(w), Some(tr)) = (watch.as_deref_mut(), &trial) {
            w.update(&at, &g1, tr)?;
        }
        let mut accepted = vec![false; b];
        for i in 0..b {
            let Some(end) = &ends[i] else { continue };
            let ratio = ratios[i].sqrt();
            let h_try = hs[i].abs();
            if accepts(ratio) {
                accepted[i] = true;
                s.stats[i].accepted_steps += 1;
                s.h[i] = h_try * control.grow(ratio, prev_ratio[i]);
                prev_ratio[i] = ratio.max(1e-4);
            } else {
                s.stats[i].rejected_steps += 1;
                s.h[i] = control
                    .retry(
                        s.t[i],
                        dirs[i],
                        h_try,
                        ratio,
                        end.at_min_step,
                        opts.min_step,
                    )
                    .map_err(|e| e.context(format!("sample {i}")))?;
            }
            s.h[i] = s.h[i].min(opts.max_step);
        }
        f.end_step(&accepted)?;
        if !accepted.iter().any(|&a| a) {
            continue;
        }
        let mask = ev.mask(&accepted)?;
        let y_new = mask.where_cond(&step.y1, &y)?;
        // The elements of g whose sign changed in each accepted sample's step: that sample
        // searches the step for them (and, with a terminal watch, stops at the first).
        let crossings = match watch.as_deref() {
            Some(w) => w.crossings(&accepted, &t1, &g1)?,
            None => vec![Vec::new(); b],
        };
        let any_crossing = crossings.iter().any(|c| !c.is_empty());
        // Outputs in (t, t1] of the accepted samples.
        let wanted: Vec<Vec<f64>> = (0..b)
            .map(|i| {
                let mut v = Vec::new();
                if accepted[i] && (goes_on || crossings[i].is_empty()) {
                    while s.next[i] + v.len() < n_out
                        && (ts[i][s.next[i] + v.len()] - t1[i]) * dirs[i] <= 0.0
                    {
                        v.push(ts[i][s.next[i] + v.len()]);
                    }
                }
                v
            })
            .collect();
        let finished = (0..b).all(|i| {
            s.next[i] >= n_out
                || searching[i]
                || (accepted[i]
                    && ((!goes_on && !crossings[i].is_empty())
                        || s.next[i] + wanted[i].len() >= n_out))
        });
        let any_output = wanted.iter().any(|v| !v.is_empty());
        let mut t_new = s.t.clone();
        for i in 0..b {
            if accepted[i] {
                t_new[i] = t1[i];
            }
        }
        // f at each sample's new step start: the FSAL stage where accepted; otherwise one
        // evaluation (for the next step, or the dense output's f(t1, y1)).
        let needs_f1 = !tab.is_fsal() && matches!(tab.interpolant, crate::Interpolant::Hermite);
        let f_new = if tab.is_fsal() {
            Some(mask.where_cond(&step.k[tab.stages() - 1], &f0)?)
        } else if !finished || ((any_output || any_crossing) && needs_f1) {
            Some(ev.eval(&t_new, &y_new)?)
        } else {
            None
        };
        if let (true, Some(w)) = (any_crossing, watch.as_deref_mut()) {
            // The samples that crossed search this step's dense output from the next
            // iteration on, their trials read with the later steps' error ratios.
            let kept = Rc::new(StoredStep {
                tab,
                t: s.t.clone(),
                t1: t1.clone(),
                hs: hs.clone(),
                y: y.clone(),
                step: step.clone(),
                f1: f_new.clone(),
            });
            for (i, c) in crossings.iter().enumerate() {
                if !c.is_empty() {
                    w.begin(i, c, &kept, &g1);
                }
            }
        }
        if let Some(w) = watch.as_deref_mut() {
            w.advance(&accepted, &g1);
        }
        if any_output {
            let dense = DenseStep {
                tab,
                t: &s.t,
                t1: &t1,
                hs: &hs,
                y: &y,
                step: &step,
                f1: f_new.as_ref(),
            };
            out.emit(&dense, &wanted, &mut s.next, &ev)?;
        }
        s.t = t_new;
        y = y_new;
        if let Some(f) = f_new {
            f0 = f;
        }
    }
    Ok(IndependentSolution {
        ys: out.finish(y0)?,
        ts,
        samples: s.stats,
        batch_steps,
        nfe: ev.nfe.get(),
        host_reads: ev.reads.get(),
    })
}

/// Each sample's trial time where it has one, else its `default`.
fn trial_times(at: &[Option<f64>], default: &[f64]) -> Vec<f64> {
    at.iter()
        .zip(default)
        .map(|(a, d)| a.unwrap_or(*d))
        .collect()
}

/// The per-sample bookkeeping, on the host.
struct Samples {
    t: Vec<f64>,
    h: Vec<f64>,
    dirs: Vec<f64>,
    /// The next output index of each sample.
    next: Vec<usize>,
    stats: Vec<SampleStats>,
}

impl Samples {
    fn new(ts: &[Vec<f64>], dirs: &[f64]) -> Self {
        let b = ts.len();
        Self {
            t: ts.iter().map(|r| r[0]).collect(),
            h: vec![0.0; b],
            dirs: dirs.to_vec(),
            next: vec![1; b],
            stats: vec![SampleStats::default(); b],
        }
    }
}

pub(crate) fn in_sample(e: SolverError, i: usize) -> candle_core::Error {
    candle_core::Error::from(e).context(format!("sample {i}"))
}

pub(crate) fn check_method(opts: &SolveOptions) -> Result<&'static ButcherTableau> {
    let tab = opts.method.runge_kutta("odeint_independent")?;
    let refuse = |why: String| Err(SolverError::InvalidOptions(why).into());
    if tab.is_implicit() || tab.is_rosenbrock() || tab.is_imex() {
        return refuse(format!(
            "odeint_independent takes explicit methods, and `{}` is implicit",
            opts.method
        ));
    }
    if !tab.is_adaptive() {
        return refuse(format!(
            "odeint_independent takes adaptive methods (with an error estimate), and `{}` has none",
            opts.method
        ));
    }
    if !matches!(opts.step, StepSize::Adaptive) {
        return refuse(
            "odeint_independent takes adaptive steps (fixed steps over one shared span are the same for every sample: use odeint)"
                .into(),
        );
    }
    if !opts.step_ts.is_empty() || !opts.jump_ts.is_empty() {
        return refuse("odeint_independent has no step_ts or jump_ts".into());
    }
    if opts.norm != ErrorNorm::Rms {
        return refuse("odeint_independent measures each sample's error by its RMS; a seminorm is not supported".into());
    }
    Ok(tab)
}

pub(crate) fn batch_size(y0: &Tensor) -> Result<usize> {
    match y0.dims().first() {
        Some(&b) if b > 0 => Ok(b),
        _ => Err(SolverError::InvalidOptions(format!(
            "odeint_independent needs a state with a batch dimension of at least one sample, got shape {:?}",
            y0.shape()
        ))
        .into()),
    }
}

/// One row of output times per sample: `ts` itself, or its one row repeated.
pub(crate) fn sample_times(ts: &[Vec<f64>], b: usize) -> Result<Vec<Vec<f64>>> {
    let rows = match ts.len() {
        1 => vec![ts[0].clone(); b],
        n if n == b => ts.to_vec(),
        n => {
            return Err(SolverError::InvalidTimes(format!(
                "{n} rows of output times for {b} samples (one per sample, or one shared)"
            ))
            .into())
        }
    };
    let len = rows[0].len();
    if let Some(i) = rows.iter().position(|r| r.len() != len) {
        return Err(SolverError::InvalidTimes(format!(
            "sample {i} has {} output times and sample 0 has {len}: every sample needs as many",
            rows[i].len()
        ))
        .into());
    }
    Ok(rows)
}

/// `mean((x / scale)²)` over each sample's components: `[B]`.
fn per_sample_rms_sq(x: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    if x.elem_count() == 0 {
        return Tensor::zeros(b, scale.dtype(), scale.device());
    }
    (for_norm(x)? / scale)?.sqr()?.reshape((b, ()))?.mean(1)
}

/// Hairer's initial step for each sample, as [`crate::odeint`] chooses it for one problem
/// (two reads for the batch), or `opts.first_step` for all (one read, checking `y` and `f`).
fn first_steps<F: BatchField + ?Sized>(
    ev: &Evaluator<'_, F>,
    s: &Samples,
    y0: &Tensor,
    f0: &Tensor,
    opts: &SolveOptions,
    atol: &PreparedAtol,
    exponent: f64,
) -> Result<Vec<f64>> {
    let b = s.t.len();
    let non_finite = |i: usize| in_sample(SolverError::NonFinite { t: s.t[i] }, i);
    if let Some(h) = opts.first_step {
        let both = Tensor::cat(&[y0, f0], 0)?;
        let sums = ev.read(&both.sub(&both)?.reshape((2 * b, ()))?.sum(1)?)?;
        if let Some(i) = sums.iter().position(|v| !v.is_finite()) {
            return Err(non_finite(i % b));
        }
        return Ok(vec![h.clamp(opts.min_step, opts.max_step); b]);
    }
    let scale = error_scale(y0, None, opts.rtol, atol)?;
    let d01 = ev.read(&Tensor::cat(
        &[
            per_sample_rms_sq(y0, &scale)?,
            per_sample_rms_sq(f0, &scale)?,
        ],
        0,
    )?)?;
    let mut h0 = vec![0.0; b];
    for i in 0..b {
        let (d0, d1) = (d01[i].sqrt(), d01[b + i].sqrt());
        if !(d0.is_finite() && d1.is_finite()) {
            return Err(non_finite(i));
        }
        h0[i] = if d0 < 1e-5 || d1 < 1e-5 {
            1e-6
        } else {
            0.01 * d0 / d1
        };
    }
    let signed: Vec<f64> = (0..b).map(|i| s.dirs[i] * h0[i]).collect();
    let y1 = ev.combine(Some(y0), &[(signed.clone(), f0)])?;
    let t1: Vec<f64> = (0..b).map(|i| s.t[i] + signed[i]).collect();
    let f1 = ev.eval(&t1, &y1)?;
    let d2 = ev.read(&per_sample_rms_sq(&(f1 - f0)?, &scale)?)?;
    Ok((0..b)
        .map(|i| {
            let (d1, d2) = (d01[b + i].sqrt(), d2[i].sqrt() / h0[i]);
            let h1 = if !d2.is_finite() {
                h0[i]
            } else if d1 <= 1e-15 && d2 <= 1e-15 {
                (h0[i] * 1e-3).max(1e-6)
            } else {
                (0.01 / d1.max(d2)).powf(1.0 / exponent)
            };
            (100.0 * h0[i]).min(h1).clamp(opts.min_step, opts.max_step)
        })
        .collect())
}

/// The stages, the propagated states and the error estimate of one batch step.
#[derive(Clone)]
pub(crate) struct BatchStep {
    k: Vec<Tensor>,
    pub(crate) y1: Tensor,
    err: Tensor,
}

/// A batch step with what its dense output needs: from `t` to `t1` (`h = t1 − t`) from `y`,
/// and `f(t1, y1)` where the method's interpolant uses it.
pub(crate) struct DenseStep<'a> {
    pub(crate) tab: &'a ButcherTableau,
    pub(crate) t: &'a [f64],
    pub(crate) t1: &'a [f64],
    pub(crate) hs: &'a [f64],
    pub(crate) y: &'a Tensor,
    pub(crate) step: &'a BatchStep,
    pub(crate) f1: Option<&'a Tensor>,
}

/// A batch step kept for its dense output after the solve has moved on.
pub(crate) struct StoredStep {
    tab: &'static ButcherTableau,
    t: Vec<f64>,
    t1: Vec<f64>,
    hs: Vec<f64>,
    y: Tensor,
    step: BatchStep,
    f1: Option<Tensor>,
}

impl StoredStep {
    pub(crate) fn view(&self) -> DenseStep<'_> {
        DenseStep {
            tab: self.tab,
            t: &self.t,
            t1: &self.t1,
            hs: &self.hs,
            y: &self.y,
            step: &self.step,
            f1: self.f1.as_ref(),
        }
    }
}

/// The field with its counts, and the batch's shapes for per-sample columns.
pub(crate) struct Evaluator<'a, F: ?Sized> {
    f: &'a F,
    pub(crate) shape: Shape,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    pub(crate) nfe: Cell<usize>,
    pub(crate) reads: Cell<usize>,
}

impl<'a, F: BatchField + ?Sized> Evaluator<'a, F> {
    pub(crate) fn new(f: &'a F, y0: &Tensor) -> Self {
        Self {
            f,
            shape: y0.shape().clone(),
            dtype: y0.dtype(),
            device: y0.device().clone(),
            nfe: Cell::new(0),
            reads: Cell::new(0),
        }
    }

    /// `f(t, y)` at the samples' times `t`, its shape checked.
    pub(crate) fn eval(&self, t: &[f64], y: &Tensor) -> Result<Tensor> {
        let tt = Tensor::from_slice(t, t.len(), &self.device)?.to_dtype(self.dtype)?;
        let k = self.f.eval(&tt, y)?;
        self.nfe.set(self.nfe.get() + 1);
        if k.shape() != y.shape() {
            return Err(SolverError::ShapeMismatch {
                expected: y.shape().clone(),
                got: k.shape().clone(),
                t: t[0],
            }
            .into());
        }
        if k.dtype() != y.dtype() || !k.device().same_device(y.device()) {
            return Err(SolverError::OutputMismatch(format!(
                "the field returned {:?} on {:?} for a state of {:?} on {:?}",
                k.dtype(),
                k.device().location(),
                y.dtype(),
                y.device().location()
            ))
            .into());
        }
        Ok(k)
    }

    pub(crate) fn read(&self, t: &Tensor) -> Result<Vec<f64>> {
        self.reads.set(self.reads.get() + 1);
        read_to_host(t)
    }

    /// Per-sample values as a `[B, 1, …, 1]` column that broadcasts against the state.
    pub(crate) fn column(&self, v: &[f64]) -> Result<Tensor> {
        let mut dims = vec![1; self.shape.rank()];
        dims[0] = v.len();
        Tensor::from_slice(v, v.len(), &self.device)?
            .to_dtype(self.dtype)?
            .reshape(dims)
    }

    /// A `[B]` tensor as a `[B, 1, …, 1]` column that broadcasts against the state.
    pub(crate) fn column_of(&self, v: &Tensor) -> Result<Tensor> {
        let mut dims = vec![1; self.shape.rank()];
        dims[0] = self.shape.dims()[0];
        v.reshape(dims)
    }

    /// A state-shaped mask: the rows of the samples where `on` holds.
    pub(crate) fn mask(&self, on: &[bool]) -> Result<Tensor> {
        let v: Vec<u8> = on.iter().map(|&a| u8::from(a)).collect();
        let mut dims = vec![1; self.shape.rank()];
        dims[0] = v.len();
        Tensor::from_vec(v, on.len(), &self.device)?
            .reshape(dims)?
            .broadcast_as(&self.shape)
    }

    /// `base + Σ_j w_j ⊙ k_j` with one weight per sample in each `w_j`, term by term in
    /// order, as [`lincomb`](crate::rk::lincomb) combines scalar weights: the same floats,
    /// so each sample's values are those of its solve alone. Terms whose weights are all
    /// zero are skipped; `base` itself when none is left.
    fn combine(&self, base: Option<&Tensor>, terms: &[(Vec<f64>, &Tensor)]) -> Result<Tensor> {
        let terms: Vec<(Vec<f64>, &Tensor)> = terms
            .iter()
            .filter(|(w, _)| w.iter().any(|&x| x != 0.0))
            .cloned()
            .collect();
        if let Some(out) = crate::fused::lincomb_rows(base, &terms)? {
            return Ok(out);
        }
        let mut acc: Option<Tensor> = None;
        for (w, k) in &terms {
            let term = k.broadcast_mul(&self.column(w)?)?;
            acc = Some(match (acc, base) {
                (Some(a), _) => (a + term)?,
                (None, Some(b)) => (b + term)?,
                (None, None) => term,
            });
        }
        match (acc, base) {
            (Some(a), _) => Ok(a),
            (None, Some(b)) => Ok(b.clone()),
            (None, None) => candle_core::bail!("a combination of no terms"),
        }
    }

    /// The terms `(h_b · c_j, k_j)` of a tableau row `c`.
    fn scaled<'k>(hs: &[f64], row: &[f64], k: &'k [Tensor]) -> Vec<(Vec<f64>, &'k Tensor)> {
        row.iter()
            .zip(k)
            .map(|(c, kj)| (hs.iter().map(|h| h * c).collect(), kj))
            .collect()
    }

    /// The dense output of `d`'s step for each sample at its time `at[i]` in `(t, t1]`
    /// (`t1` itself exactly); the rows of the samples without one are `y`'s.
    pub(crate) fn dense(&self, d: &DenseStep<'_>, at: &[Option<f64>]) -> Result<Tensor> {
        let b = at.len();
        let s = d.tab.stages();
        // Weights `h_b w_j(θ_b)` per stage (and for f1), one per sample.
        let mut w = vec![vec![0.0; b]; s + 1];
        let mut at_end = vec![false; b];
        let mut buf = vec![0.0; s + 1];
        for (i, a) in at.iter().enumerate() {
            let Some(tn) = *a else { continue };
            if tn == d.t1[i] {
                at_end[i] = true;
                continue;
            }
            d.tab.dense_weights((tn - d.t[i]) / d.hs[i], &mut buf);
            for (j, wj) in buf.iter().enumerate() {
                w[j][i] = d.hs[i] * wj;
            }
        }
        let f1_used = w[s].iter().any(|&x| x != 0.0);
        let f1 = match (f1_used, d.f1) {
            (false, _) => None,
            (true, Some(f1)) => Some(f1),
            (true, None) => candle_core::bail!("dense output: f(t1, y1) is needed and missing"),
        };
        let extra = w.pop().unwrap_or_default();
        let mut terms: Vec<(Vec<f64>, &Tensor)> = w.into_iter().zip(&d.step.k).collect();
        if let Some(f1) = f1 {
            terms.push((extra, f1));
        }
        let interp = self.combine(Some(d.y), &terms)?;
        if at_end.iter().any(|&e| e) {
            self.mask(&at_end)?.where_cond(&d.step.y1, &interp)
        } else {
            Ok(interp)
        }
    }

    /// One explicit Runge–Kutta step of every sample: from `t` to `t1` (`h = t1 − t`, zero
    /// for the samples that have finished).
    fn step(
        &self,
        tab: &ButcherTableau,
        t: &[f64],
        t1: &[f64],
        hs: &[f64],
        y: &Tensor,
        f0: &Tensor,
    ) -> Result<BatchStep> {
        let s = tab.stages();
        let mut k: Vec<Tensor> = Vec::with_capacity(s);
        k.push(f0.clone());
        let mut last = None;
        for i in 1..s {
            let yi = self.combine(Some(y), &Self::scaled(hs, tab.a[i - 1], &k))?;
            let ti: Vec<f64> = (0..t.len())
                .map(|j| {
                    if tab.c[i] == 1.0 {
                        t1[j]
                    } else {
                        t[j] + tab.c[i] * hs[j]
                    }
                })
                .collect();
            k.push(self.eval(&ti, &yi)?);
            if i == s - 1 {
                last = Some(yi);
            }
        }
        let y1 = match (tab.is_fsal(), last) {
            (true, Some(y1)) => y1,
            _ => self.combine(Some(y), &Self::scaled(hs, tab.b, &k))?,
        };
        let e = tab.b_err.expect("adaptive methods have an error estimate");
        let err = self.combine(None, &Self::scaled(hs, e, &k))?;
        Ok(BatchStep { k, y1, err })
    }
}

/// The outputs as they come: the rows filed, in pieces (`[r, …]`, only the rows that are
/// outputs, so memory grows with the outputs and not with the batch times the steps that
/// have any), and for each output index and sample its row among all; gathered into
/// `[T, B, …]` at the end.
struct Outputs {
    pieces: Vec<Tensor>,
    rows: usize,
    slot: Vec<Vec<usize>>,
}

impl Outputs {
    fn new(y0: &Tensor, n_out: usize) -> Self {
        let b = y0.dim(0).unwrap_or(0);
        let mut slot = vec![vec![usize::MAX; b]; n_out];
        slot[0] = (0..b).collect();
        Self {
            pieces: vec![y0.clone()],
            rows: b,
            slot,
        }
    }

    /// Files the rows of `piece` (`[B, …]`) of the samples in `at` under their next output
    /// indices.
    fn file_rows(&mut self, piece: &Tensor, at: &[bool], next: &mut [usize]) -> Result<()> {
        let which: Vec<u32> = (0..at.len()).filter(|&i| at[i]).map(|i| i as u32).collect();
        let rows = if which.len() == at.len() {
            piece.clone()
        } else {
            piece.index_select(&Tensor::new(which.as_slice(), piece.device())?, 0)?
        };
        for (r, &i) in which.iter().enumerate() {
            let i = i as usize;
            self.slot[next[i]][i] = self.rows + r;
            next[i] += 1;
        }
        self.rows += which.len();
        self.pieces.push(rows);
        Ok(())
    }

    /// The dense output of the accepted samples at their `wanted` times in `(t, t1]` (the
    /// step's end itself exactly), filed under their next output indices.
    fn emit<F: BatchField + ?Sized>(
        &mut self,
        dense: &DenseStep<'_>,
        wanted: &[Vec<f64>],
        next: &mut [usize],
        ev: &Evaluator<'_, F>,
    ) -> Result<()> {
        let rounds = wanted.iter().map(Vec::len).max().unwrap_or(0);
        for r in 0..rounds {
            let at: Vec<Option<f64>> = wanted.iter().map(|w| w.get(r).copied()).collect();
            let filed: Vec<bool> = at.iter().map(Option::is_some).collect();
            self.file_rows(&ev.dense(dense, &at)?, &filed, next)?;
        }
        Ok(())
    }

    /// Files each found event's state (a row `[1, …]`) as its sample's next output, which
    /// ends the sample.
    fn file(&mut self, found: Vec<(usize, Tensor)>, next: &mut [usize]) {
        for (i, row) in found {
            self.slot[next[i]][i] = self.rows;
            self.rows += 1;
            self.pieces.push(row);
            next[i] = self.slot.len();
        }
    }

    /// `[T, B, …]`: one gather from the rows.
    fn finish(self, y0: &Tensor) -> Result<Tensor> {
        let b = y0.dim(0)?;
        let n_out = self.slot.len();
        let all = Tensor::cat(&self.pieces, 0)?;
        let idx: Vec<u32> = self.slot.iter().flatten().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, n_out * b, y0.device())?;
        let mut dims = vec![n_out, b];
        dims.extend_from_slice(&y0.dims()[1..]);
        all.index_select(&idx, 0)?.reshape(dims)
    }
}
