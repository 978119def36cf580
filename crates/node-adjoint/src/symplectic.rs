//! `odeint_symplectic_adjoint`: backprop through a symplectic solve
//! ([`node_solvers::odeint_symplectic`]) walking its steps back instead of storing them.
//!
//! A splitting step is a sequence of drifts `q ← q + c h v(t, p)` and kicks
//! `p ← p + d h a(t, q)`. Each is invertible in closed form, whatever the method (the
//! semi-implicit Euler included): a drift leaves `p` as it was, so `q = q' − c h v(t, p)`,
//! and a kick leaves `q`, so `p = p' − d h a(t, q)`. The backward pass walks the substeps
//! back from the last state, and carries the adjoints `(ā_q, ā_p)` through each:
//!
//! ```text
//! drift:  q = q' − c h v(t, p),   ā_p += c h (∂v/∂p)ᵀ ā_q,   ḡ_θ += c h (∂v/∂θ)ᵀ ā_q
//! kick:   p = p' − d h a(t, q),   ā_q += d h (∂a/∂q)ᵀ ā_p,   ḡ_θ += d h (∂a/∂θ)ᵀ ā_p
//! ```
//!
//! The function of each substep is evaluated once, on a fresh `Var`: its value inverts the
//! substep, and Candle autograd gives its vector–Jacobian product. These are the operations
//! of the forward solve, so the gradient is that of the discrete solve (backprop's) up to
//! the round-off of the reconstruction, and memory holds one substep's graph. Consecutive
//! kicks share the force (no drift between them moved `q`), as in the forward solve; their
//! products are taken together in one backward pass. At each output time the walk restarts
//! from the stored forward state, so the round-off of one interval does not carry into the
//! next.
//!
//! Matsubara, Miyatake & Yaguchi ("Symplectic adjoint method for exact gradient of neural
//! ODE with minimal memory", NeurIPS 2021) get exact gradients with checkpoints and a
//! symplectic integrator of the adjoint system; for separable systems with explicit
//! splitting methods the steps invert themselves and no checkpoint is needed.

use crate::adjoint::GradientStats;
use crate::adjoint::{check_param_list, flat_params, VjpSeed};
use crate::checkpoint::ParamGrads;
use crate::field::WithParams;
use crate::op::{Precomputed, SolveOp};
use candle_core::{Result, Shape, Tensor, Var};
use node_solvers::{
    odeint_symplectic, Separable, SeparableField, SolverError, Substep, SymplecticOptions,
    SymplecticStats,
};
use std::sync::Arc;

/// A [`SeparableField`] `dq/dt = v(t, p; θ)`, `dp/dt = a(t, q; θ)` whose parameters θ are
/// Candle `Var`s, for [`odeint_symplectic_adjoint`]: the same contract as
/// [`crate::ParamVectorField`] (a stable order, the state's dtype, [`crate::TensorParam`]s
/// through `param_sources`, which [`WithParams::with_tensor_params`] sets).
pub trait ParamSeparableField: SeparableField {
    /// The parameters θ of the velocity and the force, in a stable order.
    fn params(&self) -> Vec<Var>;

    /// Where each parameter's gradient goes (see
    /// [`crate::ParamVectorField::param_sources`]); the default is the parameters.
    fn param_sources(&self) -> Vec<Tensor> {
        self.params()
            .iter()
            .map(|p| p.as_tensor().clone())
            .collect()
    }
}

/// Makes a [`ParamSeparableField`] of a velocity and a force closure and the `Var`s they use:
/// `with_separable_params(velocity, force, vec![w, k])`.
pub fn with_separable_params<V, A>(
    velocity: V,
    force: A,
    params: Vec<Var>,
) -> WithParams<Separable<V, A>>
where
    V: Fn(f64, &Tensor) -> Result<Tensor>,
    A: Fn(f64, &Tensor) -> Result<Tensor>,
{
    WithParams::from_parts(Separable { velocity, force }, params, Vec::new())
}

impl<V, A> SeparableField for WithParams<Separable<V, A>>
where
    V: Fn(f64, &Tensor) -> Result<Tensor>,
    A: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn velocity(&self, t: f64, p: &Tensor) -> Result<Tensor> {
        self.inner().velocity(t, p)
    }
    fn force(&self, t: f64, q: &Tensor) -> Result<Tensor> {
        self.inner().force(t, q)
    }
}

impl<V, A> ParamSeparableField for WithParams<Separable<V, A>>
where
    V: Fn(f64, &Tensor) -> Result<Tensor>,
    A: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn params(&self) -> Vec<Var> {
        self.all_params()
    }
    fn param_sources(&self) -> Vec<Tensor> {
        self.all_sources()
    }
}

/// Forward and backward counts of [`odeint_symplectic_adjoint`]: the walk back takes the
/// forward solve's steps and evaluations, each evaluation also a backward pass through it.
pub type SymplecticAdjointStats = GradientStats<SymplecticStats>;

/// The result of [`odeint_symplectic_adjoint`].
#[derive(Clone, Debug)]
pub struct SymplecticAdjointSolution {
    /// The positions at the output times, `[ts.len(), ...q0.shape]`, differentiable with
    /// respect to `q0`, `p0` and the parameters.
    pub qs: Tensor,
    /// The momenta at the output times, `[ts.len(), ...p0.shape]`, likewise.
    pub ps: Tensor,
    /// Forward and backward counts.
    pub stats: SymplecticAdjointStats,
}

/// Solves `dq/dt = v(t, p; θ)`, `dp/dt = a(t, q; θ)` like [`node_solvers::odeint_symplectic`],
/// as an op whose backward walks the steps back (see the [module](self)): the gradient of
/// the discrete solve, backprop's up to round-off, for `q0`, `p0` and every parameter in
/// `field.params()`, with memory that does not grow with the steps.
///
/// Backprop straight through [`node_solvers::odeint_symplectic`] keeps every substep's graph:
/// memory grows with the steps. Here the forward solve keeps only the outputs, and the
/// backward pass evaluates each function once more, as many times as the forward solve did,
/// each with a backward pass through it. The reconstruction runs the dynamics backwards:
/// its round-off grows as the forward solve's sensitivity to its initial state does, which
/// for chaotic dynamics over long intervals can be fast (output times in between restart it
/// from the stored states).
///
/// The field must be deterministic: the backward pass evaluates it again.
///
/// # Shapes
/// As [`node_solvers::odeint_symplectic`]: `q0` and `p0` of one shape `S`; `qs` and `ps`
/// `[ts.len(), ...S]`. The parameters share the state's dtype.
///
/// # Errors
/// Those of [`node_solvers::odeint_symplectic`]; `InvalidOptions` for parameters of another
/// dtype than the state or that do not match their sources. Errors of the field surface
/// from `backward()`.
///
/// # Example
/// A spring `q'' = −k q` from `(1, 0)`: `q(t) = cos(√k t)`, so
/// `∂q(t)/∂k = −sin(√k t) t / (2√k)`.
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use node_adjoint::{odeint_symplectic_adjoint, with_separable_params};
/// use node_solvers::{SymplecticMethod, SymplecticOptions};
/// # fn main() -> candle_core::Result<()> {
/// let dev = Device::Cpu;
/// let k = Var::new(&[4.0f64], &dev)?;
/// let kt = k.as_tensor().clone();
/// let spring = with_separable_params(
///     |_t: f64, p: &Tensor| Ok(p.clone()),
///     move |_t: f64, q: &Tensor| q.mul(&kt)?.neg(),
///     vec![k.clone()],
/// );
/// let (q0, p0) = (Tensor::new(&[1.0f64], &dev)?, Tensor::new(&[0.0f64], &dev)?);
/// let opts = SymplecticOptions::new(1e-3).method(SymplecticMethod::Yoshida4);
/// let sol = odeint_symplectic_adjoint(&spring, &q0, &p0, &[0.0, 1.0], &opts)?;
/// let grads = sol.qs.get(1)?.sum_all()?.backward()?;
/// let dk = grads.get(k.as_tensor()).unwrap().to_vec1::<f64>()?[0];
/// assert!((dk + 2f64.sin() / 4.0).abs() < 1e-9);
/// # Ok(()) }
/// ```
pub fn odeint_symplectic_adjoint<F>(
    field: &F,
    q0: &Tensor,
    p0: &Tensor,
    ts: &[f64],
    opts: &SymplecticOptions,
) -> Result<SymplecticAdjointSolution>
where
    F: ParamSeparableField + Clone + Send + Sync + 'static,
{
    let params = field.params();
    let sources = field.param_sources();
    check_param_list(&params, &sources, q0)?;
    // The forward solve builds no graph; it checks the options, shapes and times.
    let sol = odeint_symplectic(&Detached(field), &q0.detach(), &p0.detach(), ts, opts)?;
    let stats = SymplecticAdjointStats::default();
    stats.lock().0 = sol.stats;
    let op = SolveOp(Arc::new(Inner {
        field: field.clone(),
        params,
        ts: ts.to_vec(),
        counts: opts.step_counts(ts)?,
        opts: opts.clone(),
        // `[T, 2, ...S]`: the op has one input and one output.
        states: Tensor::stack(&[&sol.qs, &sol.ps], 1)?.contiguous()?,
        stats: stats.clone(),
    }));
    let y0 = Tensor::stack(&[q0, p0], 0)?;
    let ys = match flat_params(&sources)? {
        None => y0.apply_op1(op)?,
        Some(theta) => y0.apply_op2(&theta, op)?,
    };
    Ok(SymplecticAdjointSolution {
        qs: ys.narrow(1, 0, 1)?.squeeze(1)?,
        ps: ys.narrow(1, 1, 1)?.squeeze(1)?,
        stats,
    })
}

/// `field` with its outputs detached: the forward solve builds no graph.
struct Detached<'a, F: ?Sized>(&'a F);

impl<F: SeparableField + ?Sized> SeparableField for Detached<'_, F> {
    fn velocity(&self, t: f64, p: &Tensor) -> Result<Tensor> {
        self.0.velocity(t, p).map(|v| v.detach())
    }
    fn force(&self, t: f64, q: &Tensor) -> Result<Tensor> {
        self.0.force(t, q).map(|a| a.detach())
    }
}

struct Inner<F> {
    field: F,
    params: Vec<Var>,
    ts: Vec<f64>,
    counts: Vec<usize>,
    opts: SymplecticOptions,
    states: Tensor,
    stats: SymplecticAdjointStats,
}

/// A force evaluated on a leaf `q`, with its graph, shared by consecutive kicks, and the sum
/// of `d h ā_p` over them: the seed of its one backward pass.
struct Force {
    q: Var,
    a: Tensor,
    seed: Tensor,
}

/// `f`'s output checked against the state's shape.
fn checked(out: Tensor, shape: &Shape, what: &str, t: f64) -> Result<Tensor> {
    if out.shape() != shape {
        return Err(SolverError::OutputMismatch(format!(
            "the {what} has shape {:?}, expected {:?} (at t = {t})",
            out.dims(),
            shape.dims()
        ))
        .into());
    }
    Ok(out)
}

impl<F: ParamSeparableField> Inner<F> {
    /// `dL/d[q0, p0]` (`[2, ...S]`) and `dL/dθ` (flat), from `dL/d[qs, ps]` (`[T, 2, ...S]`).
    fn backward(&self, grad: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let g = grad.detach();
        let ts = &self.ts;
        let last = ts.len() - 1;
        let at = |j: usize| -> Result<(Tensor, Tensor, Tensor, Tensor)> {
            let (s, gj) = (self.states.get(j)?, g.get(j)?);
            Ok((s.get(0)?, s.get(1)?, gj.get(0)?, gj.get(1)?))
        };
        let (mut q, mut p, mut a_q, mut a_p) = at(last)?;
        let shape = q.shape().clone();
        let mut grads = ParamGrads::new(&self.params);
        let mut stats = SymplecticStats::default();
        // The force of the kicks walked back since the last drift.
        let mut force: Option<Force> = None;
        for j in (0..last).rev() {
            let (n, span) = (self.counts[j], ts[j + 1] - ts[j]);
            let h = span / n as f64;
            for i in (0..n).rev() {
                let t = ts[j] + span * (i as f64 / n as f64);
                for (op, time) in self.opts.method.timed_substeps(t, h).into_iter().rev() {
                    match op {
                        Substep::Kick(d) => {
                            let f = match force.take() {
                                Some(mut f) => {
                                    f.seed = (f.seed + a_p.affine(d * h, 0.0)?)?;
                                    f
                                }
                                None => {
                                    let qv = Var::from_tensor(&q)?;
                                    let a = self.field.force(time, qv.as_tensor())?;
                                    stats.force_evals += 1;
                                    let a = checked(a, &shape, "force", time)?;
                                    let seed = a_p.affine(d * h, 0.0)?;
                                    Force { q: qv, a, seed }
                                }
                            };
                            p = (p - f.a.detach().affine(d * h, 0.0)?)?;
                            force = Some(f);
                        }
                        Substep::Drift(c) => {
                            if let Some(f) = force.take() {
                                a_q = (a_q + self.force_vjp(f, &mut grads)?)?;
                            }
                            let pv = Var::from_tensor(&p)?;
                            let v = self.field.velocity(time, pv.as_tensor())?;
                            stats.velocity_evals += 1;
                            let v = checked(v, &shape, "velocity", time)?;
                            // A root whose gradient with respect to `v` is `c h ā_q`.
                            let back = v.apply_op2(&a_q.affine(-c * h, 0.0)?, VjpSeed)?;
                            let vjp = back.backward()?;
                            grads.add(&vjp)?;
                            if let Some(gp) = vjp.get(pv.as_tensor()) {
                                a_p = (a_p + gp.detach())?;
                            }
                            q = (q - v.detach().affine(c * h, 0.0)?)?;
                        }
                    }
                }
                stats.steps += 1;
            }
            // At `ts[j]`: its output's own gradient, and the stored state in place of the
            // walked-back one.
            let (qj, pj, gq, gp) = at(j)?;
            (q, p) = (qj, pj);
            a_q = (a_q + gq)?;
            a_p = (a_p + gp)?;
        }
        if let Some(f) = force.take() {
            a_q = (a_q + self.force_vjp(f, &mut grads)?)?;
        }
        self.stats.lock().1 = stats;
        Ok((Tensor::stack(&[&a_q, &a_p], 0)?, grads.flat()?))
    }

    /// The kicks' products with a shared force: `(∂a/∂q)ᵀ seed` (returned) and
    /// `(∂a/∂θ)ᵀ seed` (added to `grads`).
    fn force_vjp(&self, f: Force, grads: &mut ParamGrads<'_>) -> Result<Tensor> {
        let vjp = f.a.apply_op2(&f.seed.neg()?, VjpSeed)?.backward()?;
        grads.add(&vjp)?;
        match vjp.get(f.q.as_tensor()) {
            Some(gq) => Ok(gq.detach()),
            None => f.seed.zeros_like(),
        }
    }
}

impl<F: ParamSeparableField + Send + Sync + 'static> Precomputed for Inner<F> {
    const NAME: &'static str = "odeint-symplectic-adjoint";
    fn solution(&self) -> &Tensor {
        &self.states
    }
    fn gradients(
        &self,
        grad: &Tensor,
        _: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let (gy0, gtheta) = self.backward(grad)?;
        Ok((gy0, gtheta, None))
    }
}
