//! Vector fields that declare their parameters, so the adjoint can route gradients to them.

use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use node_solvers::{Split, VectorField, WithJacobian};

/// A [`VectorField`] `f(t, y; θ)` whose parameters θ are Candle `Var`s.
///
/// `params` must return the same `Var`s in the same order on every call (the adjoint
/// concatenates them into one flat vector). All parameters share the state's dtype.
///
/// Tensors the field captures that are *not* parameters receive no gradient from this
/// crate's solves (their backward passes stop at the parameters); detach them, or, where
/// they come from the caller's graph and need a gradient (an encoder's output the field is
/// conditioned on, a CDE's path), capture a [`TensorParam`]'s copy instead and name it in
/// `params` and its source in [`ParamVectorField::param_sources`] ([`WithParams::with_tensor_params`]
/// does both).
pub trait ParamVectorField: VectorField {
    /// The parameters θ, in a stable order.
    fn params(&self) -> Vec<Var>;

    /// Where each parameter's gradient goes, one tensor per entry of
    /// [`ParamVectorField::params`], of its shape: the tensor the op that differentiates a
    /// solve takes as its input in the parameter's place. The default, the parameters
    /// themselves, is right for every `Var` the caller trains; a [`TensorParam`]'s entry is
    /// its source, so its gradient flows on into the graph that produced it.
    fn param_sources(&self) -> Vec<Tensor> {
        self.params()
            .iter()
            .map(|p| p.as_tensor().clone())
            .collect()
    }
}

/// A tensor of the caller's graph (an encoder's output, a path built from observations) as a
/// parameter of a field: the field computes with [`TensorParam::as_tensor`], a `Var` holding
/// the source's value, detached, and the gradient this crate's solves compute for that `Var`
/// flows into [`TensorParam::source`] and on through the graph that produced it.
///
/// The copy is a leaf, so the backward passes inside a solve (the adjoint's vector–Jacobian
/// products, checkpointing's replays, reversible backprop's steps) stop at it instead of
/// running through the caller's graph each time (torchdiffeq's `adjoint_params` get the same
/// effect from `torch.autograd.grad`). Plain backprop through
/// [`node_solvers::odeint`] sees only the copy: differentiate such a field with this crate's
/// solves ([`crate::odeint_direct`] is backprop through the solver for it).
#[derive(Clone, Debug)]
pub struct TensorParam {
    copy: Var,
    source: Tensor,
}

impl TensorParam {
    /// A parameter standing for `source`.
    ///
    /// # Errors
    /// Allocating the copy.
    pub fn new(source: &Tensor) -> Result<Self> {
        let copy = Var::from_tensor(&source.detach())?;
        Ok(Self {
            copy,
            source: source.clone(),
        })
    }

    /// The value to compute with: a leaf `Var` (as a tensor).
    pub fn as_tensor(&self) -> &Tensor {
        self.copy.as_tensor()
    }

    /// The leaf `Var`, the entry of [`ParamVectorField::params`].
    pub fn var(&self) -> &Var {
        &self.copy
    }

    /// The tensor the gradient goes to.
    pub fn source(&self) -> &Tensor {
        &self.source
    }
}

/// Whether `f` has parameters whose gradients go elsewhere than to themselves
/// ([`TensorParam`]s): plain backprop through [`node_solvers::odeint`] would not reach their
/// sources, [`crate::odeint_direct`] does.
pub fn has_tensor_params<F: ParamVectorField + ?Sized>(f: &F) -> bool {
    f.params()
        .iter()
        .zip(f.param_sources())
        .any(|(p, s)| p.as_tensor().id() != s.id())
}

/// A closure with an explicit parameter list: `with_params(|t, y| ..., vec![w, b])`.
#[derive(Clone)]
pub struct WithParams<F> {
    f: F,
    params: Vec<Var>,
    tensors: Vec<TensorParam>,
}

/// Makes a [`ParamVectorField`] of a closure and the `Var`s it uses.
pub fn with_params<F>(f: F, params: Vec<Var>) -> WithParams<F>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
{
    WithParams {
        f,
        params,
        tensors: Vec::new(),
    }
}

impl<F> WithParams<F> {
    pub(crate) fn from_parts(f: F, params: Vec<Var>, tensors: Vec<TensorParam>) -> Self {
        Self { f, params, tensors }
    }

    pub(crate) fn inner(&self) -> &F {
        &self.f
    }

    /// The `Var`s, then the tensor params' copies.
    pub(crate) fn all_params(&self) -> Vec<Var> {
        let tensors = self.tensors.iter().map(|t| t.var().clone());
        self.params.iter().cloned().chain(tensors).collect()
    }

    /// The `Var`s, then the tensor params' sources.
    pub(crate) fn all_sources(&self) -> Vec<Tensor> {
        let vars = self.params.iter().map(|p| p.as_tensor().clone());
        let tensors = self.tensors.iter().map(|t| t.source().clone());
        vars.chain(tensors).collect()
    }

    /// Adds the [`TensorParam`]s whose copies the closure computes with, after the `Var`s.
    ///
    /// # Example
    /// A field conditioned on an encoder's output `c`: the adjoint's gradient reaches the
    /// encoder's weight through `c`.
    /// ```
    /// use candle_core::{Device, Tensor, Var};
    /// use node_adjoint::{odeint_adjoint, with_params, AdjointOptions, TensorParam};
    /// use node_solvers::SolveOptions;
    /// # fn main() -> candle_core::Result<()> {
    /// let dev = Device::Cpu;
    /// let w = Var::new(&[[0.5f64, -1.0]], &dev)?; // the encoder
    /// let x = Tensor::new(&[[1.0f64], [2.0]], &dev)?;
    /// let c = w.as_tensor().matmul(&x)?; // [1, 1], in the caller's graph
    /// let cp = TensorParam::new(&c)?;
    /// let ct = cp.as_tensor().clone();
    /// let f = with_params(move |_t: f64, y: &Tensor| y.broadcast_mul(&ct)?.neg(), vec![])
    ///     .with_tensor_params(vec![cp]);
    /// let y0 = Tensor::new(&[[1.0f64]], &dev)?;
    /// let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
    /// let sol = odeint_adjoint(&f, &y0, &[0.0, 1.0], &opts, &AdjointOptions::default())?;
    /// // y(1) = e^(−c) with c = 0.5 − 2 = −1.5; dy(1)/dw = −y(1)·x.
    /// let grads = sol.ys.get(1)?.sum_all()?.backward()?;
    /// let dw = grads.get(w.as_tensor()).unwrap().to_vec2::<f64>()?;
    /// let y1 = 1.5f64.exp();
    /// assert!((dw[0][0] + y1).abs() < 1e-6 && (dw[0][1] + 2.0 * y1).abs() < 1e-6);
    /// # Ok(()) }
    /// ```
    pub fn with_tensor_params(mut self, tensors: Vec<TensorParam>) -> Self {
        self.tensors.extend(tensors);
        self
    }
}

impl<F: Fn(f64, &Tensor) -> Result<Tensor>> VectorField for WithParams<F> {
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        (self.f)(t, y)
    }
}

impl<F: Fn(f64, &Tensor) -> Result<Tensor>> ParamVectorField for WithParams<F> {
    fn params(&self) -> Vec<Var> {
        self.all_params()
    }

    fn param_sources(&self) -> Vec<Tensor> {
        self.all_sources()
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

    fn param_sources(&self) -> Vec<Tensor> {
        self.field().param_sources()
    }
}

/// A split field ([`Split`], for the IMEX methods) has its parts' parameters, each once
/// (a `Var` both parts use is one parameter). The adjoint's reverse solve of an IMEX solve is
/// split the same way: the explicit part's adjoint dynamics are only evaluated.
impl<E, I> ParamVectorField for Split<E, I>
where
    E: ParamVectorField,
    I: ParamVectorField,
{
    fn params(&self) -> Vec<Var> {
        split_params(self).into_iter().map(|(p, _)| p).collect()
    }

    fn param_sources(&self) -> Vec<Tensor> {
        split_params(self).into_iter().map(|(_, s)| s).collect()
    }
}

/// The parameters of a split field's parts with their sources, each parameter once.
fn split_params<E: ParamVectorField, I: ParamVectorField>(f: &Split<E, I>) -> Vec<(Var, Tensor)> {
    let (e, i) = (f.explicit(), f.implicit());
    let all = e
        .params()
        .into_iter()
        .zip(e.param_sources())
        .chain(i.params().into_iter().zip(i.param_sources()));
    let mut seen = std::collections::HashSet::new();
    all.filter(|(p, _)| seen.insert(p.as_tensor().id()))
        .collect()
}

/// The `Var`s of a `VarMap`, sorted by name: a `VarMap` iterates in hash order, which is not
/// stable across runs.
pub fn sorted_vars(varmap: &VarMap) -> Vec<Var> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut named: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, v)| v).collect()
}
