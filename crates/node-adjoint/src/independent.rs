//! `odeint_independent_adjoint`: gradients of [`node_solvers::odeint_independent`] (a batch of
//! independent problems, each with its own times and steps) by the adjoint method, as one
//! Candle op.
//!
//! The reverse solve is independent per sample too: `[y, a]` of every sample (`a = ∂L/∂y`,
//! `da/dt = −aᵀ ∂f/∂y`) solved back from each sample's last output time to its first by
//! `odeint_independent`, one interval between output indices at a time, each sample with its
//! own steps, `a` taking each output's gradient at the sample's own output times.
//!
//! `dL/dθ = ∫ Σ_b a_bᵀ ∂f_b/∂θ dt` is shared by the samples, and the steps are not: it cannot
//! be a component of the reverse state (that would take one copy of θ per sample, and a
//! vector–Jacobian product gives only their sum). So it is integrated along the reverse
//! solve with the method's own weights, each step's sum `Σ_b h_b Σ_i b_i a_{i,b}ᵀ ∂f/∂θ` taken
//! from the stage evaluations: each stage's product uses the cotangent `h_b a_b` (so one
//! product gives the batch's sum with every sample's own step), its `∂f/∂y` part divided by
//! `h_b` again. The stage at the step's start, known before the step (its step size was
//! not), takes one more product per step, and a step rejected for some samples one more
//! per stage to take theirs back out ([`BatchField::begin_step`], [`BatchField::end_step`]).

use crate::adjoint::{
    check_not_empty, check_param_list, flat_grad, flat_params, AdjointSolution, AdjointStats,
};
use crate::field::ParamVectorField;
use crate::op::{Precomputed, SolveOp};
use candle_core::{Result, Shape, Tensor, Var};
use node_solvers::{
    independent_event_gradients, locate_independent_event, odeint_independent, BatchEventFunction,
    BatchField, ButcherTableau, EventOptions, IndependentSolution, SampleStats, SolveOptions,
    SolverError, SolverStats, StepSize, TimeInvariant,
};
use std::cell::RefCell;
use std::sync::Arc;

/// A [`BatchField`] whose parameters θ are Candle `Var`s, for [`odeint_independent_adjoint`].
///
/// `params` must return the same `Var`s in the same order on every call; they share the
/// state's dtype.
pub trait ParamBatchField: BatchField {
    /// The parameters θ, in a stable order.
    fn params(&self) -> Vec<Var>;
}

/// A batch closure with the `Var`s it uses ([`with_batch_params`]).
#[derive(Clone)]
pub struct WithBatchParams<F> {
    f: F,
    params: Vec<Var>,
}

/// Attaches the parameters `params` to the batch closure `f` (`t` of shape `[B]`, `y` of
/// shape `[B, …]`), for [`odeint_independent_adjoint`].
pub fn with_batch_params<F>(f: F, params: Vec<Var>) -> WithBatchParams<F>
where
    F: Fn(&Tensor, &Tensor) -> Result<Tensor>,
{
    WithBatchParams { f, params }
}

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> BatchField for WithBatchParams<F> {
    fn eval(&self, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        (self.f)(t, y)
    }
}

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> ParamBatchField for WithBatchParams<F> {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// A time-invariant [`ParamVectorField`] (evaluated at `t = 0`) has its parameters.
impl<F: ParamVectorField> ParamBatchField for TimeInvariant<F> {
    fn params(&self) -> Vec<Var> {
        self.0.params()
    }
}

/// Solves a batch of independent problems like [`node_solvers::odeint_independent`] (the
/// rows of `y0`, each with its own output times in `ts` and its own steps), with gradients by
/// the adjoint method: `loss.backward()` reaches `y0` and every parameter in `f.params()`,
/// in memory independent of the number of steps.
///
/// The forward solve runs detached; the backward pass solves `[y, a]` back in time with
/// `odeint_independent` and `adjoint_opts`, every sample with its own steps, and integrates
/// `dL/dθ` along it (see the module's documentation). The gradients are those of the
/// continuous problem: they match backprop through `odeint_independent` up to the two
/// solves' errors.
///
/// # Shapes
/// `y0`: `[B, …]`; result `ys`: `[T, B, …]`.
///
/// # Errors
/// Those of [`node_solvers::odeint_independent`] for either solve (an explicit adaptive
/// method in both options); parameters of another dtype than `y0`.
pub fn odeint_independent_adjoint<F>(
    f: &F,
    y0: &Tensor,
    ts: &[Vec<f64>],
    opts: &SolveOptions,
    adjoint_opts: &SolveOptions,
) -> Result<AdjointSolution>
where
    F: ParamBatchField + Clone + Send + Sync + 'static,
{
    let tab = reverse_tableau(adjoint_opts)?;
    check_param_list(&f.params(), &sources(f), y0)?;
    check_not_empty(y0)?;
    let sol = odeint_independent(&Detached(f), &y0.detach(), ts, opts)?;
    let b = y0.dim(0)?;
    let ts = if ts.len() == 1 {
        vec![ts[0].clone(); b]
    } else {
        ts.to_vec()
    };
    anchored(f, y0, tab, ts, &sol.ys, counts(&sol), adjoint_opts)
}

fn sources<F: ParamBatchField>(f: &F) -> Vec<Tensor> {
    f.params().iter().map(|p| p.as_tensor().clone()).collect()
}

/// The reverse solve's method, checked now rather than in `backward()`.
fn reverse_tableau(adjoint_opts: &SolveOptions) -> Result<&'static ButcherTableau> {
    adjoint_opts.validate()?;
    match adjoint_opts.method.tableau() {
        Some(tab)
            if tab.is_adaptive()
                && !(tab.is_implicit() || tab.is_rosenbrock() || tab.is_imex())
                && matches!(adjoint_opts.step, StepSize::Adaptive) =>
        {
            Ok(tab)
        }
        _ => Err(SolverError::InvalidOptions(format!(
            "the adjoint's reverse solve takes an explicit Runge–Kutta method with adaptive \
             steps (as odeint_independent), not `{}` with {:?}",
            adjoint_opts.method, adjoint_opts.step
        ))
        .into()),
    }
}

/// The adjoint op on a forward solve already done: `ys` (`[T, B, …]`, detached) at each
/// sample's times `ts`, the op's outputs equal to `ys` and its backward pass the reverse
/// solve.
fn anchored<F>(
    f: &F,
    y0: &Tensor,
    tab: &'static ButcherTableau,
    ts: Vec<Vec<f64>>,
    ys: &Tensor,
    forward: SolverStats,
    adjoint_opts: &SolveOptions,
) -> Result<AdjointSolution>
where
    F: ParamBatchField + Clone + Send + Sync + 'static,
{
    let params = f.params();
    let stats = AdjointStats::default();
    stats.lock().0 = forward;
    let op = SolveOp(Arc::new(Inner {
        f: f.clone(),
        params,
        tab,
        shape: y0.shape().clone(),
        ts,
        ys: ys.detach().contiguous()?,
        opts: adjoint_opts.clone(),
        stats: stats.clone(),
    }));
    let ys = match flat_params(&sources(f))? {
        None => y0.apply_op1(op)?,
        Some(theta) => y0.apply_op2(&theta, op)?,
    };
    Ok(AdjointSolution { ys, stats })
}

/// The result of [`odeint_independent_event_adjoint`].
#[derive(Clone, Debug)]
pub struct AdjointIndependentEventSolution {
    /// Each sample's event time, or the end of its span when it had none.
    pub t: Vec<f64>,
    /// `t` as a `[B]` tensor that carries each event time's gradient (see
    /// [`node_solvers::IndependentEventSolution::time`]).
    pub time: Tensor,
    /// The states at `t`, `[B, …]`; their gradients reach `y0` and the field's parameters
    /// through the adjoint, and include the event times' dependence.
    pub y: Tensor,
    /// Which of each sample's conditions crossed zero; `None` for a sample without an event.
    pub event: Vec<Option<usize>>,
    /// Each sample's steps in the solve that located the events.
    pub samples: Vec<SampleStats>,
    /// Counts of the solve that located the events (the samples' steps summed), then of the
    /// reverse solve.
    pub stats: AdjointStats,
}

/// [`node_solvers::odeint_independent_event`] with gradients by the adjoint method: a batch
/// of independent problems (the rows of `y0`), each solved over its own span with its own
/// steps until its row of `g(t, y)` crosses zero, in memory independent of the number of
/// steps.
///
/// The forward solve runs once, detached, and locates each sample's event; the adjoint op is
/// anchored on the states at each sample's start and event (its reverse solve runs each
/// sample back from its own event time, with its own steps), and each event time gets its
/// gradient by the implicit function theorem
/// ([`node_solvers::independent_event_gradients`]). A sample whose event lies at its start
/// (within the precision of time) keeps `y0` there.
///
/// # Shapes
/// `y0`: `[B, …]`; `g(t, y)`: `[B]` or `[B, …]`; result `time` `[B]`, `y` `[B, …]`.
///
/// # Errors
/// Those of [`node_solvers::odeint_independent_event`] and of
/// [`odeint_independent_adjoint`] (an explicit adaptive method in both options).
pub fn odeint_independent_event_adjoint<F, G>(
    f: &F,
    y0: &Tensor,
    spans: &[[f64; 2]],
    g: &G,
    opts: &SolveOptions,
    ev_opts: &EventOptions,
    adjoint_opts: &SolveOptions,
) -> Result<AdjointIndependentEventSolution>
where
    F: ParamBatchField + Clone + Send + Sync + 'static,
    G: BatchEventFunction,
{
    let tab = reverse_tableau(adjoint_opts)?;
    check_param_list(&f.params(), &sources(f), y0)?;
    check_not_empty(y0)?;
    let found = locate_independent_event(&Detached(f), &y0.detach(), spans, g, opts, ev_opts)?;
    let b = y0.dim(0)?;
    let forward = summed(&found.samples, found.nfe, found.host_reads);
    // Each sample's interval, from its start to its event (or end). A sample stopped at its
    // start (its crossing within the time's precision of it) has none: the op runs it over
    // a few ulps past its start, which leaves its state and gradient as they are to
    // round-off (the field cannot be run on the other samples alone: it may hold a tensor
    // per sample).
    let ts = (0..b)
        .map(|i| {
            let [t0, t_max] = spans[if spans.len() == 1 { 0 } else { i }];
            let t = found.t[i];
            let end = if t == t0 {
                t0 + (t_max - t0).signum() * 4.0 * f64::EPSILON * t0.abs().max(1.0)
            } else {
                t
            };
            vec![t0, end]
        })
        .collect();
    let ys = Tensor::stack(&[y0.detach(), found.y.detach()], 0)?;
    let sol = anchored(f, y0, tab, ts, &ys, forward, adjoint_opts)?;
    let (time, y) = independent_event_gradients(f, g, &found.t, &found.event, &sol.ys.get(1)?)?;
    Ok(AdjointIndependentEventSolution {
        t: found.t,
        time,
        y,
        event: found.event,
        samples: found.samples,
        stats: sol.stats,
    })
}

/// A batch solve's counts as [`SolverStats`]: the samples' steps summed.
fn counts(sol: &IndependentSolution) -> SolverStats {
    summed(&sol.samples, sol.nfe, sol.host_reads)
}

/// A batch solve's counts with its samples' steps summed.
fn summed(samples: &[SampleStats], nfe: usize, host_reads: usize) -> SolverStats {
    SolverStats {
        nfe,
        accepted_steps: samples.iter().map(|s| s.accepted_steps).sum(),
        rejected_steps: samples.iter().map(|s| s.rejected_steps).sum(),
        host_reads,
        ..SolverStats::default()
    }
}

/// The field with its outputs detached: the forward solve keeps no graph.
struct Detached<'a, F>(&'a F);

impl<F: BatchField> BatchField for Detached<'_, F> {
    fn eval(&self, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        Ok(self.0.eval(t, y)?.detach())
    }
}

struct Inner<F> {
    f: F,
    params: Vec<Var>,
    tab: &'static ButcherTableau,
    shape: Shape,
    /// One row of output times per sample.
    ts: Vec<Vec<f64>>,
    ys: Tensor,
    opts: SolveOptions,
    stats: AdjointStats,
}

impl<F: ParamBatchField> Inner<F> {
    fn backward(&self, grad_ys: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let g = grad_ys.detach();
        let b = self.shape.dims()[0];
        let n = self.shape.elem_count() / b;
        let rows = |t: &Tensor| t.reshape((b, n));
        let last = self.ts[0].len() - 1;
        let reverse = Reverse {
            inner: self,
            n,
            step: RefCell::new(None),
            theta: RefCell::new(None),
            extra: std::cell::Cell::new(0),
        };
        let mut state = Tensor::cat(&[rows(&self.ys.get(last)?)?, rows(&g.get(last)?)?], 1)?;
        let mut stats = SolverStats::default();
        for j in (1..=last).rev() {
            let span: Vec<Vec<f64>> = self.ts.iter().map(|r| vec![r[j], r[j - 1]]).collect();
            let sol = odeint_independent(&reverse, &state, &span, &self.opts)?;
            let c = counts(&sol);
            stats.nfe += c.nfe;
            stats.accepted_steps += c.accepted_steps;
            stats.rejected_steps += c.rejected_steps;
            stats.host_reads += c.host_reads;
            let end = sol.ys.get(1)?;
            // `y` re-anchored to the forward solve's value; `a` takes the output's gradient.
            let a = (end.narrow(1, n, n)? + rows(&g.get(j - 1)?)?)?;
            state = Tensor::cat(&[rows(&self.ys.get(j - 1)?)?, a], 1)?;
        }
        stats.nfe += reverse.extra.get();
        self.stats.lock().1 = stats;
        let gy0 = state.narrow(1, n, n)?.reshape(self.shape.clone())?;
        let gtheta = if self.params.is_empty() {
            None
        } else {
            // `∫_{t0}^{T} aᵀ ∂f/∂θ dt` is minus what the reverse steps summed (their `h` < 0
            // for a forward solve).
            Some(match reverse.theta.into_inner() {
                Some(sum) => sum.neg()?,
                None => {
                    let p: usize = self.params.iter().map(|v| v.elem_count()).sum();
                    Tensor::zeros(p, self.ys.dtype(), self.ys.device())?
                }
            })
        };
        Ok((gy0, gtheta))
    }

    /// One vector–Jacobian product at `(t, y)` with the cotangent `w_b a_b` (`w` a `[B]`
    /// column): `f(t, y)` detached, `(w a)ᵀ ∂f/∂y` flat per sample `[B, n]`, and
    /// `Σ_b w_b a_bᵀ ∂f/∂θ` flat (`None` without parameters).
    fn vjp(
        &self,
        t: &Tensor,
        y: &Tensor,
        a: &Tensor,
        w: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let b = self.shape.dims()[0];
        let y = Var::from_tensor(&y.reshape(self.shape.clone())?)?;
        let out = self.f.eval(t, y.as_tensor())?;
        let cot = a.broadcast_mul(w)?.reshape(out.shape())?;
        let grads = (&out * cot)?.sum_all()?.backward()?;
        let gy = flat_grad(&grads, y.as_tensor())?.reshape((b, ()))?;
        let gtheta = if self.params.is_empty() {
            None
        } else {
            let parts = self
                .params
                .iter()
                .map(|p| flat_grad(&grads, p.as_tensor()))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        };
        Ok((out.detach().reshape((b, ()))?, gy, gtheta))
    }
}

/// The stages of the reverse step under way: the step sizes, and each evaluated stage's
/// inputs and parameter product (weighted by `h_b`).
struct StepStages {
    t: Vec<f64>,
    h: Vec<f64>,
    start: Tensor,
    stages: Vec<(Tensor, Tensor, Option<Tensor>)>,
}

/// The reverse field on `[y, a]` (`[B, 2n]`): `dy/dt = f`, `da/dt = −aᵀ ∂f/∂y`; and the
/// parameter integral summed over the accepted steps.
struct Reverse<'a, F> {
    inner: &'a Inner<F>,
    n: usize,
    step: RefCell<Option<StepStages>>,
    theta: RefCell<Option<Tensor>>,
    /// The products taken for the parameter integral alone (the steps' first stages, the
    /// rejected samples' stages): evaluations of the field besides the solves'.
    extra: std::cell::Cell<usize>,
}

impl<F: ParamBatchField> Reverse<'_, F> {
    fn column(&self, v: &[f64], like: &Tensor) -> Result<Tensor> {
        Tensor::from_slice(v, (v.len(), 1), like.device())?.to_dtype(like.dtype())
    }

    fn times(&self, t: &[f64], like: &Tensor) -> Result<Tensor> {
        Tensor::from_slice(t, t.len(), like.device())?.to_dtype(like.dtype())
    }

    /// `Σ_b w_b a_bᵀ ∂f/∂θ` at the state `[y, a]` and times `t`.
    fn theta_part(&self, t: &Tensor, state: &Tensor, w: &[f64]) -> Result<Option<Tensor>> {
        let n = self.n;
        let w = self.column(w, state)?;
        self.extra.set(self.extra.get() + 1);
        let (_, _, gt) = self
            .inner
            .vjp(t, &state.narrow(1, 0, n)?, &state.narrow(1, n, n)?, &w)?;
        Ok(gt)
    }

    fn add_theta(&self, term: Tensor, weight: f64) -> Result<()> {
        let mut acc = self.theta.borrow_mut();
        let term = term.affine(weight, 0.0)?;
        *acc = Some(match acc.take() {
            Some(a) => (a + term)?,
            None => term,
        });
        Ok(())
    }
}

impl<F: ParamBatchField> BatchField for Reverse<'_, F> {
    fn eval(&self, t: &Tensor, state: &Tensor) -> Result<Tensor> {
        let n = self.n;
        let (y, a) = (state.narrow(1, 0, n)?, state.narrow(1, n, n)?);
        let mut step = self.step.borrow_mut();
        // Inside a step: the cotangent `h_b a_b` (zero for the samples that have finished);
        // outside (the first step's trial, the next step's first stage): `a_b`.
        let w: Vec<f64> = match step.as_ref() {
            Some(s) => s.h.clone(),
            None => vec![1.0; a.dim(0)?],
        };
        let wt = self.column(&w, state)?;
        let (fy, gy, gtheta) = self.inner.vjp(t, &y, &a, &wt)?;
        let divisor: Vec<f64> = w.iter().map(|&x| if x == 0.0 { 1.0 } else { x }).collect();
        let da = gy.broadcast_div(&self.column(&divisor, state)?)?.neg()?;
        if let Some(s) = step.as_mut() {
            s.stages.push((t.clone(), state.clone(), gtheta));
        }
        Tensor::cat(&[fy, da], 1)
    }

    fn begin_step(&self, t: &[f64], h: &[f64], y: &Tensor) -> Result<()> {
        *self.step.borrow_mut() = Some(StepStages {
            t: t.to_vec(),
            h: h.to_vec(),
            start: y.clone(),
            stages: Vec::new(),
        });
        Ok(())
    }

    fn end_step(&self, accepted: &[bool]) -> Result<()> {
        let Some(s) = self.step.borrow_mut().take() else {
            return Ok(());
        };
        if self.inner.params.is_empty() || !accepted.iter().any(|&a| a) {
            return Ok(());
        }
        let tab = self.inner.tab;
        // The first stage, at the step's start: one product with the accepted samples'
        // `h_b`.
        let kept: Vec<f64> =
            s.h.iter()
                .zip(accepted)
                .map(|(&h, &a)| if a { h } else { 0.0 })
                .collect();
        let t0 = self.times(&s.t, &s.start)?;
        if tab.b[0] != 0.0 {
            if let Some(gt) = self.theta_part(&t0, &s.start, &kept)? {
                self.add_theta(gt, tab.b[0])?;
            }
        }
        // The other stages' products, weighted by every active sample's `h_b`; those of the
        // rejected samples taken back out.
        let rejected: Vec<f64> =
            s.h.iter()
                .zip(accepted)
                .map(|(&h, &a)| if a { 0.0 } else { h })
                .collect();
        let any_rejected = rejected.iter().any(|&h| h != 0.0);
        for (i, (t, state, gt)) in s.stages.into_iter().enumerate() {
            let bi = tab.b[i + 1];
            if bi == 0.0 {
                continue;
            }
            if let Some(gt) = gt {
                self.add_theta(gt, bi)?;
            }
            if any_rejected {
                if let Some(back) = self.theta_part(&t, &state, &rejected)? {
                    self.add_theta(back, -bi)?;
                }
            }
        }
        Ok(())
    }
}

impl<F: ParamBatchField + Send + Sync + 'static> Precomputed for Inner<F> {
    const NAME: &'static str = "independent-adjoint";
    fn solution(&self) -> &Tensor {
        &self.ys
    }
    fn gradients(
        &self,
        grad: &Tensor,
        _times: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let (gy0, gtheta) = self.backward(grad)?;
        Ok((gy0, gtheta, None))
    }
}
