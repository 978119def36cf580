//! `odeint_independent_event`: a batch of independent problems, each solved until its own
//! event.
//!
//! [`crate::odeint_event`] stops a whole solve at the first crossing anywhere in its state:
//! on a batch, the first sample to hit its surface stops them all. Here every sample (a row
//! of the state's leading dimension) has its own time span, steps ([`crate::odeint_independent`])
//! and event: the solve watches the sign of each sample's row of `g(t, y)` after each of its
//! accepted steps, locates a crossing on that sample's dense output, and stops that sample
//! there while the others go on. A batch of bouncing balls dropped from different heights
//! lands each at its own time in one batched solve.
//!
//! `g(t1, y1)` comes back with the step's error ratios, so a step still reads the device
//! once. A sample whose conditions changed sign stops stepping and searches that step's
//! dense output (kept) by the Illinois method, one trial a batch step: the trial's `g` is
//! evaluated with the stepping samples' `g(t1, y1)` and comes back in the same read. Only
//! the searches left when no sample steps any more read on their own, once an iteration
//! for all of them.
//! Each event time is differentiable by the implicit function theorem, sample by sample, as
//! in [`crate::event`]: [`independent_event_gradients`].

use crate::error::SolverError;
use crate::event::{
    check_event_output, sign, time_difference_step, EventOptions, Illinois, RecordedEvent,
};
use crate::independent::{
    batch_size, check_method, in_sample, run, BatchField, Evaluator, IndependentSolution,
    SampleStats, StoredStep,
};
use crate::options::SolveOptions;
use crate::solve::check_state;
use crate::tableau::ButcherTableau;
use candle_core::{DType, Result, Tensor, Var};
use std::collections::VecDeque;
use std::rc::Rc;

/// An event function over a batch of independent problems: `g(t, y)` with `y` of shape
/// `[B, …]` and `t` of shape `[B]` (each sample's own time, in `y`'s dtype), returning a
/// float tensor of shape `[B]` or `[B, …]` on `y`'s device: each sample's row holds its
/// conditions (the sample stops at the first crossing of zero of any of them), and may depend
/// only on `t[b]` and `y[b]`. The number of conditions per sample must not change during a
/// solve.
///
/// Any closure `Fn(&Tensor, &Tensor) -> Result<Tensor>` is one. To be differentiated, it must
/// be built from Candle ops on `y` (and its own parameters, which then receive gradients).
pub trait BatchEventFunction {
    /// Evaluates `g(t, y)`.
    fn eval(&self, t: &Tensor, y: &Tensor) -> Result<Tensor>;
}

impl<G> BatchEventFunction for G
where
    G: Fn(&Tensor, &Tensor) -> Result<Tensor>,
{
    fn eval(&self, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        self(t, y)
    }
}

/// Where each sample of [`locate_independent_event`] stopped, before the event times are made
/// differentiable.
#[derive(Clone, Debug)]
pub struct LocatedIndependentEvent {
    /// Each sample's event time, or the end of its span when it had none.
    pub t: Vec<f64>,
    /// The states at those times, `[B, …]` (differentiable by backprop through the solver,
    /// the times held fixed).
    pub y: Tensor,
    /// Which of each sample's conditions (in its row's flattened order) crossed zero; `None`
    /// for a sample that reached the end of its span first.
    pub event: Vec<Option<usize>>,
    /// Each sample's steps.
    pub samples: Vec<SampleStats>,
    /// Steps of the batch (see [`crate::IndependentSolution::batch_steps`]).
    pub batch_steps: usize,
    /// Evaluations of the field, each on the whole batch.
    pub nfe: usize,
    /// Reads back to the host: those of [`crate::odeint_independent`] (each step's read
    /// brings `g` back with the error ratios, and the searching samples' trials), one of
    /// `g(t0, y0)`, and one per iteration of the searches left when no sample steps any more.
    pub host_reads: usize,
}

/// The result of [`odeint_independent_event`].
#[derive(Clone, Debug)]
pub struct IndependentEventSolution {
    /// Each sample's event time, or the end of its span when it had none.
    pub t: Vec<f64>,
    /// `t` as a tensor of shape `[B]` (the state's dtype and device) that carries each event
    /// time's gradient (to `y0`, the field's and the event function's parameters); constant
    /// for the samples without an event.
    pub time: Tensor,
    /// The states at `t`, `[B, …]`, differentiable, their gradients including the event
    /// times' dependence.
    pub y: Tensor,
    /// Which of each sample's conditions crossed zero; `None` for a sample without an event.
    pub event: Vec<Option<usize>>,
    /// Each sample's steps.
    pub samples: Vec<SampleStats>,
    /// Steps of the batch.
    pub batch_steps: usize,
    /// Evaluations of the field, the gradient's one included.
    pub nfe: usize,
    /// Reads back to the host: those of [`LocatedIndependentEvent::host_reads`], and one for
    /// the gradients' rates when they are needed.
    pub host_reads: usize,
}

/// Solves a batch of independent problems `dy/dt = f(t, y)` (the rows of `y0`), each from its
/// own start time towards its own end time and with its own steps, as
/// [`crate::odeint_independent`], and stops each sample where its row of `g(t, y)` first
/// crosses zero (as [`crate::odeint_event`] would on that sample alone).
///
/// `spans` holds one `[t0, t_max]` per sample, or one that every sample shares (each in
/// either direction). The event semantics are [`crate::odeint_event`]'s, per sample: a
/// condition exactly zero at `t0` starts watching once it becomes non-zero; the returned time
/// is the last one located on the side the crossing starts from, within
/// `ev_opts.time_tol`; two crossings of one condition within one step cancel (`max_step`
/// bounds what can be missed). A sample that has crossed rides along the batch's later steps
/// unchanged while it searches for the crossing (module docs), and after.
///
/// Gradients flow into [`IndependentEventSolution::time`] and
/// [`IndependentEventSolution::y`] by backprop through the solver and through each event time
/// by the implicit function theorem ([`independent_event_gradients`]); for constant memory,
/// `node_adjoint::odeint_independent_event_adjoint` solves the same problem with the
/// adjoint.
///
/// # Shapes
/// - `y0`: `[B, …]`; `f(t, y)`: `y`'s shape, `t` of shape `[B]`; `g(t, y)`: `[B]` or
///   `[B, …]`.
/// - result: `time` `[B]`, `y` `[B, …]`.
///
/// # Errors
/// Those of [`crate::odeint_independent`] (explicit adaptive methods only; a sample's step
/// underflow, non-finite state or too many steps, naming the sample);
/// [`SolverError::InvalidTimes`] for a wrong number of spans or an empty one;
/// [`SolverError::OutputMismatch`] for an event function whose output has no batch dimension
/// of `B`, no condition, a changing number of them, another device or an integer dtype;
/// [`SolverError::NonFinite`] if a sample's `g` is NaN or infinite at its start or after an
/// accepted step; and [`SolverError::EventNotTransversal`] when gradients are needed but a
/// sample's `g` does not change along its solution at its event.
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint_independent_event, EventOptions, SolveOptions};
/// # fn main() -> candle_core::Result<()> {
/// // Balls dropped from 1, 2 and 5 m: y = [height, velocity], each lands at √(2·h/9.81).
/// let dev = Device::Cpu;
/// let field = |_t: &Tensor, y: &Tensor| {
///     let v = y.narrow(1, 1, 1)?;
///     Tensor::cat(&[v.clone(), (v.zeros_like()? - 9.81)?], 1)
/// };
/// let height = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1);
/// let y0 = Tensor::new(&[[1.0f64, 0.0], [2.0, 0.0], [5.0, 0.0]], &dev)?;
/// let sol = odeint_independent_event(
///     &field,
///     &y0,
///     &[[0.0, 10.0]],
///     &height,
///     &SolveOptions::default(),
///     &EventOptions::default(),
/// )?;
/// for (t, h) in sol.t.iter().zip([1.0f64, 2.0, 5.0]) {
///     assert!((t - (2.0 * h / 9.81).sqrt()).abs() < 1e-10);
/// }
/// assert_eq!(sol.event, vec![Some(0); 3]);
/// # Ok(()) }
/// ```
pub fn odeint_independent_event<F, G>(
    f: &F,
    y0: &Tensor,
    spans: &[[f64; 2]],
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
) -> Result<IndependentEventSolution>
where
    F: BatchField + ?Sized,
    G: BatchEventFunction,
{
    let found = locate_independent_event(f, y0, spans, g, opts, ev_opts)?;
    let (time, y, nfe, reads) = reroute(f, g, &found.t, &found.event, &found.y)?;
    Ok(IndependentEventSolution {
        t: found.t,
        time,
        y,
        event: found.event,
        samples: found.samples,
        batch_steps: found.batch_steps,
        nfe: found.nfe + nfe,
        host_reads: found.host_reads + reads,
    })
}

/// [`odeint_independent_event`] without the event times' gradients: the located times and
/// states, `y` differentiable only with the times held fixed. For callers that differentiate
/// by other means (the adjoint) and then call [`independent_event_gradients`].
///
/// # Errors
/// As [`odeint_independent_event`], except [`SolverError::EventNotTransversal`].
pub fn locate_independent_event<F, G>(
    f: &F,
    y0: &Tensor,
    spans: &[[f64; 2]],
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
) -> Result<LocatedIndependentEvent>
where
    F: BatchField + ?Sized,
    G: BatchEventFunction,
{
    let (sol, watch, ends) = watched(f, y0, spans, g, opts, ev_opts, true)?;
    let b = ends.len();
    Ok(LocatedIndependentEvent {
        t: (0..b)
            .map(|i| watch.found[i].map_or(ends[i], |(t, _)| t))
            .collect(),
        y: sol.ys.get(1)?,
        event: watch.found.iter().map(|f| f.map(|(_, e)| e)).collect(),
        samples: sol.samples,
        batch_steps: sol.batch_steps,
        nfe: sol.nfe,
        host_reads: sol.host_reads,
    })
}

/// The batch solve watched by `g`, terminal or not: the solution, the watch (what it found)
/// and each sample's `t_max`.
fn watched<'g, F, G>(
    f: &F,
    y0: &Tensor,
    spans: &[[f64; 2]],
    g: &'g G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    terminal: bool,
) -> Result<(IndependentSolution, BatchWatch<'g>, Vec<f64>)>
where
    F: BatchField + ?Sized,
    G: BatchEventFunction,
{
    let (tab, ts) = prepare(y0, spans, opts, ev_opts)?;
    let ends: Vec<f64> = ts.iter().map(|r| r[1]).collect();
    let mut watch = BatchWatch::new(g, ev_opts, ts.len());
    watch.terminal = terminal;
    let sol = run(f, y0, ts, opts, tab, Some(&mut watch))?;
    Ok((sol, watch, ends))
}

/// The checks of an event solve; its method and one `[t0, t_max]` row per sample.
fn prepare(
    y0: &Tensor,
    spans: &[[f64; 2]],
    opts: &SolveOptions,
    ev_opts: &EventOptions,
) -> Result<(&'static ButcherTableau, Vec<Vec<f64>>)> {
    opts.validate()?;
    check_state(y0, opts)?;
    let tab = check_method(opts)?;
    let b = batch_size(y0)?;
    ev_opts.validate()?;
    let ts = match spans.len() {
        1 => vec![spans[0].to_vec(); b],
        n if n == b => spans.iter().map(|s| s.to_vec()).collect(),
        n => {
            return Err(SolverError::InvalidTimes(format!(
                "{n} spans for {b} samples (one per sample, or one shared)"
            ))
            .into())
        }
    };
    Ok((tab, ts))
}

/// The result of [`odeint_independent_events`].
#[derive(Clone, Debug)]
pub struct IndependentEventsSolution {
    /// Each sample's crossings from its `t0` to its `t_max`, in time order; each `time` (0-d)
    /// and `y` (the sample's state, `[1, …]`) carries its gradient as
    /// [`IndependentEventSolution`]'s do.
    pub events: Vec<Vec<RecordedEvent>>,
    /// The states at each sample's `t_max`, `[B, …]`.
    pub y: Tensor,
    /// Each sample's steps: those [`crate::odeint_independent`] takes on it to `t_max`.
    pub samples: Vec<SampleStats>,
    /// Steps of the batch.
    pub batch_steps: usize,
    /// Evaluations of the field, the gradients' included (one a round of events).
    pub nfe: usize,
    /// Reads back to the host (see [`LocatedIndependentEvent::host_reads`]), and one a round
    /// of events for the gradients' rates.
    pub host_reads: usize,
}

/// Solves a batch of independent problems (the rows of `y0`) over their own spans with their
/// own steps, as [`crate::odeint_independent`], and records every time a sample's row of
/// `g(t, y)` crosses zero on the way, without stopping: [`crate::odeint_events`] for each
/// sample, in one batched solve.
///
/// Each sample's crossings are located as [`odeint_independent_event`] locates its first
/// (its search of the step riding on the batch's later steps, the sample resuming its steps
/// after), with [`EventOptions`] choosing the directions that count; crossings of several
/// conditions in one step are each located and recorded in time order. Each sample takes the
/// steps `odeint_independent` takes on it: watching adds reads, not steps. A condition exactly
/// zero at a step's end counts as crossing there.
///
/// Gradients: each event's `time` and `y` by backprop through the solver and the implicit
/// function theorem ([`independent_event_gradients`], one call per round: the first events
/// of every sample, then the second, …), and the final `y` by backprop.
///
/// # Shapes
/// `y0`: `[B, …]`; `g(t, y)`: `[B]` or `[B, …]`; result `y` `[B, …]`, each event's `time`
/// 0-d and `y` `[1, …]`.
///
/// # Errors
/// As [`odeint_independent_event`].
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint_independent_events, EventOptions, SolveOptions};
/// # fn main() -> candle_core::Result<()> {
/// // Oscillators y = (cos ωt, −sin ωt) with ω = 1 and 3: cos ωt crosses zero at
/// // (k + 1/2)π/ω, 3 times before t = 10 for ω = 1 and 9 times for ω = 3.
/// let dev = Device::Cpu;
/// let w = Tensor::new(&[[1.0f64], [3.0]], &dev)?;
/// let field = |_t: &Tensor, y: &Tensor| {
///     let (a, b) = (y.narrow(1, 0, 1)?, y.narrow(1, 1, 1)?);
///     Tensor::cat(&[b.broadcast_mul(&w)?, a.broadcast_mul(&w)?.neg()?], 1)
/// };
/// let g = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1);
/// let y0 = Tensor::new(&[[1.0f64, 0.0], [1.0, 0.0]], &dev)?;
/// let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
/// let sol = odeint_independent_events(&field, &y0, &[[0.0, 10.0]], &g, &opts, &EventOptions::default())?;
/// assert_eq!((sol.events[0].len(), sol.events[1].len()), (3, 10));
/// for (k, e) in sol.events[1].iter().enumerate() {
///     let want = (k as f64 + 0.5) * std::f64::consts::PI / 3.0;
///     assert!((e.t - want).abs() < 1e-8);
/// }
/// # Ok(()) }
/// ```
pub fn odeint_independent_events<F, G>(
    f: &F,
    y0: &Tensor,
    spans: &[[f64; 2]],
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
) -> Result<IndependentEventsSolution>
where
    F: BatchField + ?Sized,
    G: BatchEventFunction,
{
    let (sol, mut watch, ends) = watched(f, y0, spans, g, opts, ev_opts, false)?;
    let b = ends.len();
    let y = sol.ys.get(1)?;
    let all = std::mem::take(&mut watch.all);
    let (mut nfe, mut reads) = (sol.nfe, sol.host_reads);
    let mut events: Vec<Vec<RecordedEvent>> = vec![Vec::new(); b];
    let rounds = all.iter().map(Vec::len).max().unwrap_or(0);
    for r in 0..rounds {
        // The r-th event of every sample that has one; the others stand in with their end.
        let t: Vec<f64> = (0..b)
            .map(|i| all[i].get(r).map_or(ends[i], |e| e.0))
            .collect();
        let which: Vec<Option<usize>> = (0..b).map(|i| all[i].get(r).map(|e| e.1)).collect();
        let rows = (0..b)
            .map(|i| match all[i].get(r) {
                Some(e) => Ok(e.2.clone()),
                None => y.narrow(0, i, 1),
            })
            .collect::<Result<Vec<_>>>()?;
        let (time, ye, n, rd) = reroute(f, g, &t, &which, &Tensor::cat(&rows, 0)?)?;
        (nfe, reads) = (nfe + n, reads + rd);
        for (i, e) in which.iter().enumerate() {
            if let Some(e) = e {
                events[i].push(RecordedEvent {
                    t: t[i],
                    time: time.get(i)?,
                    y: ye.narrow(0, i, 1)?,
                    event: *e,
                });
            }
        }
    }
    Ok(IndependentEventsSolution {
        events,
        y,
        samples: sol.samples,
        batch_steps: sol.batch_steps,
        nfe,
        host_reads: reads,
    })
}

/// Makes located events differentiable, sample by sample: returns `(time, y)` with the values
/// `t` and `y` and the gradients of the implicit function theorem ([`crate::event`]'s module
/// docs) for the samples with an event (`event[b]`, the condition that crossed); the others
/// keep `y`'s gradient and a constant time. `y` is the batch's state at `t` with the times
/// held fixed (from backprop through the solver or from the adjoint).
///
/// Each sample's rate `D_b = ∂g_b/∂t + ∂g_b/∂y_b · f_b(t_b, y_b)`: the second term by one
/// Candle backward pass over the batch, the first by a central difference in `t`; one
/// evaluation of `f` and one host read. Nothing is computed when no sample has an event or
/// nothing needs a gradient.
///
/// # Shapes
/// `t`, `event`: `B` each; `y`: `[B, …]`; `time`: `[B]`, of `y`'s dtype and device.
///
/// # Errors
/// [`SolverError::EventNotTransversal`] for a sample whose `D` is zero or not finite (named in
/// the context); `t` or `event` of the wrong length, or a condition out of range; errors of
/// `f` and `g`.
pub fn independent_event_gradients<F, G>(
    f: &F,
    g: &G,
    t: &[f64],
    event: &[Option<usize>],
    y: &Tensor,
) -> Result<(Tensor, Tensor)>
where
    F: BatchField + ?Sized,
    G: BatchEventFunction,
{
    reroute(f, g, t, event, y).map(|(time, y, _, _)| (time, y))
}

/// `out`'s condition `event[b]` of each sample (the first where there is none): `[B]`.
fn pick(out: &Tensor, event: &[Option<usize>]) -> Result<Tensor> {
    let b = event.len();
    let rows = out.reshape((b, ()))?;
    let k = rows.dim(1)?;
    if let Some((i, e)) = event
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.filter(|&e| e >= k).map(|e| (i, e)))
    {
        return Err(SolverError::InvalidOptions(format!(
            "event condition {e} of sample {i} out of range: the event function has {k} a sample"
        ))
        .into());
    }
    let idx: Vec<u32> = event.iter().map(|e| e.unwrap_or(0) as u32).collect();
    let idx = Tensor::from_vec(idx, (b, 1), out.device())?;
    rows.gather(&idx, 1)?.squeeze(1)
}

/// [`independent_event_gradients`], also returning its evaluations of `f` and host reads.
fn reroute<F, G>(
    f: &F,
    g: &G,
    t: &[f64],
    event: &[Option<usize>],
    y: &Tensor,
) -> Result<(Tensor, Tensor, usize, usize)>
where
    F: BatchField + ?Sized,
    G: BatchEventFunction,
{
    let b = batch_size(y)?;
    if t.len() != b || event.len() != b {
        return Err(SolverError::InvalidOptions(format!(
            "{} event times and {} event indices for a batch of {b}",
            t.len(),
            event.len()
        ))
        .into());
    }
    let dev = y.device();
    let times = |v: &[f64]| Tensor::from_slice(v, b, dev)?.to_dtype(y.dtype());
    let constant = times(t)?;
    if event.iter().all(Option::is_none) {
        return Ok((constant, y.clone(), 0, 0));
    }
    let c = pick(&g.eval(&constant, y)?, event)?;
    if !(y.track_op() || c.track_op()) {
        return Ok((constant, y.clone(), 0, 0));
    }
    let ev = Evaluator::new(f, y);
    let yd = y.detach();
    let fy = ev.eval(t, &yd)?.detach();
    // ∂g_b/∂y_b · f_b for every sample from one backward pass over the batch (each sample's
    // condition depends on its own row only); a fresh leaf, the returned store dropped.
    let leaf = Var::from_tensor(&yd)?;
    let cy = pick(&g.eval(&constant, leaf.as_tensor())?, event)?;
    let along_f = match cy.sum_all()?.backward()?.get(leaf.as_tensor()) {
        Some(dy) => (dy.to_dtype(DType::F64)? * fy.to_dtype(DType::F64)?)?
            .reshape((b, ()))?
            .sum(1)?,
        None => Tensor::zeros(b, DType::F64, dev)?,
    };
    // ∂g/∂t by central differences, a step for each sample.
    let delta: Vec<f64> = t
        .iter()
        .map(|t| time_difference_step(*t, y.dtype()))
        .collect();
    let shifted = |sign: f64| -> Result<Tensor> {
        let ts: Vec<f64> = t.iter().zip(&delta).map(|(t, d)| t + sign * d).collect();
        pick(&g.eval(&times(&ts)?, &yd)?, event)?
            .detach()
            .to_dtype(DType::F64)
    };
    let parts = ev.read(&Tensor::cat(&[along_f, shifted(1.0)?, shifted(-1.0)?], 0)?)?;
    let mut slope = vec![0.0; b];
    for i in 0..b {
        if event[i].is_none() {
            continue;
        }
        let rate = parts[i] + (parts[b + i] - parts[2 * b + i]) / (2.0 * delta[i]);
        if !(rate.is_finite() && rate != 0.0) {
            return Err(in_sample(
                SolverError::EventNotTransversal { t: t[i], rate },
                i,
            ));
        }
        slope[i] = -1.0 / rate;
    }
    // Values t and y exactly (c − c.detach() is 0); gradients −∂c/∂θ / D and f · dt/dθ.
    let time = (&c - c.detach())?
        .to_dtype(y.dtype())?
        .mul(&times(&slope)?)?
        .add(&constant)?;
    let moved = fy.broadcast_mul(&ev.column_of(&(&time - time.detach())?)?)?;
    let y_event = (y + moved)?;
    Ok((time, y_event, ev.nfe.get(), ev.reads.get()))
}

/// Watches the sign of each sample's conditions across its accepted steps and searches
/// crossings; used by [`crate::independent`]'s solve loop.
///
/// A sample whose conditions changed sign in a step stops stepping and searches that step's
/// dense output (kept, [`StoredStep`]) by the Illinois method, one trial a batch iteration:
/// its trial's `g` is evaluated with the stepping samples' `g(t1, y1)` and read with their
/// error ratios, so the search adds no reads while other samples still step.
pub(crate) struct BatchWatch<'a> {
    g: &'a dyn BatchEventFunction,
    opts: EventOptions,
    b: usize,
    /// Conditions per sample, once known.
    k: usize,
    /// `g` at the start of each sample's current step, `[B·K]`.
    last: Vec<f64>,
    /// The sign (±1) of each condition's last non-zero value; 0 while it has been zero.
    sign: Vec<f64>,
    /// Each sample's event time and condition, once found.
    found: Vec<Option<(f64, usize)>>,
    /// Each searching sample's search.
    searches: Vec<Option<Search>>,
    /// Samples whose search has ended, with their state at the event (`[1, …]`), to be filed.
    done: Vec<(usize, Tensor)>,
    /// Whether a sample stops at its first crossing; otherwise it records every crossing in
    /// `all` (time, condition, state `[1, …]`) and goes on.
    pub(crate) terminal: bool,
    all: Vec<Vec<(f64, usize, Tensor)>>,
}

/// A sample's search of the step in which some of its conditions changed sign.
struct Search {
    /// The sample, and the direction of its step.
    i: usize,
    dir: f64,
    step: Rc<StoredStep>,
    /// The conditions still to locate, in order, and the one being located.
    queue: VecDeque<usize>,
    job: Option<Job>,
    /// `g` at the step's start and end (this sample's row).
    g_start: Vec<f64>,
    g_end: Vec<f64>,
    /// The sign of each condition before the step.
    sign: Vec<f64>,
    /// The crossings located so far: time, condition, and a batch state whose row `i` is
    /// the sample's state there.
    located: Vec<(f64, usize, Tensor)>,
}

/// One condition's crossing being located by the Illinois method (within a sample's step).
struct Job {
    e: usize,
    bracket: Illinois,
    /// A batch state whose row `i` is the sample's state at the bracket's `a` (the step's
    /// start, or the trial tensor of the iteration that moved `a`: shared by the searches of
    /// that iteration, and held only while `a` stays there).
    ya: Tensor,
}

/// Row `i` of `t` as a tensor of its own (`[1, …]`), so it does not hold the batch's storage.
fn row(t: &Tensor, i: usize) -> Result<Tensor> {
    t.index_select(&Tensor::new(&[i as u32], t.device())?, 0)
}

impl Search {
    /// Records a located crossing.
    fn record(&mut self, t: f64, e: usize, y: Tensor) {
        self.located.push((t, e, y));
    }

    /// The crossings in time order (those at one time by condition).
    fn in_order(mut self) -> Vec<(f64, usize, Tensor)> {
        let dir = self.dir;
        self.located
            .sort_by(|a, b| ((a.0 - b.0) * dir).total_cmp(&0.0).then(a.1.cmp(&b.1)));
        self.located
    }

    /// The next trial time of this search, starting the next condition's job when one ends;
    /// `None` when every condition is located.
    fn propose(&mut self, time_tol: f64) -> Result<Option<f64>> {
        let i = self.i;
        loop {
            if self.job.is_none() {
                let Some(e) = self.queue.pop_front() else {
                    return Ok(None);
                };
                let d = self.step.view();
                let gb = self.g_end[e];
                if gb == 0.0 {
                    let y1 = d.step.y1.clone();
                    self.record(d.t1[i], e, y1);
                    continue;
                }
                self.job = Some(Job {
                    e,
                    bracket: Illinois::new(d.t[i], self.g_start[e], d.t1[i], gb),
                    ya: d.y.clone(),
                });
            }
            let job = self.job.as_ref().expect("a job was just set");
            if let Some(t) = job.bracket.trial(time_tol) {
                return Ok(Some(t));
            }
            let job = self.job.take().expect("a job is running");
            self.record(job.bracket.a, job.e, job.ya);
        }
    }

    /// Takes `g`'s value `v` at the trial `(t, trial)` into the running job (`trial` the
    /// batch's trial states, this sample's row at `t`).
    fn update(&mut self, t: f64, v: f64, trial: &Tensor) -> Result<()> {
        let i = self.i;
        let Some(job) = self.job.as_mut() else {
            return Ok(());
        };
        if !v.is_finite() {
            return Err(in_sample(SolverError::NonFinite { t }, i));
        }
        if v == 0.0 {
            let e = job.e;
            self.job = None;
            self.record(t, e, trial.clone());
        } else if job.bracket.take(t, v, self.sign[job.e]) {
            job.ya = trial.clone();
        }
        Ok(())
    }
}

impl<'a> BatchWatch<'a> {
    fn new(g: &'a dyn BatchEventFunction, opts: &EventOptions, b: usize) -> Self {
        Self {
            g,
            opts: *opts,
            b,
            k: 0,
            last: vec![],
            sign: vec![],
            found: vec![None; b],
            searches: (0..b).map(|_| None).collect(),
            done: Vec::new(),
            terminal: true,
            all: vec![Vec::new(); b],
        }
    }

    /// `g(t, y)` flattened to f64 (`[B·K]`), checked, for reading with the step's error
    /// ratios.
    pub(crate) fn values<F: BatchField + ?Sized>(
        &self,
        ev: &Evaluator<'_, F>,
        t: &[f64],
        y: &Tensor,
    ) -> Result<Tensor> {
        let tt = Tensor::from_slice(t, t.len(), &ev.device)?.to_dtype(ev.dtype)?;
        let v = self.g.eval(&tt, y)?;
        check_event_output(&v, &ev.device, "")?;
        let n = v.elem_count();
        let per = n / self.b;
        if v.dims().first() != Some(&self.b) || per == 0 || (self.k != 0 && per != self.k) {
            return Err(SolverError::OutputMismatch(format!(
                "the event function returned shape {:?} for a batch of {}: it must be [B] or \
                 [B, …] with as many conditions for every sample{}",
                v.dims(),
                self.b,
                if self.k != 0 {
                    format!(" ({} a sample before)", self.k)
                } else {
                    String::new()
                }
            ))
            .into());
        }
        v.flatten_all()?.detach().to_dtype(DType::F64)
    }

    /// Reads `g(t0, y0)` (one read) and starts watching.
    pub(crate) fn start<F: BatchField + ?Sized>(
        &mut self,
        ev: &Evaluator<'_, F>,
        t0: &[f64],
        y0: &Tensor,
    ) -> Result<()> {
        let g0 = ev.read(&self.values(ev, t0, y0)?)?;
        self.k = g0.len() / self.b;
        if let Some(p) = g0.iter().position(|v| !v.is_finite()) {
            let i = p / self.k;
            return Err(in_sample(SolverError::NonFinite { t: t0[i] }, i));
        }
        self.sign = g0.iter().map(|v| sign(*v)).collect();
        self.last = g0;
        Ok(())
    }

    /// The conditions of each accepted sample that crossed zero in its step to `t1` (its
    /// `g(t1, y1)` in `g1`), in order; empty for the others.
    pub(crate) fn crossings(
        &self,
        accepted: &[bool],
        t1: &[f64],
        g1: &[f64],
    ) -> Result<Vec<Vec<usize>>> {
        let k = self.k;
        let mut out = vec![Vec::new(); self.b];
        for (i, hits) in out.iter_mut().enumerate() {
            if !accepted[i] {
                continue;
            }
            for e in 0..k {
                let (s0, v1) = (self.sign[i * k + e], g1[i * k + e]);
                if !v1.is_finite() {
                    return Err(in_sample(SolverError::NonFinite { t: t1[i] }, i));
                }
                if self.opts.crossing.counts(s0, v1) {
                    hits.push(e);
                }
            }
        }
        Ok(out)
    }

    /// After an accepted step: `g(t1, y1)` becomes each accepted sample's `last`.
    pub(crate) fn advance(&mut self, accepted: &[bool], g1: &[f64]) {
        let k = self.k;
        for (i, _) in accepted.iter().enumerate().filter(|(_, &a)| a) {
            let row = i * k..(i + 1) * k;
            for ((last, sgn), &v) in self.last[row.clone()]
                .iter_mut()
                .zip(&mut self.sign[row.clone()])
                .zip(&g1[row])
            {
                *last = v;
                if v != 0.0 {
                    *sgn = sign(v);
                }
            }
        }
    }

    /// Starts sample `i`'s search of the step `kept`, in which its conditions `crossed`
    /// changed sign (`g1`: every sample's `g` at the step's end). Before [`Self::advance`].
    pub(crate) fn begin(&mut self, i: usize, crossed: &[usize], kept: &Rc<StoredStep>, g1: &[f64]) {
        let k = self.k;
        let row = i * k..(i + 1) * k;
        let d = kept.view();
        self.searches[i] = Some(Search {
            i,
            dir: if d.t1[i] > d.t[i] { 1.0 } else { -1.0 },
            step: Rc::clone(kept),
            queue: crossed.iter().copied().collect(),
            job: None,
            g_start: self.last[row.clone()].to_vec(),
            g_end: g1[row.clone()].to_vec(),
            sign: self.sign[row].to_vec(),
            located: Vec::new(),
        });
    }

    /// Each searching sample's next trial time (`None` for the others). A search whose
    /// conditions are all located ends: its sample's event is recorded, to be filed
    /// ([`Self::take_found`]).
    pub(crate) fn propose(&mut self) -> Result<Vec<Option<f64>>> {
        let mut at = vec![None; self.b];
        for (i, slot) in at.iter_mut().enumerate() {
            let Some(search) = self.searches[i].as_mut() else {
                continue;
            };
            *slot = search.propose(self.opts.time_tol)?;
            if slot.is_none() {
                let search = self.searches[i].take().expect("a search");
                let (g_end, old) = (search.g_end.clone(), search.sign.clone());
                let located = search.in_order();
                if self.terminal {
                    let (t, e, y) = located.into_iter().next().expect("a crossing");
                    self.found[i] = Some((t, e));
                    self.done.push((i, row(&y, i)?));
                } else {
                    for (t, e, y) in located {
                        // Recorded at the step's end, where it is exactly zero: its next
                        // crossing is back.
                        if g_end[e] == 0.0 {
                            self.sign[i * self.k + e] = -old[e];
                        }
                        self.all[i].push((t, e, row(&y, i)?));
                    }
                }
            }
        }
        Ok(at)
    }

    /// The samples whose search has ended, with their states at their events (`[1, …]`).
    pub(crate) fn take_found(&mut self) -> Vec<(usize, Tensor)> {
        std::mem::take(&mut self.done)
    }

    /// The searching samples' states at their trial times `at`, `[B, …]` (the other rows
    /// unspecified): one dense output per kept step that a search is on.
    pub(crate) fn trial_states<F: BatchField + ?Sized>(
        &self,
        ev: &Evaluator<'_, F>,
        at: &[Option<f64>],
    ) -> Result<Option<Tensor>> {
        let mut merged: Option<Tensor> = None;
        let mut seen: Vec<*const StoredStep> = Vec::new();
        for search in self.searches.iter().flatten() {
            let p = Rc::as_ptr(&search.step);
            if seen.contains(&p) {
                continue;
            }
            seen.push(p);
            let on: Vec<bool> = (0..self.b)
                .map(|i| {
                    at[i].is_some()
                        && self.searches[i]
                            .as_ref()
                            .is_some_and(|s| Rc::ptr_eq(&s.step, &search.step))
                })
                .collect();
            let mine: Vec<Option<f64>> = (0..self.b).map(|i| at[i].filter(|_| on[i])).collect();
            let dense = ev.dense(&search.step.view(), &mine)?;
            merged = Some(match merged {
                None => dense,
                Some(m) => ev.mask(&on)?.where_cond(&dense, &m)?,
            });
        }
        Ok(merged)
    }

    /// Takes `g` at the trial states (`values`, `[B·K]`; the searching samples' rows) into
    /// their searches.
    pub(crate) fn update(
        &mut self,
        at: &[Option<f64>],
        values: &[f64],
        trial: &Tensor,
    ) -> Result<()> {
        let k = self.k;
        for (i, t) in at.iter().enumerate() {
            let (Some(t), Some(search)) = (t, self.searches[i].as_mut()) else {
                continue;
            };
            let e = search.job.as_ref().map_or(0, |j| j.e);
            search.update(*t, values[i * k + e], trial)?;
        }
        Ok(())
    }
}
