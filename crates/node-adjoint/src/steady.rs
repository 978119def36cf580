//! `odeint_steady_state_adjoint`: a steady state differentiated by the implicit function
//! theorem (diffrax's `ImplicitAdjoint`; the backward pass of an equilibrium model).
//!
//! The steady state `y*` solves `f(t*, y*; θ) = 0`, so `J dy*/dθ + ∂f/∂θ = 0` with
//! `J = ∂f/∂y` at `y*`, and a loss with gradient `g = dL/dy*` has
//! `dL/dθ = λᵀ ∂f/∂θ` where `Jᵀ λ = −g`. The backward pass finds `λ` without forming `J`:
//! it is the steady state of the linear adjoint dynamics `dλ/dt = Jᵀ λ + g`, which come to
//! rest wherever the forward dynamics do (a stable steady state has `J`'s eigenvalues in the
//! left half-plane, and `Jᵀ` has the same ones). Each evaluation is one vector–Jacobian
//! product of `f` at `y*`; `dL/dθ` is one more. Memory is that of one evaluation, however
//! long either solve runs. `y*` does not depend on the start `y0` (nearby starts come to
//! rest at the same point): its gradient is zero.

use crate::adjoint::{check_params, detached, flat_grad, flat_params, GradientStats};
use crate::field::ParamVectorField;
use crate::op::{Precomputed, SolveOp};
use candle_core::{Result, Tensor, Var};
use node_solvers::{
    odeint_steady_state, SolveOptions, SolverError, SolverStats, SteadyStateOptions, StepSize,
};
use std::sync::Arc;

/// Forward and backward counts of [`odeint_steady_state_adjoint`]: the backward ones are
/// the adjoint's steady-state solve and the final product.
pub type SteadyStateAdjointStats = GradientStats<SolverStats>;

/// The result of [`odeint_steady_state_adjoint`].
#[derive(Clone, Debug)]
pub struct SteadyStateAdjointSolution {
    /// When the field's size fell to its tolerance.
    pub t: f64,
    /// The steady state, differentiable with respect to the field's parameters.
    pub y: Tensor,
    /// Counts, the backward ones filled in by `backward()`.
    pub stats: SteadyStateAdjointStats,
}

/// [`node_solvers::odeint_steady_state`] with gradients by the implicit function theorem:
/// `loss.backward()` reaches every parameter of `f` (and, for a [`crate::TensorParam`],
/// the graph behind it) through `dL/dθ = λᵀ ∂f/∂θ`, `λ` the steady state of
/// `dλ/dt = Jᵀλ + dL/dy*` solved with the same options (see the module's notes). `y0` gets
/// a zero gradient. The forward solve builds no graph.
///
/// The gradient is that of the exact steady state (the root of `f`), not of the solve's
/// approximation of it: the two differ by about the stopping tolerance. The field must not
/// depend on `t` near the steady state (it is evaluated at the stopping time).
///
/// ```
/// # use candle_core::{Device, Tensor, Var};
/// # use node_adjoint::{odeint_steady_state_adjoint, with_params};
/// # use node_solvers::{SolveOptions, SteadyStateOptions};
/// # fn main() -> candle_core::Result<()> {
/// // dy/dt = a − b y comes to rest at y* = a / b: dy*/da = 1/b, dy*/db = −a/b².
/// let theta = Var::new(&[2.0f64, 4.0], &Device::Cpu)?;
/// let th = theta.clone();
/// let f = with_params(
///     move |_t: f64, y: &Tensor| {
///         let (a, b) = (th.as_tensor().narrow(0, 0, 1)?, th.as_tensor().narrow(0, 1, 1)?);
///         a - y.mul(&b)?
///     },
///     vec![theta.clone()],
/// );
/// let y0 = Tensor::new(&[0.0f64], &Device::Cpu)?;
/// let opts = SolveOptions::default();
/// let sol = odeint_steady_state_adjoint(&f, &y0, 0.0, &opts, &SteadyStateOptions::new(100.0))?;
/// let g = sol.y.sum_all()?.backward()?.get(&theta).unwrap().to_vec1::<f64>()?;
/// assert!((g[0] - 0.25).abs() < 1e-6 && (g[1] + 0.125).abs() < 1e-6);
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`node_solvers::odeint_steady_state`], and parameters of another dtype than `y0`;
/// during `backward()`, [`SolverError::NoSteadyState`] when the adjoint dynamics do not come
/// to rest by the same `t_max` (an unstable steady state).
pub fn odeint_steady_state_adjoint<F>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    opts: &SolveOptions,
    ss: &SteadyStateOptions,
) -> Result<SteadyStateAdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    check_params(f, y0)?;
    let sol = odeint_steady_state(&detached(f), &y0.detach(), t0, opts, ss)?;
    let stats = SteadyStateAdjointStats::default();
    stats.lock().0 = sol.stats;
    let op = SolveOp(Arc::new(Inner {
        f: f.clone(),
        t: sol.t,
        y: sol.y.detach().contiguous()?,
        opts: adjoint_options(opts, t0),
        span: ss.t_max - t0,
        ss: ss.clone(),
        stats: stats.clone(),
    }));
    let y = match flat_params(&f.param_sources())? {
        None => y0.apply_op1(op)?,
        Some(theta) => y0.apply_op2(&theta, op)?,
    };
    Ok(SteadyStateAdjointSolution { t: sol.t, y, stats })
}

/// The forward options for the adjoint's solve, which runs from 0: a step grid shifted by
/// `−t0`, and no step or jump times (they belong to the field's time, and the adjoint
/// dynamics are those at the steady state, constant in time).
fn adjoint_options(opts: &SolveOptions, t0: f64) -> SolveOptions {
    let mut o = opts.clone();
    o.first_step = None;
    o.step_ts = Arc::from([]);
    o.jump_ts = Arc::from([]);
    if let StepSize::Grid(grid) = &opts.step {
        o.step = StepSize::Grid(grid.iter().map(|t| t - t0).collect());
    }
    o
}

struct Inner<F> {
    f: F,
    /// Where the forward solve stopped, and the steady state there.
    t: f64,
    y: Tensor,
    /// The options of the adjoint's solve.
    opts: SolveOptions,
    /// `t_max − t0` of the forward solve: the adjoint's solve gets as long, in the same
    /// direction.
    span: f64,
    ss: SteadyStateOptions,
    stats: SteadyStateAdjointStats,
}

impl<F: ParamVectorField> Inner<F> {
    /// `f(t*, y*)` with `y*` a leaf, and the gradients of `(f · v).sum()`.
    fn vjp(&self, v: &Tensor) -> Result<(Var, candle_core::backprop::GradStore)> {
        let y = Var::from_tensor(&self.y)?;
        let fy = self.f.eval(self.t, y.as_tensor())?;
        if fy.shape() != self.y.shape() {
            return Err(SolverError::ShapeMismatch {
                expected: self.y.shape().clone(),
                got: fy.shape().clone(),
                t: self.t,
            }
            .into());
        }
        let grads = (fy * v)?.sum_all()?.backward()?;
        Ok((y, grads))
    }

    fn backward(&self, g: &Tensor) -> Result<Option<Tensor>> {
        let params = self.f.params();
        if params.is_empty() {
            return Ok(None);
        }
        // λ is linear in g: solved for g scaled to unit RMS, so that the stopping test's
        // absolute tolerance means the same whatever the loss's scale (a mean over a batch
        // makes g small, and λ = 0 would pass the test at once).
        let scale = g
            .detach()
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .mean_all()?
            .sqrt()?
            .to_scalar::<f64>()?;
        if !scale.is_finite() {
            return Err(SolverError::NonFinite { t: self.t }.into());
        }
        if scale == 0.0 {
            let zeros: Vec<Tensor> = params
                .iter()
                .map(|p| p.as_tensor().zeros_like()?.flatten_all())
                .collect::<Result<_>>()?;
            return Ok(Some(Tensor::cat(&zeros, 0)?));
        }
        let g = g.detach().affine(1.0 / scale, 0.0)?;
        // dλ/dt = Jᵀλ + g, from λ = 0 (its own time axis, as long as the forward one).
        let adjoint = |_t: f64, lambda: &Tensor| -> Result<Tensor> {
            let (y, grads) = self.vjp(lambda)?;
            flat_grad(&grads, y.as_tensor())?
                .reshape(self.y.shape())?
                .add(&g)
        };
        // In the forward solve's direction: backwards in time a steady state is a repeller
        // (`J`'s eigenvalues in the right half-plane), where `dλ/dt = Jᵀλ + g` comes to rest
        // backwards too, at the same `λ`.
        let ss = SteadyStateOptions {
            t_max: self.span,
            ..self.ss.clone()
        };
        let lam = odeint_steady_state(&adjoint, &g.zeros_like()?, 0.0, &self.opts, &ss)?;
        let mut stats = lam.stats;
        let (_, grads) = self.vjp(&lam.y.affine(scale, 0.0)?)?;
        stats.nfe += 1;
        self.stats.lock().1 = stats;
        let flat: Vec<Tensor> = params
            .iter()
            .map(|p| flat_grad(&grads, p.as_tensor()))
            .collect::<Result<_>>()?;
        Ok(Some(Tensor::cat(&flat, 0)?))
    }
}

impl<F: ParamVectorField + Send + Sync + 'static> Precomputed for Inner<F> {
    const NAME: &'static str = "odeint-steady-state-adjoint";
    fn solution(&self) -> &Tensor {
        &self.y
    }
    fn gradients(
        &self,
        grad: &Tensor,
        _: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let gtheta = self.backward(grad)?;
        Ok((grad.zeros_like()?, gtheta, None))
    }
}
