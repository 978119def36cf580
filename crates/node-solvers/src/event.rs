//! `odeint_event`: integrate `dy/dt = f(t, y)` until an event function `g(t, y)` crosses zero.
//!
//! After every accepted step the solver compares the sign of each element of `g(t1, y1)` with
//! its sign before the step. When one has changed, the crossing is located on the step's dense
//! output by the Illinois method (regula falsi that halves the stale end's value, superlinear
//! and always bracketed), and the solve stops there. `g(t1, y1)` is read back together with the
//! step's error ratio, so an adaptive step still waits on the device once; locating a crossing
//! reads once per iteration.
//!
//! The event time is differentiable by the implicit function theorem. With `y*(θ)` the state at
//! a fixed time `t*` and `g(t*, y*) = 0`,
//! `dt*/dθ = −(∂g/∂y · dy*/dθ + ∂g/∂θ) / D`, where `D = ∂g/∂t + ∂g/∂y · f(t*, y*)` is the rate
//! of change of `g` along the solution, and the state at the event moves with it:
//! `dy(t*)/dθ = dy*/dθ + f(t*, y*) · dt*/dθ`. [`event_gradients`] builds tensors with exactly
//! these gradients (their values unchanged) from any differentiable `y*`, whether it comes
//! from backprop through the solver or from the adjoint.

use crate::error::SolverError;
use crate::field::VectorField;
use crate::options::SolveOptions;
use crate::rk::Evaluator;
use crate::solve::{check_state, check_times, run_steps, SolverStats};
use crate::trace::StepTrace;
use candle_core::{DType, Result, Tensor, Var};

/// An event function `g(t, y)`: the solve stops where an element of it crosses zero.
///
/// Any closure `Fn(f64, &Tensor) -> Result<Tensor>` is one. It returns a tensor of any shape
/// with at least one element (each element is a separate condition: the solve stops at the
/// first crossing of any), of a float dtype, on the state's device; the number of elements must
/// not change during a solve. To be differentiated, it must be built from Candle ops on `y`
/// (and its own parameters, which then receive gradients too).
pub trait EventFunction {
    /// Evaluates `g(t, y)`.
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor>;
}

impl<G> EventFunction for G
where
    G: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self(t, y)
    }
}

/// Which sign changes of `g` count as events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Crossing {
    /// Any sign change.
    #[default]
    Either,
    /// From negative to positive (or zero) only.
    Rising,
    /// From positive to negative (or zero) only.
    Falling,
}

/// Options of the event search, beside the solve's own [`SolveOptions`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EventOptions {
    /// Which sign changes stop the solve. Default: [`Crossing::Either`].
    pub crossing: Crossing,
    /// How closely the crossing time is located. Default `0.0`: to the precision of `t`
    /// (a few ulps).
    pub time_tol: f64,
}

impl EventOptions {
    /// Checks `time_tol`.
    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.time_tol.is_finite() && self.time_tol >= 0.0) {
            return Err(SolverError::InvalidOptions(format!(
                "event time_tol must be finite and >= 0, got {}",
                self.time_tol
            ))
            .into());
        }
        Ok(())
    }

    /// Sets [`EventOptions::crossing`].
    pub fn crossing(mut self, c: Crossing) -> Self {
        self.crossing = c;
        self
    }
    /// Sets [`EventOptions::time_tol`].
    pub fn time_tol(mut self, tol: f64) -> Self {
        self.time_tol = tol;
        self
    }
}

/// The result of [`odeint_event`].
#[derive(Clone, Debug)]
pub struct EventSolution {
    /// The event time, or `t_max` if no event happened before it.
    pub t: f64,
    /// `t` as a 0-d tensor of the state's dtype and device that carries the event time's
    /// gradient (to `y0`, the field's parameters and the event function's parameters); a
    /// constant when no event happened.
    pub time: Tensor,
    /// The state at `t`, differentiable, its gradient including the event time's dependence.
    pub y: Tensor,
    /// Which element of `g` (in flattened order) crossed zero; `None` if the solve reached
    /// `t_max` first.
    pub event: Option<usize>,
    /// Counts of the solve. `host_reads` includes one read of `g(t0, y0)`, one per
    /// fixed step, and one per iteration that locates the crossing (an adaptive step reads
    /// `g` with its error ratio), plus one for the gradient's rate `D` when it is needed.
    pub stats: SolverStats,
}

/// A start time given as a tensor, for a solve that takes a host `t0`: returns `t0`'s value
/// and a start state equal to `y0` whose gradient carries `t0`'s. The trajectory from
/// `(t0 + δ, y0)` is, to first order, the one from `(t0, y0 − δ·f(t0, y0))`, so
/// `y0 − f(t0, y0)·(t0 − t0.detach())` has `y0`'s value and the gradient `dL/dt0 =
/// −(dL/dy0)·f(t0, y0)`: every output of a solve from it (states at fixed times, event times
/// and states) gets its gradient to `t0`, in every gradient mode. For chains of events (a
/// bouncing ball: each flight starts where the last one's event time, a tensor, ended) and
/// for a learned start time.
///
/// # Shapes
/// `t0`: one element (any shape); `y0` any shape → `y0`'s shape.
///
/// # Errors
/// A `t0` of more than one element, or not finite; the field's.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use node_solvers::{differentiable_start, odeint, SolveOptions};
///
/// // y' = −y from y0 = 1 at t0 to T = 1: y(1) = e^{−(1 − t0)}, dy(1)/dt0 = y(1).
/// let f = |_t: f64, y: &Tensor| y.neg();
/// let t0 = Var::new(0.25f64, &Device::Cpu)?;
/// let y0 = Tensor::new(&[1.0f64], &Device::Cpu)?;
/// let (t, y0) = differentiable_start(&f, t0.as_tensor(), &y0)?;
/// let y1 = odeint(&f, &y0, &[t, 1.0], &SolveOptions::default())?.last()?;
/// let grad = y1.sum_all()?.backward()?.get(&t0).unwrap().to_scalar::<f64>()?;
/// assert!((grad - (-0.75f64).exp()).abs() < 1e-7);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn differentiable_start<F: VectorField + ?Sized>(
    f: &F,
    t0: &Tensor,
    y0: &Tensor,
) -> Result<(f64, Tensor)> {
    if t0.elem_count() != 1 {
        return Err(SolverError::InvalidTimes(format!(
            "a start time must be one number, got shape {:?}",
            t0.dims()
        ))
        .into());
    }
    // The evaluator checks the field's output against the state, and counts the one read.
    let ev = Evaluator::new(f);
    let t = ev.read(t0)?[0];
    if !t.is_finite() {
        return Err(SolverError::InvalidTimes(format!("start time {t} is not finite")).into());
    }
    // f is detached: it is multiplied by a tensor whose value is zero, so its own gradient
    // would be multiplied by zero too.
    let f0 = ev.eval(t, y0)?.detach();
    let shift = (t0 - t0.detach())?.reshape(())?.to_dtype(y0.dtype())?;
    let y = (y0 - f0.broadcast_mul(&shift)?)?;
    Ok((t, y))
}

/// Solves `dy/dt = f(t, y)`, `y(t0) = y0` from `t0` towards `t_max` until an element of
/// `g(t, y)` crosses zero, and returns the time and state of the crossing (as torchdiffeq's
/// `odeint_event`, with a bound on time and typed errors).
///
/// Each element of `g` must keep its sign through the solve until its event: elements that
/// are exactly zero at `t0` start watching once they become non-zero, so a solve restarted
/// at an event does not stop again at once. The returned time is the last one located on the
/// side the crossing starts from (where `g` still has its sign from before, or is zero), within
/// `ev_opts.time_tol` of the crossing: the state is not past the surface, which is what a
/// restart after a jump (a bounce) needs. Two crossings of one element within one step cancel
/// and are not seen; `max_step` bounds what can be missed.
///
/// Gradients flow into [`EventSolution::time`] and [`EventSolution::y`] by backprop through
/// the solver, and through the event time by the implicit function theorem (see the module
/// docs). For constant-memory gradients, `node_adjoint::odeint_event_adjoint` solves the same
/// problem with the adjoint.
///
/// # Shapes
/// - `y0`: any shape `S`; `f(t, y)`: shape `S`; `g(t, y)`: any shape with at least one
///   element.
/// - result: `time` 0-d, `y` shape `S`.
///
/// # Errors
/// Those of [`crate::odeint`] (invalid options or times, `t0 == t_max`, a non-finite state,
/// step-size underflow, too many steps); [`SolverError::OutputMismatch`] for an event function
/// that returns no elements, a changing number of them, another device or an integer dtype;
/// [`SolverError::NonFinite`] if `g` is NaN or infinite on an accepted step; and
/// [`SolverError::EventNotTransversal`] when gradients are needed but `g` does not change
/// along the solution at the event (`D = 0`).
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint_event, EventOptions, SolveOptions};
/// # fn main() -> candle_core::Result<()> {
/// // A ball dropped from 2 m: y = [height, velocity], dy/dt = [v, −9.81]; hits the ground
/// // at t = √(2·2/9.81).
/// let dev = Device::Cpu;
/// let field = |_t: f64, y: &Tensor| {
///     let v = y.narrow(0, 1, 1)?;
///     Tensor::cat(&[v.clone(), (v.zeros_like()? - 9.81)?], 0)
/// };
/// let height = |_t: f64, y: &Tensor| y.narrow(0, 0, 1);
/// let y0 = Tensor::new(&[2.0f64, 0.0], &dev)?;
/// let opts = SolveOptions::default();
/// let sol = odeint_event(&field, &y0, 0.0, 10.0, &height, &opts, &EventOptions::default())?;
/// assert_eq!(sol.event, Some(0));
/// assert!((sol.t - (4.0f64 / 9.81).sqrt()).abs() < 1e-10);
/// # Ok(()) }
/// ```
pub fn odeint_event<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
) -> Result<EventSolution>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    let found = locate_event(f, y0, t0, t_max, g, opts, ev_opts)?;
    let mut stats = found.stats;
    let (time, y) = match found.event {
        Some(which) => {
            let (time, y, more) = reroute(f, g, found.t, which, &found.y)?;
            stats += more;
            (time, y)
        }
        None => (constant_time(found.t, &found.y)?, found.y),
    };
    Ok(EventSolution {
        t: found.t,
        time,
        y,
        event: found.event,
        stats,
    })
}

/// Where an event solve stopped, before the event time is made differentiable.
#[derive(Clone, Debug)]
pub struct LocatedEvent {
    /// The event time, or `t_max`.
    pub t: f64,
    /// The state at `t`, as the solve computed it (differentiable by backprop through the
    /// solver, with `t` held fixed).
    pub y: Tensor,
    /// The element of `g` that crossed zero; `None` at `t_max`.
    pub event: Option<usize>,
    /// Counts of the solve.
    pub stats: SolverStats,
}

/// [`odeint_event`] without the event time's gradient: the located time and state, `y`
/// differentiable only with the time held fixed. For callers that differentiate by other
/// means (the adjoint) and then call [`event_gradients`].
///
/// # Errors
/// As [`odeint_event`], except [`SolverError::EventNotTransversal`].
pub fn locate_event<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
) -> Result<LocatedEvent>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    locate(f, y0, t0, t_max, g, opts, ev_opts, None)
}

/// [`locate_event`] that also records its steps ([`crate::odeint_traced`]): the trace runs
/// from `t0` to the end of the step in which the event was found (past the event time, which
/// that step's dense output gave), or to `t_max`. Replaying it with the event time as an
/// output time gives the located state again, as checkpointed backprop
/// (`node_adjoint::odeint_event_checkpointed`) does.
///
/// # Errors
/// As [`locate_event`], and [`SolverError::InvalidOptions`] when `max_states` is 0.
#[allow(clippy::too_many_arguments)]
pub fn locate_event_traced<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    max_states: usize,
) -> Result<(LocatedEvent, StepTrace)>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    StepTrace::around(t0, y0, max_states, |tr| {
        locate(f, y0, t0, t_max, g, opts, ev_opts, Some(tr))
    })
}

#[allow(clippy::too_many_arguments)]
fn locate<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    trace: Option<&mut dyn crate::trace::Recorder>,
) -> Result<LocatedEvent>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    let w = watched_solve(f, y0, t0, t_max, g, opts, ev_opts, true, trace)?;
    Ok(match w.found {
        Some((t, y, which)) => LocatedEvent {
            t,
            y,
            event: Some(which),
            stats: w.stats,
        },
        None => LocatedEvent {
            t: t_max,
            y: w.y_end,
            event: None,
            stats: w.stats,
        },
    })
}

/// What a solve watched by an [`EventWatch`] found.
struct Watched {
    /// The first crossing (terminal watch).
    found: Option<(f64, Tensor, usize)>,
    /// Every crossing, in time order (non-terminal watch).
    all: Vec<(f64, Tensor, usize)>,
    /// The last state the solve output: at `t_max` unless it stopped at an event.
    y_end: Tensor,
    stats: SolverStats,
}

#[allow(clippy::too_many_arguments)]
fn watched_solve<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    terminal: bool,
    trace: Option<&mut dyn crate::trace::Recorder>,
) -> Result<Watched>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    opts.validate()?;
    let ts = [t0, t_max];
    let dir = check_times(&ts)?;
    check_state(y0, opts)?;
    ev_opts.validate()?;
    let ev = Evaluator::new(f);
    let mut watch = EventWatch::new(g, ev_opts, y0, terminal);
    let g0 = ev.read(&watch.values(t0, y0)?)?;
    watch.start(t0, &g0)?;
    let mut out = vec![y0.clone()];
    let (mut stats, _) = run_steps(&ev, y0, &ts, dir, opts, &mut out, Some(&mut watch), trace)?;
    ev.count_into(&mut stats);
    Ok(Watched {
        found: watch.found,
        all: watch.all,
        y_end: out.pop().expect("the solve outputs y0 at least"),
        stats,
    })
}

/// One crossing recorded by [`odeint_events`].
#[derive(Clone, Debug)]
pub struct RecordedEvent {
    /// The crossing time (the last time located on the side the crossing starts from).
    pub t: f64,
    /// `t` as a 0-d tensor carrying the crossing time's gradient, as
    /// [`EventSolution::time`].
    pub time: Tensor,
    /// The state at `t`, differentiable as [`EventSolution::y`].
    pub y: Tensor,
    /// Which element of `g` (in flattened order) crossed zero.
    pub event: usize,
}

/// The result of [`odeint_events`].
#[derive(Clone, Debug)]
pub struct EventsSolution {
    /// Every crossing from `t0` to `t_max`, in time order.
    pub events: Vec<RecordedEvent>,
    /// The state at `t_max`.
    pub y: Tensor,
    /// Counts of the solve, the locating iterations and the gradients' rates included.
    pub stats: SolverStats,
}

/// Solves `dy/dt = f(t, y)`, `y(t0) = y0` from `t0` to `t_max` and records every time an
/// element of `g(t, y)` crosses zero on the way, without stopping (SciPy's `solve_ivp` events
/// with `terminal=False`; torchdiffeq's and diffrax's events are terminal only).
///
/// Each crossing is located as [`odeint_event`] locates its one, on the dense output of the
/// step that holds it, with [`EventOptions`] choosing the directions that count and the time
/// tolerance; crossings of several elements in one step are each located and recorded in time
/// order. The solve takes the steps [`crate::odeint`] takes to `t_max`: watching adds reads,
/// not steps. Two crossings of one element within one step cancel and are not seen;
/// `max_step` bounds what can be missed. An element exactly zero at a step's end counts as
/// crossing there.
///
/// Gradients: each event's `time` and `y` get the event time's gradient by the implicit
/// function theorem ([`event_gradients`]), from backprop through the solver.
///
/// # Shapes
/// As [`odeint_event`]; each event's `time` is 0-d and `y` has the state's shape.
///
/// # Errors
/// As [`odeint_event`].
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint_events, EventOptions, SolveOptions};
/// # fn main() -> candle_core::Result<()> {
/// // y = (cos t, −sin t): cos t crosses zero at π/2, 3π/2 and 5π/2 before t = 10.
/// let field = |_t: f64, y: &Tensor| {
///     Tensor::cat(&[y.narrow(0, 1, 1)?, y.narrow(0, 0, 1)?.neg()?], 0)
/// };
/// let g = |_t: f64, y: &Tensor| y.narrow(0, 0, 1);
/// let y0 = Tensor::new(&[1.0f64, 0.0], &Device::Cpu)?;
/// let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
/// let sol = odeint_events(&field, &y0, 0.0, 10.0, &g, &opts, &EventOptions::default())?;
/// let times: Vec<f64> = sol.events.iter().map(|e| e.t).collect();
/// assert_eq!(times.len(), 3);
/// for (k, t) in times.iter().enumerate() {
///     let want = (k as f64 + 0.5) * std::f64::consts::PI;
///     assert!((t - want).abs() < 1e-8);
/// }
/// # Ok(()) }
/// ```
pub fn odeint_events<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
) -> Result<EventsSolution>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    let found = locate_events(f, y0, t0, t_max, g, opts, ev_opts)?;
    let mut stats = found.stats;
    let mut events = Vec::with_capacity(found.events.len());
    for (t, y, which) in found.events {
        let (time, y, more) = reroute(f, g, t, which, &y)?;
        stats += more;
        events.push(RecordedEvent {
            t,
            time,
            y,
            event: which,
        });
    }
    Ok(EventsSolution {
        events,
        y: found.y,
        stats,
    })
}

/// Where the crossings of an [`odeint_events`] solve are, before their times are made
/// differentiable.
#[derive(Clone, Debug)]
pub struct LocatedEvents {
    /// Each crossing's time, state (differentiable with the time held fixed) and element, in
    /// time order.
    pub events: Vec<(f64, Tensor, usize)>,
    /// The state at `t_max`.
    pub y: Tensor,
    /// Counts of the solve.
    pub stats: SolverStats,
}

/// [`odeint_events`] without the crossing times' gradients, for callers that differentiate
/// by other means (the adjoint, checkpointing) and then call [`event_gradients`].
///
/// # Errors
/// As [`odeint_events`], except [`SolverError::EventNotTransversal`].
pub fn locate_events<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
) -> Result<LocatedEvents>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    watched_solve(f, y0, t0, t_max, g, opts, ev_opts, false, None).map(LocatedEvents::from)
}

impl From<Watched> for LocatedEvents {
    fn from(w: Watched) -> Self {
        Self {
            events: w.all,
            y: w.y_end,
            stats: w.stats,
        }
    }
}

/// [`locate_events`] that also records its steps, from `t0` to `t_max`
/// ([`crate::odeint_traced`]).
///
/// # Errors
/// As [`locate_events`], and [`SolverError::InvalidOptions`] when `max_states` is 0.
#[allow(clippy::too_many_arguments)]
pub fn locate_events_traced<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    max_states: usize,
) -> Result<(LocatedEvents, StepTrace)>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    let (w, trace) = StepTrace::around(t0, y0, max_states, |tr| {
        watched_solve(f, y0, t0, t_max, g, opts, ev_opts, false, Some(tr))
    })?;
    Ok((w.into(), trace))
}

/// Makes the located event differentiable: returns `(time, y)` with the values `t` and `y`
/// and the gradients of the implicit function theorem (module docs), given `y`, the state at
/// the event with `t` held fixed (from backprop through the solver or from the adjoint).
/// `which` is the element of `g` that crossed zero.
///
/// Computes `D = ∂g/∂t + ∂g/∂y · f(t, y)`: `∂g/∂y` by Candle autograd, `∂g/∂t` by a central
/// difference in `t` (exactly zero when `g` does not depend on time), with one evaluation of
/// `f` and one host read. When neither `y` nor `g`'s output needs a gradient nothing is
/// computed and the outputs are constants.
///
/// # Shapes
/// `y`: the state's shape; `time`: 0-d, of `y`'s dtype and device.
///
/// # Errors
/// [`SolverError::EventNotTransversal`] when `D` is zero or not finite (the event time has no
/// derivative there); `which` out of range; errors of `f` and `g`.
pub fn event_gradients<F, G>(
    f: &F,
    g: &G,
    t: f64,
    which: usize,
    y: &Tensor,
) -> Result<(Tensor, Tensor)>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    reroute(f, g, t, which, y).map(|(time, y, _)| (time, y))
}

/// The step of a central difference in `t` of a function of a `dtype` state: it balances
/// truncation (`δ²`) and rounding (`ε/δ`).
pub(crate) fn time_difference_step(t: f64, dtype: DType) -> f64 {
    let eps = match dtype {
        DType::F64 => f64::EPSILON,
        DType::F32 => f32::EPSILON as f64,
        _ => 2f64.powi(-8),
    };
    eps.cbrt() * t.abs().max(1.0)
}

fn constant_time(t: f64, y: &Tensor) -> Result<Tensor> {
    Tensor::new(t, y.device())?.to_dtype(y.dtype())
}

fn element(g_out: &Tensor, which: usize) -> Result<Tensor> {
    let flat = g_out.flatten_all()?;
    if which >= flat.elem_count() {
        return Err(SolverError::InvalidOptions(format!(
            "event element {which} out of range: the event function has {} elements",
            flat.elem_count()
        ))
        .into());
    }
    flat.get(which)
}

/// [`event_gradients`], also returning its evaluations of `f` and host reads (0 or 1 each).
fn reroute<F, G>(
    f: &F,
    g: &G,
    t: f64,
    which: usize,
    y: &Tensor,
) -> Result<(Tensor, Tensor, SolverStats)>
where
    F: VectorField + ?Sized,
    G: EventFunction,
{
    let c = element(&g.eval(t, y)?, which)?;
    if !(y.track_op() || c.track_op()) {
        return Ok((constant_time(t, y)?, y.clone(), SolverStats::default()));
    }
    let ev = Evaluator::new(f);
    let yd = y.detach();
    let fy = ev.eval(t, &yd)?.detach();
    // ∂g/∂y · f by autograd on a fresh leaf (the returned store is dropped; no Var changes).
    let leaf = Var::from_tensor(&yd)?;
    let cy = element(&g.eval(t, leaf.as_tensor())?, which)?;
    let along_f = match cy.backward()?.get(leaf.as_tensor()) {
        Some(dy) => (dy.to_dtype(DType::F64)? * fy.to_dtype(DType::F64)?)?.sum_all()?,
        None => Tensor::new(0.0f64, y.device())?,
    };
    let delta = time_difference_step(t, y.dtype());
    let up = element(&g.eval(t + delta, &yd)?, which)?.detach();
    let down = element(&g.eval(t - delta, &yd)?, which)?.detach();
    let parts = ev.read(&Tensor::stack(
        &[
            along_f,
            up.to_dtype(DType::F64)?,
            down.to_dtype(DType::F64)?,
        ],
        0,
    )?)?;
    let rate = parts[0] + (parts[1] - parts[2]) / (2.0 * delta);
    if !(rate.is_finite() && rate != 0.0) {
        return Err(SolverError::EventNotTransversal { t, rate }.into());
    }
    // Values t and y exactly (c − c.detach() is 0), gradients −∂c/∂θ / D and f · dt/dθ.
    let time = (&c - c.detach())?
        .affine(-1.0 / rate, t)?
        .to_dtype(y.dtype())?;
    let moved = fy.broadcast_mul(&(&time - time.detach())?)?;
    let y_event = (y + moved)?;
    let stats = SolverStats {
        nfe: ev.nfe(),
        host_reads: ev.host_reads(),
        ..SolverStats::default()
    };
    Ok((time, y_event, stats))
}

/// Watches the sign of `g` across accepted steps and locates crossings; used by the solve
/// loops.
pub(crate) struct EventWatch<'a> {
    g: &'a dyn EventFunction,
    opts: EventOptions,
    device: candle_core::Device,
    len: usize,
    /// `g` at the start of the current step.
    last: Vec<f64>,
    /// The sign (±1) of each element's last non-zero value; 0 while it has been zero.
    sign: Vec<f64>,
    /// Time, state and element of the crossing, once found.
    pub(crate) found: Option<(f64, Tensor, usize)>,
    /// Whether the first crossing stops the solve; otherwise every crossing is recorded in
    /// `all`, in time order, and the solve goes on.
    terminal: bool,
    pub(crate) all: Vec<(f64, Tensor, usize)>,
}

impl<'a> EventWatch<'a> {
    fn new(
        g: &'a dyn EventFunction,
        opts: &EventOptions,
        y0: &Tensor,
        terminal: bool,
    ) -> EventWatch<'a> {
        Self {
            g,
            opts: *opts,
            device: y0.device().clone(),
            len: 0,
            last: vec![],
            sign: vec![],
            found: None,
            terminal,
            all: vec![],
        }
    }

    /// `g(t, y)` flattened to f64, checked, for reading with the step's error ratio.
    pub(crate) fn values(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        let v = self.g.eval(t, y)?;
        check_event_output(&v, &self.device, &format!(" (at t = {t})"))?;
        let n = v.elem_count();
        if n == 0 || (self.len != 0 && n != self.len) {
            return Err(SolverError::OutputMismatch(format!(
                "the event function returned {n} elements (at t = {t}){}",
                if n == 0 {
                    String::new()
                } else {
                    format!(", {} before", self.len)
                }
            ))
            .into());
        }
        v.flatten_all()?.detach().to_dtype(DType::F64)
    }

    fn start(&mut self, t0: f64, g0: &[f64]) -> Result<()> {
        if g0.iter().any(|v| !v.is_finite()) {
            return Err(SolverError::NonFinite { t: t0 }.into());
        }
        self.len = g0.len();
        self.last = g0.to_vec();
        self.sign = g0.iter().map(|v| sign(*v)).collect();
        Ok(())
    }

    /// Called with each accepted step `t → t1` and `g(t1, y1)`; `dense(τ)` is the step's dense
    /// output and `read` the solve's counted host read. Returns whether the solve stops.
    pub(crate) fn accepted(
        &mut self,
        t: f64,
        t1: f64,
        y: &Tensor,
        g1: &[f64],
        dense: &mut dyn FnMut(f64) -> Result<Tensor>,
        read: &dyn Fn(&Tensor) -> Result<Vec<f64>>,
    ) -> Result<bool> {
        if g1.iter().any(|v| !v.is_finite()) {
            return Err(SolverError::NonFinite { t: t1 }.into());
        }
        let dir = if t1 > t { 1.0 } else { -1.0 };
        let mut hits: Vec<(f64, Tensor, usize)> = vec![];
        for (i, &v1) in g1.iter().enumerate() {
            if !self.opts.crossing.counts(self.sign[i], v1) {
                continue;
            }
            let (tc, yc) = self.locate(i, t, t1, y, v1, dense, read)?;
            hits.push((tc, yc, i));
        }
        // In time order; crossings at the same time by element.
        hits.sort_by(|a, b| ((a.0 - b.0) * dir).total_cmp(&0.0).then(a.2.cmp(&b.2)));
        if self.terminal && !hits.is_empty() {
            self.found = Some(hits.swap_remove(0));
            return Ok(true);
        }
        for (i, v) in g1.iter().enumerate() {
            self.last[i] = *v;
            if *v != 0.0 {
                self.sign[i] = sign(*v);
            } else if hits.iter().any(|h| h.2 == i) {
                // Recorded at t1, where it is exactly zero: its next crossing is back.
                self.sign[i] = -self.sign[i];
            }
        }
        self.all.extend(hits);
        Ok(false)
    }

    /// The Illinois method on `[t, t1]` for element `i`, which has `last[i]` (its old sign or
    /// zero) at `t` and `v1` (the other sign or zero) at `t1`. Returns the last time found on
    /// the old side and the state there.
    #[allow(clippy::too_many_arguments)]
    fn locate(
        &self,
        i: usize,
        t: f64,
        t1: f64,
        y: &Tensor,
        v1: f64,
        dense: &mut dyn FnMut(f64) -> Result<Tensor>,
        read: &dyn Fn(&Tensor) -> Result<Vec<f64>>,
    ) -> Result<(f64, Tensor)> {
        if v1 == 0.0 {
            return Ok((t1, dense(t1)?));
        }
        let mut bracket = Illinois::new(t, self.last[i], t1, v1);
        let mut ya = y.clone();
        while let Some(tm) = bracket.trial(self.opts.time_tol) {
            let ym = dense(tm)?;
            let gm = read(&self.values(tm, &ym)?)?[i];
            if !gm.is_finite() {
                return Err(SolverError::NonFinite { t: tm }.into());
            }
            if gm == 0.0 {
                return Ok((tm, ym));
            }
            if bracket.take(tm, gm, self.sign[i]) {
                ya = ym;
            }
        }
        Ok((bracket.a, ya))
    }
}

/// An event function's output must be a float tensor on the state's `device`; `at` is added
/// to the error.
pub(crate) fn check_event_output(v: &Tensor, device: &candle_core::Device, at: &str) -> Result<()> {
    if !v.dtype().is_float() || !v.device().same_device(device) {
        return Err(SolverError::OutputMismatch(format!(
            "the event function returned dtype {:?} on {:?}; it must be a float tensor on the \
             state's device{at}",
            v.dtype(),
            v.device().location()
        ))
        .into());
    }
    Ok(())
}

impl Crossing {
    /// Whether a condition whose last non-zero value had the sign `s0` (0 while it has been
    /// zero, so not yet watched) crosses zero in reaching `v1`, in a direction that counts.
    pub(crate) fn counts(self, s0: f64, v1: f64) -> bool {
        let wanted = match self {
            Crossing::Either => true,
            Crossing::Rising => s0 < 0.0,
            Crossing::Falling => s0 > 0.0,
        };
        s0 != 0.0 && sign(v1) != s0 && wanted
    }
}

/// The Illinois method (regula falsi that halves the stale end's value) on a bracket
/// `[a, b]` of a crossing: `g` has its old sign (or is zero) at `a`, the other sign at `b`.
/// Shared by the event watches of [`crate::odeint_event`] and
/// [`crate::odeint_independent_event`], so both locate a crossing through the same trials.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Illinois {
    pub(crate) a: f64,
    ga: f64,
    b: f64,
    gb: f64,
    /// Which end moved last: +1 for `a`, −1 for `b`; two moves of one end halve the other's
    /// value, so the stale end cannot hold the iteration to a linear rate.
    side: i8,
    iters: usize,
}

impl Illinois {
    pub(crate) fn new(a: f64, ga: f64, b: f64, gb: f64) -> Self {
        Self {
            a,
            ga,
            b,
            gb,
            side: 0,
            iters: 0,
        }
    }

    /// The next trial time strictly inside the bracket (the secant's, else the midpoint), or
    /// `None` once the bracket is within `time_tol` (at least a few ulps of `t`), after 200
    /// trials, or when no time lies inside.
    pub(crate) fn trial(&self, time_tol: f64) -> Option<f64> {
        let (a, b) = (self.a, self.b);
        let tol = time_tol.max(4.0 * f64::EPSILON * a.abs().max(b.abs()));
        if self.iters >= 200 || (b - a).abs() <= tol {
            return None;
        }
        let inside = |x: f64| (x - a) * (x - b) < 0.0;
        let secant = b - self.gb * (b - a) / (self.gb - self.ga);
        let mid = 0.5 * (a + b);
        if secant.is_finite() && inside(secant) {
            Some(secant)
        } else if inside(mid) {
            Some(mid)
        } else {
            None
        }
    }

    /// Takes `g`'s non-zero value `v` at the trial `t`; `old` is the sign on `a`'s side.
    /// Returns whether `a` moved to `t`.
    pub(crate) fn take(&mut self, t: f64, v: f64, old: f64) -> bool {
        self.iters += 1;
        if sign(v) == old {
            (self.a, self.ga) = (t, v);
            if self.side == 1 {
                self.gb *= 0.5;
            }
            self.side = 1;
            true
        } else {
            (self.b, self.gb) = (t, v);
            if self.side == -1 {
                self.ga *= 0.5;
            }
            self.side = -1;
            false
        }
    }
}

pub(crate) fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}
