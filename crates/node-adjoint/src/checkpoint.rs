//! `odeint_checkpointed`: backprop through the solver's steps, exactly, without keeping the
//! graph of every step (diffrax's `RecursiveCheckpointAdjoint`; Griewank & Walther,
//! "Evaluating Derivatives", ch. 12).
//!
//! The forward solve runs detached and stores the state every `stride` accepted steps
//! ([`node_solvers::odeint_traced`]). The backward pass walks the stretches between stored
//! states from the last to the first: it replays each stretch's steps on the recorded step
//! grid from its stored state (a fresh `Var`), with the field's parameters tracked, and
//! backpropagates through that stretch alone, seeded with the gradient arriving at its end and
//! the gradients of the outputs inside it. The result is the gradient of the discrete solve,
//! the one backprop through `odeint` gives, at the price of one more forward pass; the memory
//! is the stored states plus one stretch's graph instead of the graph of every step.

use crate::adjoint::{
    apply_op, check_params, detached, detached_event, event_solution, events_solution,
    AdjointEventsSolution, Backward, Inner, Times,
};
use crate::field::ParamVectorField;
use crate::options::CheckpointOptions;
use crate::{AdjointEventSolution, AdjointSolution};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use node_solvers::{
    locate_event_traced, locate_events_traced, odeint, odeint_traced, EventFunction, EventOptions,
    SolveOptions, SolverError, SolverStats, StepTrace,
};

/// Solves `dy/dt = f(t, y; θ)` from `y(ts[0]) = y0` like [`node_solvers::odeint`], with the
/// gradients backprop through the solver gives (the same steps, differentiated exactly), but
/// with memory bounded by the stored states and one replayed stretch of steps instead of the
/// graph of every step.
///
/// `loss.backward()` reaches `y0` (and whatever produced it) and every parameter in
/// `f.params()`. Compared with [`crate::odeint_adjoint`]: exact gradients of what was
/// computed, no reverse-time solve (so no trouble with dynamics unstable backwards), more
/// memory (the stored states, and one stretch's graph). Compared with backprop through
/// `odeint`: the same gradients, about one more forward pass of compute, far less memory when
/// the solve takes many steps. Step-size decisions are not differentiated, as with backprop.
///
/// The field must be deterministic: the backward pass evaluates it again on the same inputs.
///
/// # Shapes
/// `y0`: any shape `S`; result `ys`: `[ts.len(), ...S]`.
///
/// # Errors
/// Those of [`node_solvers::odeint`]; parameters of another dtype than `y0`; `checkpoints`
/// of 0; and, during `backward()`, errors of the field in the replayed steps.
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use node_adjoint::{odeint_checkpointed, with_params, CheckpointOptions};
/// use node_solvers::SolveOptions;
/// # fn main() -> candle_core::Result<()> {
/// // dy/dt = θ y: y(1) = y0 e^θ, so dy(1)/dθ = y0 e^θ.
/// let theta = Var::new(-0.5f64, &Device::Cpu)?;
/// let th = theta.clone();
/// let f = with_params(move |_t: f64, y: &Tensor| y.broadcast_mul(th.as_tensor()), vec![theta.clone()]);
/// let y0 = Tensor::new(&[2.0f64], &Device::Cpu)?;
/// let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
/// let sol = odeint_checkpointed(&f, &y0, &[0.0, 1.0], &opts, &CheckpointOptions::default())?;
/// let grads = sol.ys.get(1)?.sum_all()?.backward()?;
/// // The gradient of the discrete solve: exact up to the solve's own error.
/// let g = grads.get(theta.as_tensor()).unwrap().to_scalar::<f64>()?;
/// assert!((g - 2.0 * (-0.5f64).exp()).abs() < 1e-8);
/// # Ok(()) }
/// ```
pub fn odeint_checkpointed<F>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    ck: &CheckpointOptions,
) -> Result<AdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    checkpointed(f, y0, Times::Host(ts.to_vec()), opts, ck)
}

/// Like [`odeint_checkpointed`], with the output times as a 1-D tensor that also receives
/// gradients: `dL/dt_i` for every output time, the initial one included.
///
/// The time gradients are the continuous problem's, by the flow identity (`dL/dt_i =
/// g_iᵀ f(t_i, y_i)` for an output's incoming gradient `g_i`, and `dL/dt_0 = −a(t_0⁺)ᵀ
/// f(t_0, y_0)` with `a(t_0⁺)` the gradient reaching `y0` from the later outputs), as
/// [`crate::odeint_adjoint_with_times`] computes them: they match the derivative of the
/// discrete solve up to the solve's error. One more evaluation of `f` per output time, and no
/// read back.
///
/// # Errors
/// As [`odeint_checkpointed`]; `ts` must be 1-D.
pub fn odeint_checkpointed_with_times<F>(
    f: &F,
    y0: &Tensor,
    ts: &Tensor,
    opts: &SolveOptions,
    ck: &CheckpointOptions,
) -> Result<AdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    checkpointed(f, y0, Times::from_tensor(ts)?, opts, ck)
}

/// Checkpointing replays steps under backprop, which an implicit method's Newton iterations
/// (on the host) cannot be: refuse it before the forward solve rather than in the backward.
fn check_replayable(opts: &SolveOptions) -> Result<()> {
    if opts.method.is_implicit() {
        return Err(SolverError::NotDifferentiable {
            method: opts.method.name(),
        }
        .into());
    }
    Ok(())
}

fn checkpointed<F>(
    f: &F,
    y0: &Tensor,
    times: Times,
    opts: &SolveOptions,
    ck: &CheckpointOptions,
) -> Result<AdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    check_params(f, y0)?;
    check_replayable(opts)?;
    let (sol, trace) = odeint_traced(
        &detached(f),
        &y0.detach(),
        times.host(),
        opts,
        ck.checkpoints,
    )?;
    apply_op(
        f,
        y0,
        times,
        opts,
        sol.ys,
        sol.stats,
        Backward::Replay(trace),
    )
}

/// [`node_solvers::odeint_event`] with checkpointed backprop: solves `dy/dt = f(t, y; θ)` from
/// `y(t0) = y0` until an element of `g(t, y)` crosses zero (or `t_max`), and returns the event
/// time and state, both differentiable, with the gradients backprop through `odeint_event`
/// gives and memory bounded by the stored states.
///
/// The forward solve runs once, detached, locates the event and records its steps
/// ([`node_solvers::locate_event_traced`]); the backward pass replays them, the step that
/// holds the event included (its dense output gives the state at the event), and the event
/// time gets its gradient by the implicit function theorem
/// ([`node_solvers::event_gradients`]), to `y0`, the field's parameters and the event
/// function's own parameters.
///
/// # Shapes
/// `y0`: any shape `S`; `g(t, y)`: any shape with at least one element; result `time` 0-d,
/// `y` shape `S`.
///
/// # Errors
/// Those of [`node_solvers::odeint_event`] and [`odeint_checkpointed`].
#[allow(clippy::too_many_arguments)]
pub fn odeint_event_checkpointed<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    ck: &CheckpointOptions,
) -> Result<AdjointEventSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
    G: EventFunction,
{
    check_params(f, y0)?;
    check_replayable(opts)?;
    let (found, trace) = locate_event_traced(
        &detached(f),
        &y0.detach(),
        t0,
        t_max,
        &detached_event(g),
        opts,
        ev_opts,
        ck.checkpoints,
    )?;
    // The trace may run past the event (to the end of its step): the replay's last stretch
    // then outputs the event state from dense output, as the locating solve did.
    event_solution(f, g, y0, t0, found, |ys, t, stats| {
        let times = Times::Host(vec![t0, t]);
        apply_op(f, y0, times, opts, ys, stats, Backward::Replay(trace))
    })
}

/// [`node_solvers::odeint_events`] with checkpointed backprop: every crossing of zero by an
/// element of `g(t, y)` from `t0` to `t_max`, recorded without stopping, each crossing's time
/// and state differentiable, and the state at `t_max`, with the gradients backprop through
/// `odeint_events` gives and memory bounded by the stored states.
///
/// The forward solve runs once, detached, locates the crossings and records its steps
/// ([`node_solvers::locate_events_traced`]); the backward pass replays them with the crossing
/// times as output times (the dense output of their steps gives the states again), and each
/// crossing time gets its gradient by the implicit function theorem.
///
/// # Shapes
/// As [`crate::odeint_events_adjoint`].
///
/// # Errors
/// Those of [`node_solvers::odeint_events`] and [`odeint_checkpointed`].
#[allow(clippy::too_many_arguments)]
pub fn odeint_events_checkpointed<F, G>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    t_max: f64,
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    ck: &CheckpointOptions,
) -> Result<AdjointEventsSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
    G: EventFunction,
{
    check_params(f, y0)?;
    check_replayable(opts)?;
    let (found, trace) = locate_events_traced(
        &detached(f),
        &y0.detach(),
        t0,
        t_max,
        &detached_event(g),
        opts,
        ev_opts,
        ck.checkpoints,
    )?;
    events_solution(f, g, y0, t0, t_max, found, |ys, times, stats| {
        apply_op(
            f,
            y0,
            Times::Host(times),
            opts,
            ys,
            stats,
            Backward::Replay(trace),
        )
    })
}

impl<F: ParamVectorField> Inner<F> {
    /// Replays the stretches of `trace` backwards: returns `dL/dy(t_0)` through the outputs
    /// after `t_0`, `dL/dθ` (flat) and the replay's counts.
    pub(crate) fn replay_backward(
        &self,
        trace: &StepTrace,
        g: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>, SolverStats)> {
        let ts = &self.ts;
        let last = ts.len() - 1;
        let dir = if ts[last] >= ts[0] { 1.0 } else { -1.0 };
        // The replay reads nothing back: the forward solve checked its values already.
        let opts = self.opts.clone().check_finite(false);
        let mut stats = SolverStats::default();
        // dL/dy at the end of the stretch being replayed, from the stretches after it.
        let mut a: Option<Tensor> = None;
        let mut g_params = ParamGrads::new(&self.params);
        for (k, range) in trace.segments().enumerate().rev() {
            let (t_s, t_e) = (trace.times[range.start], trace.times[range.end]);
            // The outputs this stretch computes: those in (t_s, t_e].
            let inside: Vec<usize> = (1..=last)
                .filter(|&j| (ts[j] - t_s) * dir > 0.0 && (ts[j] - t_e) * dir <= 0.0)
                .collect();
            let mut seg_ts = vec![t_s];
            seg_ts.extend(inside.iter().map(|&j| ts[j]));
            let end_is_output = seg_ts[seg_ts.len() - 1] == t_e;
            if !end_is_output {
                seg_ts.push(t_e);
            }
            let y_s = Var::from_tensor(&trace.states[k].detach())?;
            let grid = &trace.times[range.start..=range.end];
            let replay = odeint(
                &self.f,
                y_s.as_tensor(),
                &seg_ts,
                &opts.clone().step_grid(grid),
            )?;
            stats += replay.stats;
            // Seed: each output's incoming gradient, and `a` on the stretch's end state.
            let mut w: Vec<Tensor> = inside.iter().map(|&j| g.get(j)).collect::<Result<_>>()?;
            if !end_is_output {
                w.push(y_s.as_tensor().zeros_like()?);
            }
            if let Some(a) = &a {
                let end = w.pop().expect("a stretch has an end");
                w.push((end + a)?);
            }
            let outs = replay.ys.narrow(0, 1, seg_ts.len() - 1)?;
            let seed = (outs * Tensor::stack(&w, 0)?)?.sum_all()?;
            let grads = seed.backward()?;
            // Gradients come back with graphs attached: detach, or memory grows with steps.
            a = Some(match grads.get(y_s.as_tensor()) {
                Some(ga) => ga.detach(),
                None => y_s.as_tensor().zeros_like()?,
            });
            g_params.add(&grads)?;
        }
        let a0 = match a {
            Some(a) => a,
            None => g.get(0)?.zeros_like()?,
        };
        Ok((a0, g_params.flat()?, stats))
    }
}

/// The parameters' gradients summed over backward passes (of replayed stretches, of
/// reversible steps).
pub(crate) struct ParamGrads<'a> {
    params: &'a [Var],
    sums: Vec<Option<Tensor>>,
}

impl<'a> ParamGrads<'a> {
    pub(crate) fn new(params: &'a [Var]) -> Self {
        Self {
            params,
            sums: vec![None; params.len()],
        }
    }

    /// Adds the parameters' gradients of one `backward()`, detached (a gradient keeps its
    /// graph otherwise, and memory would grow with the passes).
    pub(crate) fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (acc, p) in self.sums.iter_mut().zip(self.params) {
            if let Some(gp) = grads.get(p.as_tensor()) {
                let gp = gp.detach();
                *acc = Some(match acc.take() {
                    Some(s) => (s + gp)?,
                    None => gp,
                });
            }
        }
        Ok(())
    }

    /// The sums flattened and concatenated in the parameters' order (zeros for a parameter
    /// no pass reached), or `None` without parameters.
    pub(crate) fn flat(self) -> Result<Option<Tensor>> {
        if self.params.is_empty() {
            return Ok(None);
        }
        let flat = self
            .sums
            .into_iter()
            .zip(self.params)
            .map(|(gp, p)| match gp {
                Some(gp) => gp.flatten_all(),
                None => p.as_tensor().zeros_like()?.flatten_all(),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(node_solvers::rk::concat_flat(&flat)?))
    }
}
