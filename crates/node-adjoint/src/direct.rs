//! `odeint_direct`: backprop through the solver's operations, as an op, for fields with
//! [`crate::TensorParam`]s.
//!
//! Plain backprop through [`node_solvers::odeint`] reaches every `Var` the field uses, but a
//! [`crate::TensorParam`] is a leaf copy of its source: the gradient would stop there. This op
//! runs the same solve with the graph of every step (on a leaf copy of `y0`), and its backward
//! pass backpropagates through that graph and hands the copies' gradients to their sources.
//! The gradients are backprop's, and so is the memory.

use crate::adjoint::{apply_op, check_params, Backward, Inner, Times};
use crate::checkpoint::ParamGrads;
use crate::field::ParamVectorField;
use crate::AdjointSolution;
use candle_core::{Result, Tensor, Var};
use node_solvers::{odeint, SolveOptions, SolverStats};

/// Solves `dy/dt = f(t, y; θ)` from `y(ts[0]) = y0` like [`node_solvers::odeint`], with
/// backprop's gradients (through the solver's operations, step-size decisions not
/// differentiated), delivered to `y0` and to every entry of [`ParamVectorField::param_sources`]:
/// the `Var`s the caller trains, and the sources of the field's [`crate::TensorParam`]s,
/// which plain backprop through `odeint` does not reach. For a field without
/// `TensorParam`s it gives what `odeint` gives, with one more copy of `y0`.
///
/// Memory is backprop's: the graph of every step, kept until the outputs are dropped.
///
/// # Shapes
/// `y0`: any shape `S`; result `ys`: `[ts.len(), ...S]`.
///
/// # Errors
/// Those of [`node_solvers::odeint`]; parameters of another dtype than `y0`, or sources that
/// do not match them.
pub fn odeint_direct<F>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
) -> Result<AdjointSolution>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    check_params(f, y0)?;
    let leaf = Var::from_tensor(&y0.detach())?;
    let sol = odeint(f, leaf.as_tensor(), ts, opts)?;
    let ys = sol.ys.detach();
    let backward = Backward::Graph {
        ys: sol.ys,
        y0: leaf,
    };
    apply_op(
        f,
        y0,
        Times::Host(ts.to_vec()),
        opts,
        ys,
        sol.stats,
        backward,
    )
}

impl<F: ParamVectorField> Inner<F> {
    /// Backprop through the kept graph `ys` from the leaf `y0`: returns `dL/dy(t_0)` through
    /// the outputs after `t_0`, `dL/dθ` (flat) and the backward pass's counts (none: nothing
    /// is evaluated again).
    pub(crate) fn graph_backward(
        &self,
        ys: &Tensor,
        y0: &Var,
        g: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>, SolverStats)> {
        let mut g_params = ParamGrads::new(&self.params);
        let n = self.ts.len();
        let a0 = if n == 1 {
            y0.as_tensor().zeros_like()?
        } else {
            // The first output is `y0` itself: its gradient is added by the caller.
            let root = (ys.narrow(0, 1, n - 1)? * g.narrow(0, 1, n - 1)?)?.sum_all()?;
            let grads = root.backward()?;
            g_params.add(&grads)?;
            match grads.get(y0.as_tensor()) {
                Some(a) => a.detach(),
                None => y0.as_tensor().zeros_like()?,
            }
        };
        Ok((a0, g_params.flat()?, SolverStats::default()))
    }
}
