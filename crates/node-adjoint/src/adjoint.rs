//! `odeint_adjoint`: a solve whose gradient comes from the adjoint method, as one Candle op.
//!
//! For `dy/dt = f(t, y; θ)` and a loss `L` of the outputs `y(t_i)`, the adjoint
//! `a(t) = ∂L/∂y(t)` obeys `da/dt = −aᵀ ∂f/∂y` and `dL/dθ = ∫ aᵀ ∂f/∂θ dt` (Chen et al. 2018,
//! after Pontryagin). The reverse solve integrates the augmented state `[y, a, g_θ]` from the
//! last output time back to the first, one interval at a time: at each output time it adds that
//! output's incoming gradient to `a` and re-anchors `y` to the value stored by the forward
//! solve. The vector–Jacobian products `aᵀ∂f/∂y` and `aᵀ∂f/∂θ` come from Candle autograd on a
//! fresh `Var`. Memory is O(number of outputs), not O(number of steps).
//!
//! Time gradients need no extra integral: the flow identity `∂y(t_i)/∂t_0 = −∂y(t_i)/∂y_0 ·
//! f(t_0, y_0)` gives `dL/dt_0 = −a(t_0⁺)ᵀ f(t_0, y_0)` and `dL/dt_i = g_iᵀ f(t_i, y(t_i))`.

use crate::field::ParamVectorField;
use crate::op::{Precomputed, SolveOp};
use crate::options::{AdjointNorm, AdjointOptions, AdjointState};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Layout, MetalStorage, Result, Shape, Tensor, Var,
};
use node_solvers::{
    event_gradients, locate_event, locate_events, odeint, odeint_dense, Atol, DenseSolution,
    ErrorNorm, EventFunction, EventOptions, Jacobian, LocatedEvent, LocatedEvents, RecordedEvent,
    ReversibleTrace, SolveOptions, SolverError, SolverStats, StepSize, StepTrace, VectorField,
};
use std::sync::{Arc, Mutex};

/// Forward and backward counts of a differentiated solve. A cheap handle: clones share the
/// counts, and the backward counts appear once `backward()` has run.
#[derive(Clone, Debug, Default)]
pub struct GradientStats<T> {
    inner: Arc<Mutex<(T, T)>>,
}

impl<T: Copy> GradientStats<T> {
    /// Counts of the forward solve.
    pub fn forward(&self) -> T {
        self.lock().0
    }
    /// Counts of the backward pass (the reverse solve, the replay or the walk back); zero
    /// before `backward()`.
    pub fn backward(&self) -> T {
        self.lock().1
    }
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, (T, T)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forward and backward counts of an adjoint solve (and of checkpointed and reversible
/// backprop). The backward counts cover all intervals, plus the evaluations for time
/// gradients.
pub type AdjointStats = GradientStats<SolverStats>;

/// The result of [`odeint_adjoint`].
#[derive(Clone, Debug)]
pub struct AdjointSolution {
    /// States at the output times, `[T, ...y0.shape]`; differentiable through the adjoint.
    pub ys: Tensor,
    /// Solver statistics, the backward ones filled in by `backward()`.
    pub stats: AdjointStats,
}

/// Solves `dy/dt = f(t, y; θ)` from `y(ts[0]) = y0` like [`node_solvers::odeint`], with
/// gradients by the adjoint method: `loss.backward()` reaches `y0` (and whatever produced it)
/// and every parameter in `f.params()`, using memory independent of the number of steps.
///
/// The gradients are those of the continuous problem, computed by a second solve: they match
/// backprop through the solver up to the two solves' errors. Prefer backprop through the
/// solver (`odeint`) for loose tolerances, short solves, or dynamics that are unstable in
/// reverse time (which the reverse solve of `y` amplifies); prefer the adjoint when memory
/// limits the number of steps.
///
/// # Shapes
/// `y0`: any shape `S`; result `ys`: `[ts.len(), ...S]`.
///
/// # Errors
/// Those of [`node_solvers::odeint`]; parameters of another dtype than `y0`; and, during
/// `backward()`, those of the reverse solve.
pub fn odeint_adjoint<F>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    adj: &AdjointOptions,
) -> Result<AdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    run(f, y0, Times::Host(ts.to_vec()), opts, adj, None)
}

/// Like [`odeint_adjoint`], with the output times as a 1-D tensor that also receives
/// gradients: `dL/dt_i` for every output time, the initial one included.
///
/// # Errors
/// As [`odeint_adjoint`]; `ts` must be 1-D.
pub fn odeint_adjoint_with_times<F>(
    f: &F,
    y0: &Tensor,
    ts: &Tensor,
    opts: &SolveOptions,
    adj: &AdjointOptions,
) -> Result<AdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    run(f, y0, Times::from_tensor(ts)?, opts, adj, None)
}

/// The result of [`odeint_event_adjoint`].
#[derive(Clone, Debug)]
pub struct AdjointEventSolution {
    /// The event time, or `t_max` if no event happened before it.
    pub t: f64,
    /// `t` as a 0-d tensor that carries the event time's gradient (see
    /// [`node_solvers::EventSolution::time`]).
    pub time: Tensor,
    /// The state at `t`; its gradient reaches `y0` and the field's parameters through the
    /// adjoint, and includes the event time's dependence.
    pub y: Tensor,
    /// Which element of the event function crossed zero; `None` at `t_max`.
    pub event: Option<usize>,
    /// Counts of the solve that located the event, then of the reverse solve.
    pub stats: AdjointStats,
}

/// [`node_solvers::odeint_event`] with gradients by the adjoint method: solves
/// `dy/dt = f(t, y; θ)` from `y(t0) = y0` until an element of `g(t, y)` crosses zero (or
/// `t_max`), and returns the event time and state, both differentiable, using memory
/// independent of the number of steps.
///
/// The forward solve runs once, detached, and locates the event; the adjoint op is then
/// anchored on its states at `t0` and `t*`, and the event time gets its gradient by the
/// implicit function theorem ([`node_solvers::event_gradients`]): `dt*/dθ =
/// −(∂g/∂y · dy*/dθ + ∂g/∂θ_g) / (∂g/∂t + ∂g/∂y · f)`. Gradients reach `y0`, the field's
/// parameters and the event function's own parameters.
///
/// # Shapes
/// `y0`: any shape `S`; `g(t, y)`: any shape with at least one element; result `time` 0-d,
/// `y` shape `S`.
///
/// # Errors
/// Those of [`node_solvers::odeint_event`] and [`odeint_adjoint`].
#[allow(clippy::too_many_arguments)]
pub fn odeint_event_adjoint<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    adj: &AdjointOptions,
) -> Result<AdjointEventSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
    G: EventFunction,
{
    let found = locate_event(
        &detached(f),
        &y0.detach(),
        t0,
        t_max,
        &detached_event(g),
        opts,
        ev_opts,
    )?;
    event_solution(f, g, y0, t0, found, |ys, t, stats| {
        run(
            f,
            y0,
            Times::Host(vec![t0, t]),
            opts,
            adj,
            Some((ys, stats)),
        )
    })
}

/// The result of [`odeint_events_adjoint`] and [`crate::odeint_events_checkpointed`].
#[derive(Clone, Debug)]
pub struct AdjointEventsSolution {
    /// Every crossing from `t0` to `t_max`, in time order; each `time` and `y` carries its
    /// gradient (see [`node_solvers::odeint_events`]).
    pub events: Vec<RecordedEvent>,
    /// The state at `t_max`, differentiable.
    pub y: Tensor,
    /// Counts of the solve that located the crossings, then of the backward pass.
    pub stats: AdjointStats,
}

/// [`node_solvers::odeint_events`] with gradients by the adjoint method: every crossing of
/// zero by an element of `g(t, y)` from `t0` to `t_max`, recorded without stopping, each
/// crossing's time and state differentiable, and the state at `t_max`, with memory
/// independent of the number of steps.
///
/// The forward solve runs once, detached, and locates the crossings; the adjoint op is then
/// anchored on the states at `t0`, at each crossing and at `t_max` as its output times (the
/// reverse solve re-anchors at each), and each crossing time gets its gradient by the
/// implicit function theorem ([`node_solvers::event_gradients`]).
///
/// # Shapes
/// As [`odeint_event_adjoint`]; each event's `time` 0-d and `y` the state's shape.
///
/// # Errors
/// Those of [`node_solvers::odeint_events`] and [`odeint_adjoint`].
#[allow(clippy::too_many_arguments)]
pub fn odeint_events_adjoint<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    adj: &AdjointOptions,
) -> Result<AdjointEventsSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
    G: EventFunction,
{
    let found = locate_events(
        &detached(f),
        &y0.detach(),
        t0,
        t_max,
        &detached_event(g),
        opts,
        ev_opts,
    )?;
    events_solution(f, g, y0, t0, t_max, found, |ys, times, stats| {
        run(f, y0, Times::Host(times), opts, adj, Some((ys, stats)))
    })
}

/// The solution from located crossings: the op that `make_op` builds on the detached states
/// at `t0`, at each distinct crossing time and at `t_max` (its output times) carries the
/// states' gradients, and [`event_gradients`] each crossing time's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn events_solution<F, G>(
    f: &F,
    g: &G,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    found: LocatedEvents,
    make_op: impl FnOnce(Tensor, Vec<f64>, SolverStats) -> Result<AdjointSolution>,
) -> Result<AdjointEventsSolution>
where
    F: ParamVectorField,
    G: EventFunction,
{
    // Output times strictly monotone: crossings at the same time (or at t0 or t_max, within
    // the time tolerance) share one.
    let mut times = vec![t0];
    let mut states = vec![y0.detach()];
    let mut index = Vec::with_capacity(found.events.len());
    for (t, y, _) in &found.events {
        if *t != times[times.len() - 1] {
            times.push(*t);
            states.push(y.detach());
        }
        index.push(times.len() - 1);
    }
    if t_max != times[times.len() - 1] {
        times.push(t_max);
        states.push(found.y.detach());
    }
    let last = times.len() - 1;
    let (ys, stats) = if last == 0 {
        // Nothing to differentiate over (t_max within the time tolerance of t0).
        let stats = AdjointStats::default();
        stats.lock().0 = found.stats;
        (y0.unsqueeze(0)?, stats)
    } else {
        let sol = make_op(Tensor::stack(&states, 0)?, times, found.stats)?;
        (sol.ys, sol.stats)
    };
    let mut events = Vec::with_capacity(found.events.len());
    for ((t, _, which), i) in found.events.into_iter().zip(index) {
        let (time, y) = event_gradients(f, g, t, which, &ys.get(i)?)?;
        events.push(RecordedEvent {
            t,
            time,
            y,
            event: which,
        });
    }
    Ok(AdjointEventsSolution {
        events,
        y: ys.get(last)?,
        stats,
    })
}

/// The event solution from a located event: the op that `make_op` builds on the detached
/// states at `t0` and the event (stacked), the event time and the locating solve's counts
/// carries the state's gradient, and [`event_gradients`] the event time's.
pub(crate) fn event_solution<F, G>(
    f: &F,
    g: &G,
    y0: &Tensor,
    t0: f64,
    found: LocatedEvent,
    make_op: impl FnOnce(Tensor, f64, SolverStats) -> Result<AdjointSolution>,
) -> Result<AdjointEventSolution>
where
    F: ParamVectorField,
    G: EventFunction,
{
    let (y, stats) = if found.t == t0 {
        // A crossing within the time tolerance of t0 leaves no interval to differentiate.
        let stats = AdjointStats::default();
        stats.lock().0 = found.stats;
        (y0.clone(), stats)
    } else {
        let ys = Tensor::stack(&[y0.detach(), found.y.detach()], 0)?;
        let sol = make_op(ys, found.t, found.stats)?;
        (sol.ys.get(1)?, sol.stats)
    };
    let (time, y) = match found.event {
        Some(which) => event_gradients(f, g, found.t, which, &y)?,
        None => (Tensor::new(found.t, y.device())?.to_dtype(y.dtype())?, y),
    };
    Ok(AdjointEventSolution {
        t: found.t,
        time,
        y,
        event: found.event,
        stats,
    })
}

/// The output times: host numbers, or a tensor that receives gradients too.
pub(crate) enum Times {
    Host(Vec<f64>),
    Tensor(Vec<f64>, Tensor),
}

impl Times {
    /// Times given as a 1-D tensor: read back once, and kept to receive gradients.
    pub(crate) fn from_tensor(ts: &Tensor) -> Result<Self> {
        if ts.rank() != 1 {
            return Err(SolverError::InvalidTimes(format!(
                "ts must be 1-D, got shape {:?}",
                ts.shape()
            ))
            .into());
        }
        let host = ts.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        Ok(Self::Tensor(host, ts.clone()))
    }

    /// The times as host numbers.
    pub(crate) fn host(&self) -> &[f64] {
        match self {
            Self::Host(t) | Self::Tensor(t, _) => t,
        }
    }
}

/// The adjoint op on `(y0, θ[, ts])`; `forward` is the detached forward solution at the
/// output times and its counts, when the caller has it already.
fn run<F>(
    f: &F,
    y0: &Tensor,
    times: Times,
    opts: &SolveOptions,
    adj: &AdjointOptions,
    forward: Option<(Tensor, SolverStats)>,
) -> Result<AdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    check_params(f, y0)?;
    let (ys, forward_stats, backward) = match adj.state {
        AdjointState::Backsolve => {
            let (ys, stats) = match forward {
                Some(done) => done,
                None => {
                    let sol = odeint(&detached(f), &y0.detach(), times.host(), opts)?;
                    (sol.ys, sol.stats)
                }
            };
            (ys, stats, Backward::Adjoint(adj.clone()))
        }
        AdjointState::Interpolated => {
            // The reverse solve reads the forward state from a dense solution. Located event
            // states, where given, stay the outputs: this solve steps to the same times and
            // agrees with them to its tolerance.
            let (sol, dense) = odeint_dense(&detached(f), &y0.detach(), times.host(), opts)?;
            let backward = Backward::Interpolated(adj.clone(), dense);
            match forward {
                Some((ys, mut stats)) => {
                    stats += sol.stats;
                    (ys, stats, backward)
                }
                None => (sol.ys, sol.stats, backward),
            }
        }
    };
    apply_op(f, y0, times, opts, ys, forward_stats, backward)
}

/// `f` with its outputs detached: a forward solve of it builds no graph through its steps, so
/// its memory does not grow with them (O(1) in steps for the adjoint). It keeps the field's
/// own Jacobian, and its split into parts ([`VectorField::split`]), each detached.
pub(crate) fn detached<F: VectorField + ?Sized>(f: &F) -> Detached<'_, F> {
    Detached {
        f,
        parts: f.split().map(|(e, i)| Box::new((detached(e), detached(i)))),
    }
}

/// A part of a split field, detached.
type DetachedPart<'a> = Detached<'a, dyn VectorField + 'a>;

pub(crate) struct Detached<'a, F: ?Sized> {
    f: &'a F,
    parts: Option<Box<(DetachedPart<'a>, DetachedPart<'a>)>>,
}

impl<F: VectorField + ?Sized> VectorField for Detached<'_, F> {
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self.f.eval(t, y).map(|k| k.detach())
    }

    fn jacobian(&self, t: f64, y: &Tensor, structure: Jacobian) -> Result<Option<Tensor>> {
        Ok(self.f.jacobian(t, y, structure)?.map(|j| j.detach()))
    }

    fn split(&self) -> Option<(&dyn VectorField, &dyn VectorField)> {
        self.parts
            .as_deref()
            .map(|(e, i)| (e as &dyn VectorField, i as &dyn VectorField))
    }
}

/// `g` with its outputs detached, for locating an event with no graph.
pub(crate) fn detached_event<G: EventFunction + ?Sized>(
    g: &G,
) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
    move |t, y| g.eval(t, y).map(|c| c.detach())
}

/// Parameters must share the state's dtype (their gradients are integrated with it), and
/// their sources ([`ParamVectorField::param_sources`]) must match them one for one.
pub(crate) fn check_params<F: ParamVectorField>(f: &F, y0: &Tensor) -> Result<()> {
    check_param_list(&f.params(), &f.param_sources(), y0)
}

/// Refuses a state without components for a reverse solve, which measures its error on the
/// adjoint of `y` (backprop through such a solve works, and gives no gradients).
pub(crate) fn check_not_empty(y0: &Tensor) -> Result<()> {
    if y0.elem_count() == 0 {
        return Err(SolverError::InvalidOptions(format!(
            "the adjoint needs a state with at least one component, got shape {:?}",
            y0.shape()
        ))
        .into());
    }
    Ok(())
}

/// [`check_params`] on a parameter list and its sources.
pub(crate) fn check_param_list(params: &[Var], sources: &[Tensor], y0: &Tensor) -> Result<()> {
    if let Some(p) = params.iter().find(|p| p.dtype() != y0.dtype()) {
        return Err(SolverError::InvalidOptions(format!(
            "the field's parameters must share the state's dtype {:?}, found {:?}",
            y0.dtype(),
            p.dtype()
        ))
        .into());
    }
    if sources.len() != params.len() {
        return Err(SolverError::InvalidOptions(format!(
            "the field names {} parameter sources for {} parameters",
            sources.len(),
            params.len()
        ))
        .into());
    }
    for (i, (p, s)) in params.iter().zip(sources).enumerate() {
        if p.shape() != s.shape() || p.dtype() != s.dtype() || !p.device().same_device(s.device()) {
            return Err(SolverError::InvalidOptions(format!(
                "parameter {i} is {:?} {:?} but its source is {:?} {:?}{}",
                p.dtype(),
                p.dims(),
                s.dtype(),
                s.dims(),
                if p.device().same_device(s.device()) {
                    ""
                } else {
                    ", on another device"
                }
            ))
            .into());
        }
    }
    Ok(())
}

/// The op on `(y0, θ[, ts])` whose value is `ys`, the detached forward solution at the output
/// times, and whose backward computes the gradients as `backward` says.
pub(crate) fn apply_op<F>(
    f: &F,
    y0: &Tensor,
    times: Times,
    opts: &SolveOptions,
    ys: Tensor,
    forward_stats: SolverStats,
    backward: Backward,
) -> Result<AdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    let ts = times.host().to_vec();
    let params = f.params();
    let stats = AdjointStats::default();
    stats.lock().0 = forward_stats;
    let op = SolveOp(Arc::new(Inner {
        f: f.clone(),
        params: params.clone(),
        ts,
        ys: ys.contiguous()?,
        opts: opts.clone(),
        backward,
        stats: stats.clone(),
    }));
    let theta = flat_params(&f.param_sources())?;
    let ys = match (times, theta) {
        (Times::Host(_), None) => y0.apply_op1(op)?,
        (Times::Host(_), Some(theta)) => y0.apply_op2(&theta, op)?,
        (Times::Tensor(_, tt), theta) => {
            // A placeholder for "no parameters" keeps one three-input op for the time case.
            let theta = match theta {
                Some(t) => t,
                None => Tensor::zeros(1, y0.dtype(), y0.device())?,
            };
            y0.apply_op3(&theta, &tt, op)?
        }
    };
    Ok(AdjointSolution { ys, stats })
}

/// `cat` of the flattened parameters' sources; Candle's own `cat`/`reshape` backward routes
/// the flat gradient back to each `Var` (or a [`crate::TensorParam`]'s source).
pub(crate) fn flat_params(sources: &[Tensor]) -> Result<Option<Tensor>> {
    if sources.is_empty() {
        return Ok(None);
    }
    let flat: Vec<Tensor> = sources
        .iter()
        .map(|p| p.flatten_all())
        .collect::<Result<_>>()?;
    Ok(Some(Tensor::cat(&flat, 0)?))
}

/// How the op's backward computes the gradients.
pub(crate) enum Backward {
    /// The adjoint method: the reverse-time augmented solve, `y` integrated backwards.
    Adjoint(AdjointOptions),
    /// The adjoint method with `y` read from the forward solve's dense solution.
    Interpolated(AdjointOptions, DenseSolution),
    /// Checkpointed backprop: the forward steps replayed from the stored states, one stretch
    /// at a time, each differentiated by Candle autograd.
    Replay(StepTrace),
    /// Reversible backprop: the steps of a reversible solve walked back from its last pair,
    /// each step's increments differentiated by Candle autograd.
    Reversible(ReversibleTrace),
    /// Backprop through the kept graph of the forward solve, `ys`, from the leaf copy `y0`.
    Graph {
        /// The outputs with their graph.
        ys: Tensor,
        /// The leaf the solve started from.
        y0: Var,
    },
}

pub(crate) struct Inner<F> {
    pub(crate) f: F,
    pub(crate) params: Vec<Var>,
    pub(crate) ts: Vec<f64>,
    pub(crate) ys: Tensor,
    pub(crate) opts: SolveOptions,
    backward: Backward,
    pub(crate) stats: AdjointStats,
}

/// The augmented dynamics `d/dt [y, a, g_θ] = [f, −aᵀ∂f/∂y, −aᵀ∂f/∂θ]` on a flat state; with
/// a dense forward solution, `d/dt [a, g_θ]` with `y(t)` read from it.
///
/// For a split field ([`VectorField::split`]) the augmented dynamics split the same way, each
/// part's own `[f_P, −aᵀ∂f_P/∂y, −aᵀ∂f_P/∂θ]`: an IMEX method solves backwards for the
/// implicit part's adjoint alone and only evaluates the explicit part's.
struct Augmented<'a> {
    f: &'a dyn VectorField,
    params: &'a [Var],
    shape: &'a Shape,
    n: usize,
    dense: Option<&'a DenseSolution>,
    /// The forward solve's Jacobian option.
    structure: Jacobian,
    /// The explicit and implicit parts' augmented dynamics, for a split field.
    parts: Option<Box<(Augmented<'a>, Augmented<'a>)>>,
}

impl<'a> Augmented<'a> {
    fn new(
        f: &'a dyn VectorField,
        params: &'a [Var],
        shape: &'a Shape,
        dense: Option<&'a DenseSolution>,
        structure: Jacobian,
    ) -> Self {
        let part = |f| Self {
            f,
            params,
            shape,
            n: shape.elem_count(),
            dense,
            structure,
            parts: None,
        };
        let parts = f
            .split()
            .map(|(explicit, implicit)| Box::new((part(explicit), part(implicit))));
        Self { parts, ..part(f) }
    }
}

impl VectorField for Augmented<'_> {
    fn split(&self) -> Option<(&dyn VectorField, &dyn VectorField)> {
        self.parts
            .as_deref()
            .map(|(e, i)| (e as &dyn VectorField, i as &dyn VectorField))
    }

    fn eval(&self, t: f64, aug: &Tensor) -> Result<Tensor> {
        let (y, a_at) = match self.dense {
            Some(d) => (d.evaluate_extended(t)?, 0),
            None => (aug.narrow(0, 0, self.n)?.reshape(self.shape)?, self.n),
        };
        let a = aug.narrow(0, a_at, self.n)?.reshape(self.shape)?;
        let y_var = Var::from_tensor(&y)?;
        let fy = self.f.eval(t, y_var.as_tensor())?;
        if fy.shape() != self.shape {
            return Err(SolverError::ShapeMismatch {
                expected: self.shape.clone(),
                got: fy.shape().clone(),
                t,
            }
            .into());
        }
        // Backward from a root whose gradient with respect to `fy` is −a: the minus signs of
        // `−aᵀ∂f` in one op (on a GPU one launch instead of one per parameter; negation is
        // exact, so the values are the same).
        let grads = fy.apply_op2(&a, VjpSeed)?.backward()?;
        let vjp = |v: &Tensor| flat_grad(&grads, v);
        let mut parts = Vec::with_capacity(2 + self.params.len());
        if self.dense.is_none() {
            parts.push(fy.detach().flatten_all()?);
        }
        parts.push(vjp(y_var.as_tensor())?);
        for p in self.params {
            parts.push(vjp(p.as_tensor())?);
        }
        // One launch on CUDA instead of a copy per part.
        node_solvers::rk::concat_flat(&parts)
    }

    /// With a dense forward solution, the reverse dynamics of `a` are linear, `−(∂f/∂y)ᵀ a`
    /// with `y(t)` read from it: their Jacobian is `−Jᵀ`, from the field's own `J` when it
    /// has one, in the forward solve's structure (dense `[n, n]`, or `[count, size, size]`
    /// blocks, each transposed). A forward [`Jacobian::DensePrefix`] gives no `J` for the
    /// integrals' adjoints, and the backsolve dynamics couple `y` and `a` through second
    /// derivatives: both keep finite differences.
    fn jacobian(&self, t: f64, _aug: &Tensor, _structure: Jacobian) -> Result<Option<Tensor>> {
        let Some(d) = self.dense else {
            return Ok(None);
        };
        let dims = match (self.structure, system_blocks(self.structure, self.shape)) {
            (Jacobian::Dense, _) => vec![self.n, self.n],
            (_, Some((count, size))) => vec![count, size, size],
            _ => return Ok(None),
        };
        let y = d.evaluate_extended(t)?;
        let Some(jac) = self.f.jacobian(t, &y, self.structure)? else {
            return Ok(None);
        };
        if jac.dims() != dims {
            return Err(SolverError::OutputMismatch(format!(
                "its Jacobian has shape {:?}, but the interpolated adjoint of a solve with `{:?}` needs {dims:?} (at t = {t})",
                jac.dims(),
                self.structure
            ))
            .into());
        }
        let last = jac.rank() - 1;
        Ok(Some(jac.transpose(last - 1, last)?.neg()?))
    }
}

/// `v`'s gradient in `grads`, detached and flat, or zeros where it has none. Gradients come
/// back with graphs attached: detached, memory does not grow with the steps.
pub(crate) fn flat_grad(grads: &candle_core::backprop::GradStore, v: &Tensor) -> Result<Tensor> {
    match grads.get(v) {
        Some(g) => g.detach().flatten_all(),
        None => v.zeros_like()?.flatten_all(),
    }
}

/// The independent systems of a forward solve's Jacobian option on a state of `shape`, as
/// `(count, size)`: one per row for [`Jacobian::Batched`], the given ones for
/// [`Jacobian::Blocks`]; `None` for the dense options.
fn system_blocks(structure: Jacobian, shape: &Shape) -> Option<(usize, usize)> {
    match structure {
        Jacobian::Batched => {
            let count = shape.dims().first().copied().unwrap_or(1).max(1);
            Some((count, shape.elem_count() / count))
        }
        Jacobian::Blocks { count, size } => Some((count, size)),
        Jacobian::Dense | Jacobian::DensePrefix(_) => None,
    }
}

/// The root of the vector–Jacobian products: a scalar whose gradient with respect to its
/// first input `fy` is `−a`, its second input, times the incoming gradient. Its value is a
/// placeholder 0, not `−Σ a·fy`: only its backward pass is used. Candle's way to the same
/// gradient, `(fy·(−a)).sum_all()`, costs a negation, a product and a sum forward and a
/// broadcast and two products backward, each a launch on a GPU; this is one forward (a
/// zero fill) and two backward (negating the scalar gradient, and a broadcast product).
pub(crate) struct VjpSeed;

impl VjpSeed {
    fn zero<S>(s: &S) -> Result<(S, Shape)>
    where
        S: BackendStorage<Device: candle_core::backend::BackendDevice<Storage = S>>,
    {
        use candle_core::backend::BackendDevice;
        let shape = Shape::from(());
        Ok((s.device().zeros_impl(&shape, s.dtype())?, shape))
    }
}

impl CustomOp2 for VjpSeed {
    fn name(&self) -> &'static str {
        "adjoint-vjp-seed"
    }
    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::zero(s)
    }
    fn cuda_fwd(
        &self,
        s: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Self::zero(s)
    }
    fn metal_fwd(
        &self,
        s: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        Self::zero(s)
    }
    fn bwd(
        &self,
        _fy: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(a.broadcast_mul(&grad.neg()?)?), None))
    }
}

/// The part of a step grid strictly between `from` and `to`, in the direction `from → to`,
/// with the two ends added: the grid of a reverse interval.
fn sub_grid(grid: &[f64], from: f64, to: f64) -> Vec<f64> {
    let (lo, hi) = (from.min(to), from.max(to));
    let mut inner: Vec<f64> = grid.iter().copied().filter(|&t| t > lo && t < hi).collect();
    if (grid[grid.len() - 1] - grid[0]) * (to - from) < 0.0 {
        inner.reverse();
    }
    let mut out = Vec::with_capacity(inner.len() + 2);
    out.push(from);
    out.extend(inner);
    out.push(to);
    out
}

impl<F: ParamVectorField> Inner<F> {
    /// Returns `dL/dy0`, `dL/dθ` (flat) and, when asked for, `dL/dts`.
    fn backward(
        &self,
        grad_ys: &Tensor,
        want_t: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let g = grad_ys.detach();
        // `dL/dy(t_0)` through the outputs after `t_0` (the adjoint at `t_0⁺`), and `dL/dθ`.
        let (a0, g_theta, mut stats) = match &self.backward {
            Backward::Adjoint(adj) => self.adjoint_backward(adj, None, &g)?,
            Backward::Interpolated(adj, dense) => self.adjoint_backward(adj, Some(dense), &g)?,
            Backward::Replay(trace) => self.replay_backward(trace, &g)?,
            Backward::Reversible(trace) => self.reversible_backward(trace, &g)?,
            Backward::Graph { ys, y0 } => self.graph_backward(ys, y0, &g)?,
        };
        let g_t = if want_t {
            let (g_t, nfe) = self.time_grads(&g, &a0)?;
            stats.nfe += nfe;
            Some(g_t)
        } else {
            None
        };
        self.stats.lock().1 = stats;
        Ok(((a0 + g.get(0)?)?, g_theta, g_t))
    }

    /// `dL/dt_i` by the flow identity: `g_iᵀ f(t_i, y_i)` for the later output times and
    /// `−a(t_0⁺)ᵀ f(t_0, y_0)` for the first. One evaluation per output time, and no read
    /// back: the result is a tensor of the state's dtype and device. The same for every
    /// gradient mode: these are the continuous problem's time gradients, which backprop
    /// through the solver matches up to the solve's error.
    fn time_grads(&self, g: &Tensor, a0: &Tensor) -> Result<(Tensor, usize)> {
        let n_t = self.ts.len();
        if n_t == 1 {
            // `y(t_0) = y0` does not depend on `t_0`.
            return Ok((Tensor::zeros(1, g.dtype(), g.device())?, 0));
        }
        let mut fs = Vec::with_capacity(n_t);
        let mut ws = Vec::with_capacity(n_t);
        for (i, &t) in self.ts.iter().enumerate() {
            fs.push(self.f.eval(t, &self.ys.get(i)?)?.detach());
            ws.push(if i == 0 { a0.neg()? } else { g.get(i)? });
        }
        let prod = (Tensor::stack(&fs, 0)? * Tensor::stack(&ws, 0)?)?;
        Ok((prod.reshape((n_t, ()))?.sum(1)?, n_t))
    }

    /// The reverse solve: returns the adjoint at `t_0⁺`, `dL/dθ` (flat) and the reverse
    /// solves' counts. Its state is `[y, a, g_θ]`, or `[a, g_θ]` with `dense`.
    fn adjoint_backward(
        &self,
        adj: &AdjointOptions,
        dense: Option<&DenseSolution>,
        g: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>, SolverStats)> {
        let ts = &self.ts;
        let last = ts.len() - 1;
        let shape = self.ys.shape().dims()[1..].to_vec();
        let shape = Shape::from(shape);
        let n = shape.elem_count();
        let p: usize = self.params.iter().map(|v| v.elem_count()).sum();
        let dev = self.ys.device();
        let dtype = self.ys.dtype();
        if n == 0 {
            // Nothing to carry back: `a` has no components, so neither has `aᵀ∂f/∂θ` any.
            let g_theta = (p > 0).then(|| Tensor::zeros(p, dtype, dev)).transpose()?;
            return Ok((g.get(0)?.zeros_like()?, g_theta, SolverStats::default()));
        }
        let span = (ts[last] - ts[0]).abs();
        let mut ropts = adj.reverse_solve_options(&self.opts, span);
        let mut stats = SolverStats::default();
        if let Atol::PerComponent(t) = &ropts.atol {
            stats.host_reads += 1;
            // The augmented state is flat and longer than y: use the tightest tolerance.
            let min = t
                .flatten_all()?
                .min(0)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            ropts.atol = Atol::Scalar(min);
        }
        // Where `a` sits in the state, and the length of the part that enters the field.
        let a_at = if dense.is_some() { 0 } else { n };
        let dynamic = a_at + n;
        ropts.norm = match adj.norm {
            AdjointNorm::Seminorm if p > 0 => ErrorNorm::RmsPrefix(dynamic),
            _ => ErrorNorm::Rms,
        };
        // An implicit method's Newton iterations: only `[y, a]` (or `a`) enter the
        // augmented field, the parameter gradients are its integrals. With `y` interpolated,
        // `a` has the layout of `y`, so a batched forward solve's independent systems stay
        // independent blocks backwards (`y` and `a` of one system are not contiguous in
        // `[y, a]`, so the backsolve reverse Jacobian stays dense).
        ropts.jacobian = match (dense, system_blocks(self.opts.jacobian, &shape)) {
            (Some(_), Some((count, size))) => Jacobian::Blocks { count, size },
            _ => Jacobian::DensePrefix(dynamic),
        };
        if let Some(d) = dense {
            // The interpolated y is smooth inside each forward step only: stepping to the
            // forward steps' ends keeps the reverse steps from straddling a kink (as Julia's
            // InterpolatingAdjoint does with its tstops).
            let mut stops = ropts.step_ts.to_vec();
            stops.extend_from_slice(d.step_times());
            ropts.step_ts = stops.into();
        }
        let aug_field = Augmented::new(&self.f, &self.params, &shape, dense, self.opts.jacobian);
        let mut a = if last > 0 {
            g.get(last)?
        } else {
            g.get(0)?.zeros_like()?
        };
        let mut g_theta = Tensor::zeros(p, dtype, dev)?;
        for i in (1..=last).rev() {
            let mut parts = Vec::with_capacity(3);
            if dense.is_none() {
                parts.push(self.ys.get(i)?.flatten_all()?);
            }
            parts.push(a.flatten_all()?);
            if p > 0 {
                parts.push(g_theta.clone());
            }
            let aug0 = node_solvers::rk::concat_flat(&parts)?;
            let interval = [ts[i], ts[i - 1]];
            let sol = match &ropts.step {
                StepSize::Grid(grid) => {
                    let back = ropts.clone().step_grid(sub_grid(grid, ts[i], ts[i - 1]));
                    odeint(&aug_field, &aug0, &interval, &back)?
                }
                _ => odeint(&aug_field, &aug0, &interval, &ropts)?,
            };
            stats += sol.stats;
            // The next interval starts where this one's controller left off: the adjoint's
            // jump at the output time changes the state, rarely the scale of its dynamics (a
            // step too large for it is rejected and shrunk as any other).
            if !adj.reselect_first_step && sol.last_step.is_finite() && sol.last_step > 0.0 {
                ropts.first_step = Some(sol.last_step);
            }
            let end = sol.last()?;
            a = end.narrow(0, a_at, n)?.reshape(&shape)?;
            if p > 0 {
                g_theta = end.narrow(0, dynamic, p)?;
            }
            // The output at t_(i-1) adds its own gradient (the first one's is added by the
            // caller); y is re-anchored to the stored forward value at the start of the next
            // interval.
            if i > 1 {
                a = (a + g.get(i - 1)?)?;
            }
        }
        Ok((a.detach(), (p > 0).then_some(g_theta.detach()), stats))
    }
}

impl<F: ParamVectorField + Send + Sync + 'static> Precomputed for Inner<F> {
    const NAME: &'static str = "odeint-adjoint";
    fn solution(&self) -> &Tensor {
        &self.ys
    }
    fn gradients(
        &self,
        grad: &Tensor,
        times: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        self.backward(grad, times)
    }
}
