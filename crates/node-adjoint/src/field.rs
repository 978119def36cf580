//! Vector fields that declare their parameters, so the adjoint can route gradients to them.

use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use node_solvers::{VectorField, WithJacobian};

/// A [`VectorField`] `f(t, y; θ)` whose parameters θ are Candle `Var`s.
///
/// `params` must return the same `Var`s in the same order on every call (the adjoint
/// concatenates them into one flat vector). All parameters share the state's dtype. Tensors
/// the field captures that are *not* parameters receive no gradient; detach them.
pub trait ParamVectorField: VectorField {
    /// The parameters θ, in a stable order.
    fn params(&self) -> Vec<Var>;
}

/// A closure with an explicit parameter list: `with_params(|t, y| ..., vec![w, b])`.
#[derive(Clone)]
pub struct WithParams<F> {
    f: F,
    params: Vec<Var>,
}

/// Makes a [`ParamVectorField`] of a closure and the `Var`s it uses.
pub fn with_params<F>(f: F, params: Vec<Var>) -> WithParams<F>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
{
    WithParams { f, params }
}

impl<F: Fn(f64, &Tensor) -> Result<Tensor>> VectorField for WithParams<F> {
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        (self.f)(t, y)
    }
}

impl<F: Fn(f64, &Tensor) -> Result<Tensor>> ParamVectorField for WithParams<F> {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// A field with its Jacobian in closed form keeps the field's parameters:
/// `WithJacobian::new(with_params(f, vars), jacobian)`. The adjoint's forward solve uses the
/// Jacobian, and so does the reverse solve of the interpolated adjoint
/// ([`crate::AdjointState::Interpolated`]: `−Jᵀ`).
impl<F, J> ParamVectorField for WithJacobian<F, J>
where
    F: ParamVectorField,
    J: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn params(&self) -> Vec<Var> {
        self.field().params()
    }
}

/// The `Var`s of a `VarMap`, sorted by name: a `VarMap` iterates in hash order, which is not
/// stable across runs.
pub fn sorted_vars(varmap: &VarMap) -> Vec<Var> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut named: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, v)| v).collect()
}
